# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan every host's carve-out on the controller in one task: inputs, plan, reports, index."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.collections import is_sequence
from ansible.plugins.action import ActionBase

from ansible_collections.guestmemfs.liveupdate.plugins.filter.carveout import carveout_inputs
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import report_runs, sizing
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import write_files

FORMATS = {"txt": sizing.render_table, "json": sizing.render_json, "csv": sizing.render_csv}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts", "facts_from", "report_dir", "run"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        hosts = args.get("hosts")
        if not is_sequence(hosts):
            return dict(result, failed=True, msg="hosts must be a list of host names")
        facts_from = args.get("facts_from")
        report_dir = args.get("report_dir")
        try:
            rows = sizing.plan_fleet(carveout_inputs(list(hosts), task_vars["hostvars"], facts_from))
        except AnsibleError as exc:
            return dict(result, failed=True, msg=str(exc))
        table = sizing.render_table(rows)
        written, changed = [], False
        if report_dir:
            report_dir = os.path.expanduser(str(report_dir))
            texts = dict(("sizing." + fmt, table if fmt == "txt" else render(rows)) for fmt, render in FORMATS.items())
            # A run writes a directory of its own: a change only when what the top-level names show changes.
            changed = bool(report_runs.differs_from_latest(report_dir, texts)) if args.get("run") else None
            if self._task.check_mode:
                written = sorted(texts)
            else:
                try:
                    if args.get("run"):  # this run's own directory, linked from report_dir (module_utils/report_runs)
                        written = write_files(report_runs.run_dir(report_dir, args["run"]), texts)
                        report_runs.publish(report_dir, args["run"], sorted(texts))
                    else:
                        written = write_files(report_dir, texts)
                except (OSError, ValueError) as exc:
                    return dict(result, failed=True, msg="writing the sizing report into %s: %s" % (report_dir, exc))
        # rows and by_host hold the same row objects: they travel back to Ansible once
        result.update(
            changed=bool(written) if changed is None else changed, written=written, summary=sizing.summary(rows), table=table, rows=rows,
            by_host=dict((r["host"], r) for r in rows), refused=[r["host"] for r in rows if not r["ok"]])
        return result
