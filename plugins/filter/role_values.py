# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role variables that would break out of a unit file, an argv or a path (module_utils/safe)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import safe


def unsafe_values(values):
    try:
        return safe.problems(values)
    except (ValueError, TypeError) as exc:
        raise AnsibleFilterError("unsafe_values: %s" % exc)


class FilterModule(object):
    def filters(self):
        return {"unsafe_values": unsafe_values}
