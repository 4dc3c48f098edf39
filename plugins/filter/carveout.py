# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the carve-out planner (module_utils/sizing.py): plan and report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing


def carveout_plan(hosts):
    if not isinstance(hosts, list):
        raise AnsibleFilterError("carveout_plan expects a list of hosts, got %s" % type(hosts).__name__)
    return sizing.plan_fleet([dict(h) for h in hosts])


def carveout_report(rows, fmt="table"):
    renderers = {"table": sizing.render_table, "csv": sizing.render_csv, "json": sizing.render_json}
    if fmt not in renderers:
        raise AnsibleFilterError("carveout_report format %r: use table, csv or json" % fmt)
    return renderers[fmt](list(rows))


class FilterModule(object):
    def filters(self):
        return {"carveout_plan": carveout_plan, "carveout_report": carveout_report}
