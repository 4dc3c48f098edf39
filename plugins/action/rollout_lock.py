# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet's run lock: take, renew or release it (plugin_utils/gates.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import gates

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("state", "path", "fleet", "ttl", "run_id", "token", "hosts"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        state, path = args.get("state"), args.get("path")
        if state not in ("acquired", "renewed", "released"):
            return dict(result, failed=True, msg="state must be acquired, renewed or released, not %r" % (state,))
        fleet = args.get("fleet")
        if not fleet:  # the fleet's own hosts name it: every group member, whatever --limit says
            hostvars = (task_vars or {}).get("hostvars", {})
            fleet = gates.fleet_id(dict((h, (hostvars[h].get("ansible_host", h), hostvars[h].get("ansible_port", "")))
                                        for h in args.get("hosts") or []))
        path = os.path.abspath(os.path.expanduser(str(path or gates.lock_path(fleet))))
        if state != "acquired" and not args.get("token"):
            return dict(result, failed=True, msg="token is required to renew or release: the one acquired returned")
        try:
            if state == "acquired":
                if self._task.check_mode:  # a check run takes no lock, but says whose it is
                    other = gates.read_lock(path)
                    holder = other and gates.stale_reason(other, __import__("time").time(), gates.lock_holder()) is None
                    if holder:
                        display.warning("fleet lock %s is held by %s" % (path, other.get("holder")))
                    return dict(result, changed=False, path=path, fleet=fleet, token=None,
                                held_by=other.get("holder") if holder else None)
                rec = gates.acquire(path, str(fleet), args.get("ttl"), run_id=args.get("run_id"))
                if rec.get("took_over"):
                    display.warning("fleet lock %s: %s" % (path, rec["took_over"]))
                result.update(changed=True, **rec)
            elif state == "renewed":
                result.update(changed=True, **gates.renew(path, args["token"]))
            else:
                done = gates.release(path, args["token"])
                result.update(changed=done == "released", path=path, detail=done)
        except gates.GateError as exc:
            return dict(result, failed=True, msg=str(exc))
        return result
