# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the carve-out planner (module_utils/sizing.py): inputs, plan, index and report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import (
    FleetVars, plain, read_facts_file)

POLICY_VAR = "guestmemfs_sizing"


BACKEND_VAR = "guestmemfs_backend"


def _inputs(name, gf, policy, backend=None):
    """One host's facts (guestmemfs_facts) and policy -> the planner's input for it."""
    gf = gf if isinstance(gf, Mapping) else {}
    mem = gf.get("memory") or {}
    kho = gf.get("kho") or {}
    nodes = [n.get("total_bytes") for n in mem.get("numa_nodes") or [] if isinstance(n, Mapping)]
    nodes = [int(b) for b in nodes if isinstance(b, int) and b > 0]
    return {"name": name,
            "memory_bytes": mem.get("firmware_ram_bytes") or mem.get("total_bytes"),
            "firmware_ram_ranges": plain(mem.get("firmware_ram_ranges", [])),
            "numa_nodes": len(nodes) or 1,
            "numa_node_bytes": nodes,
            "kho_scratch_bytes": kho.get("scratch_bytes"),
            "kho_scratch": plain(kho.get("kho_scratch")),
            "backend": backend,
            "policy": policy or {}}


def carveout_inputs(hosts, hostvars, facts=None):
    """Host names -> the planner's inputs: each host's guestmemfs_sizing and its memory facts.

    ``facts``: None or ``cache``: the facts Ansible has for the host (gathered in this run, or in
    its fact cache); a path: a facts file gathered earlier (JSON or YAML, {host: ansible_facts})."""
    if not is_sequence(hosts):
        raise AnsibleFilterError("carveout_inputs expects a list of host names, got %s" % type(hosts).__name__)
    try:
        from_file = read_facts_file(str(facts)) if facts not in (None, "", "cache") else None
        fleet = FleetVars(hostvars, [POLICY_VAR, BACKEND_VAR])
        rows = []
        for name in hosts:
            name = str(name)
            data = fleet.raw(name)
            own = fleet.get(name, data)
            policy = own.get(POLICY_VAR)
            if from_file is not None:
                gf = (from_file.get(name) or {}).get("guestmemfs")
            else:
                facts = fleet.facts(name)
                if facts is not None:
                    gf = facts.get("guestmemfs")
                else:
                    gf = plain(hostvars[name]).get("ansible_facts", {}).get("guestmemfs")
            rows.append(_inputs(name, gf, policy, own.get(BACKEND_VAR)))
        return rows
    except AnsibleFilterError:
        raise
    except Exception as exc:  # an AnsibleError reading a facts file, a host missing from the inventory
        raise AnsibleFilterError("carveout_inputs: %s" % exc)


def carveout_plan(hosts):
    if not isinstance(hosts, list):
        raise AnsibleFilterError("carveout_plan expects a list of hosts, got %s" % type(hosts).__name__)
    return sizing.plan_fleet([dict(h) for h in hosts])


def carveout_by_host(rows):
    """The plan's rows -> {host: row}: each host finds its own row by name."""
    return dict((r["host"], r) for r in rows)


def carveout_report(rows, fmt="table"):
    renderers = {"table": sizing.render_table, "csv": sizing.render_csv, "json": sizing.render_json}
    if fmt not in renderers:
        raise AnsibleFilterError("carveout_report format %r: use table, csv or json" % fmt)
    return renderers[fmt](list(rows))


class FilterModule(object):
    def filters(self):
        return {"carveout_inputs": carveout_inputs, "carveout_plan": carveout_plan,
                "carveout_by_host": carveout_by_host, "carveout_report": carveout_report}
