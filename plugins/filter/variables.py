# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbooks' check of the hosts' guestmemfs_* variables (plugin_utils/variables.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence

from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import variables
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import FleetVars


def unknown_variables(hosts, hostvars):
    """Host names and hostvars -> one line per guestmemfs_* variable the collection does not know
    (with the first hosts that have it and the closest known name); [] when there is none."""
    if not is_sequence(hosts):
        raise AnsibleFilterError("unknown_variables expects a list of host names, got %s" % type(hosts).__name__)
    try:
        fleet = FleetVars(hostvars, [])
        by_host = {}
        for name in hosts:
            name = str(name)
            data = fleet.raw(name)
            keys = data.keys() if data is not None else hostvars[name].keys()
            found = [k for k in keys if str(k).startswith(variables.PREFIX) and k not in variables.KNOWN]
            if found:
                by_host[name] = found
    except Exception as exc:  # a host missing from the inventory
        raise AnsibleFilterError("unknown_variables: %s" % exc)
    return variables.describe_unknown(by_host)


class FilterModule(object):
    def filters(self):
        return {"unknown_variables": unknown_variables}
