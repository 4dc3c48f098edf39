# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout's controller-side gates at one point of the rollout (plugin_utils/gates.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.common.collections import is_sequence
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import gates
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import plain

display = Display()
PHASES = ("start", "before_wave", "after_resume")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("phase", "wave", "hosts", "window", "prometheus", "command", "guest", "webhook", "lock"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = plain(dict(self._task.args))
        phase = args.get("phase")
        if phase not in PHASES:
            return dict(result, failed=True, msg="phase must be one of %s, not %r" % (", ".join(PHASES), phase))
        hosts = args.get("hosts") or []
        if not is_sequence(hosts):
            return dict(result, failed=True, msg="hosts must be a list of host names")
        window, prom, cmd = args.get("window") or None, args.get("prometheus") or None, args.get("command") or None
        try:  # every gate's input checked before any gate runs
            if window:
                gates.parse_window(window)
            if prom:
                gates.check_prometheus(prom)
            if cmd:
                gates.check_command(cmd)
            # only checked here, at the start: they act elsewhere (guest_health, rollout_notify, rollout_lock)
            if args.get("guest"):
                gates.check_guest(args["guest"])
            if args.get("webhook"):
                gates.check_webhook(args["webhook"])
            if args.get("lock"):
                gates.check_lock(args["lock"])
        except gates.GateError as exc:
            return dict(result, failed=True, msg=str(exc))
        label = "wave %s" % args.get("wave") if phase == "before_wave" else ", ".join(hosts)

        def progress(text):
            display.display("%s gate (%s): %s" % (phase, label, text))
        results = []
        if window and phase in ("start", "before_wave"):
            w = gates.window_gate(window)
            results.append(dict(w, gate="window", on_failure="stop"))
        env = {"GUESTMEMFS_GATE_PHASE": phase, "GUESTMEMFS_GATE_WAVE": args.get("wave") or "",
               "GUESTMEMFS_GATE_HOSTS": ",".join(hosts)}
        for name, spec, fn, kw in (("prometheus", prom, gates.prometheus_gate, {}),
                                   ("command", cmd, gates.command_gate, {"env": env})):
            if not spec or phase == "start" or not spec.get(phase, True):
                continue
            if results and not all(r["ok"] or r["on_failure"] == "warn" for r in results):
                break  # a stop already: ask nothing more
            out = fn(spec, progress=progress, **kw)
            results.append(dict(out, gate=name, on_failure=gates.on_failure(name, spec)))
        stops = [r for r in results if not r["ok"] and r["on_failure"] == "stop"]
        warns = [r for r in results if not r["ok"] and r["on_failure"] == "warn"]
        for r in warns:
            display.warning("%s gate %s failed (on_failure: warn, the rollout goes on): %s" % (phase, r["gate"], r["detail"]))
        result.update(changed=False, passed=not stops, phase=phase, results=results,
                      reason="; ".join("%s gate %s: %s" % (phase, r["gate"], r["detail"]) for r in stops) or None)
        return result
