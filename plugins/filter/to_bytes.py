# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory sizes as the kernel reads them (10G, 512M, 0x40000000) to bytes."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import parse_size


def to_bytes(value):
    try:
        return parse_size(value)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule(object):
    def filters(self):
        return {"to_bytes": to_bytes}
