# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""POST one rollout event to the webhook (plugin_utils/gates.py notify)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import gates
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import plain

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("webhook", "event", "payload"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = plain(dict(self._task.args))
        spec = args.get("webhook")
        if not spec:
            return dict(result, changed=False, sent=False, skipped=True, detail="no guestmemfs_webhook")
        if self._task.check_mode:
            return dict(result, changed=False, sent=False, detail="check mode: nothing sent")
        try:
            out = gates.notify(spec, args.get("event"), args.get("payload") or {})
        except gates.GateError as exc:
            return dict(result, failed=True, msg=str(exc))
        if not out["sent"] and not out.get("skipped"):
            if spec.get("required"):
                return dict(result, failed=True, msg="the webhook is required and did not answer: %s" % out["detail"], **out)
            display.warning("webhook: %s (the rollout goes on: guestmemfs_webhook.required is false)" % out["detail"])
        result.update(changed=False, **out)
        return result
