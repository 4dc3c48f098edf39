# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A memory backend as data (units, mount, handover, kernel options) for roles, playbooks and
templates, so that none of them compares a backend's name."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import DEFAULT_BACKEND, get_backend


def backend_spec(name=None):
    try:
        return get_backend(name or DEFAULT_BACKEND).spec()
    except ValueError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule(object):
    def filters(self):
        return {"backend_spec": backend_spec}
