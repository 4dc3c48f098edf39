# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the rollout wave planner (module_utils/waves.py): plan and report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import waves
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import FleetVars
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import plain as _plain

POLICY_VAR = "guestmemfs_rollout"
_UNSET = object()


def _host_policies(names, policies):
    """Every host's own guestmemfs_rollout -> the one policy they share; differing ones are refused."""
    by_text, texts = {}, {}
    for name, policy in zip(names, policies):
        if policy is _UNSET:
            text = "(not set)"
        else:
            # hosts that take it from one group share one object: one dump each
            key = id(policy)
            if key not in texts:
                texts[key] = (policy, json.dumps(policy, sort_keys=True))
            text = texts[key][1]
        by_text.setdefault(text, (policy, []))[1].append(name)
    if len(by_text) > 1:
        groups = sorted(by_text.items(), key=lambda kv: -len(kv[1][1]))
        raise AnsibleFilterError(
            "rollout_waves: the hosts disagree on %s, which is one policy for the whole rollout (set it for "
            "the group or as an extra var): %s" % (POLICY_VAR, "; ".join(
                "%s%s: %s" % (", ".join(hs[:3]), " and %d more" % (len(hs) - 3) if len(hs) > 3 else "", text)
                for text, (_p, hs) in groups)))
    policy = next(iter(by_text.values()))[0] if by_text else _UNSET
    return None if policy is _UNSET else policy


def rollout_waves(hosts, policy=_UNSET, hostvars=None):
    if not isinstance(hosts, list) and not is_sequence(hosts):
        raise AnsibleFilterError("rollout_waves expects a list of hosts, got %s" % type(hosts).__name__)
    hosts = list(hosts)
    try:
        if hostvars is None:
            if policy is _UNSET:
                policy = None
            return waves.plan_waves([_plain(h) for h in hosts], _plain(policy))
        for name in hosts:
            if not isinstance(name, str):
                raise AnsibleFilterError("rollout_waves with hostvars expects host names, got %r" % (name,))
            if name not in hostvars:
                raise AnsibleFilterError("rollout_waves: %s is not in the inventory" % name)
        # each host's variables read once, raw; only the policy and the domains' variables are
        # templated (Ansible would build and template all of them for hostvars[host])
        raws = None
        if policy is _UNSET:
            fleet = FleetVars(hostvars, [POLICY_VAR])
            raws = [fleet.raw(name) for name in hosts]
            policy = _host_policies(hosts, [fleet.get(name, raws[i]).get(POLICY_VAR, _UNSET)
                                            for i, name in enumerate(hosts)])
        else:
            policy = _plain(policy)
        wanted = waves.needed_vars(policy)
        if wanted:
            fleet = FleetVars(hostvars, wanted)
            rows = [{"name": str(name), "vars": fleet.get(name, raws[i] if raws else None)}
                    for i, name in enumerate(hosts)]
        else:
            rows = [{"name": str(name), "vars": {}} for name in hosts]
        return waves.plan_waves(rows, policy)
    except waves.WaveError as exc:
        raise AnsibleFilterError("rollout_waves: %s" % exc)


def rollout_report(plan, fmt="table"):
    """One format -> its text; a list of formats -> {format: text}, reading the plan once (a large
    plan is slow to read back from a fact)."""
    renderers = {"table": waves.render_table, "csv": waves.render_csv, "json": waves.render_json,
                 "limits": waves.render_limits}
    fmts = list(fmt) if is_sequence(fmt) else [fmt]
    for f in fmts:
        if f not in renderers:
            raise AnsibleFilterError("rollout_report format %r: use table, csv or json (or limits: one file per wave)" % (f,))
    if not isinstance(plan, Mapping) or "waves" not in plan:
        raise AnsibleFilterError("rollout_report expects a plan from guestmemfs.liveupdate.rollout_waves")
    plan = _plain(plan)
    texts = dict((f, renderers[f](plan)) for f in fmts)
    return texts if is_sequence(fmt) else texts[fmt]


class FilterModule(object):
    def filters(self):
        return {"rollout_waves": rollout_waves, "rollout_report": rollout_report}
