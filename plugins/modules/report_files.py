#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: report_files
short_description: Write a set of report files into one directory at once, removing stale ones
version_added: 0.1.7
description:
  - Writes every file of O(files) into O(path) in one run (a loop of M(ansible.builtin.copy) costs a
    module run or two per file), each atomically (a temporary file renamed over it) and only when its
    content differs.
  - Files in O(path) that match O(exclusive) and are not in O(files) are removed, so a plan with fewer
    waves than the last one leaves no stale wave behind.
  - C(playbooks/plan.yml) writes the rollout plan's limit files with it, one per wave (C(docs/scale.md)).
  - With O(run), the files go to a directory of that run, O(path)/RUN (or O(path)/RUN/SUBDIR), never over
    another run's; then O(path)/latest points at the run, and each top-level name (O(path)/NAME, or
    O(path)/SUBDIR) at the run's file, so that a reader of the top-level names reads the last run's.
    A file or directory of an older layout at a top-level name is moved to O(path)/before-runs/.
    Where the filesystem has no symlinks, O(path)/latest is a file naming the run and the top-level
    names are copies.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  path:
    description: The directory; created (with its parents) when missing.
    type: path
    required: true
  files:
    description: File name (no directory part) to its content.
    type: dict
    required: true
  exclusive:
    description:
      - A shell pattern (C(fnmatch)) of the file names this module owns in O(path); those not in O(files)
        are removed. Unset, nothing is removed.
    type: str
  run:
    description:
      - The run the files belong to (a run id such as C(20250131T120000Z)); characters other than letters, digits
        and C(. _ -) become C(_). Unset, the files go to O(path) itself.
    type: str
  subdir:
    description: With O(run), a directory of the run the files go to (C(waves) for the limit files).
    type: str
  mode:
    description: Mode of the files written.
    type: raw
    default: "0644"
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - Python 3 on the target
attributes:
  check_mode:
    support: full
    description: Reports what would change and writes nothing.
  diff_mode:
    support: none
    description: Reports the names of the files written and removed.
  idempotent:
    support: full
    description: A file with the same content is not written again.
  platform:
    support: full
    platforms: posix
    description: Any POSIX system.
seealso:
  - module: guestmemfs.liveupdate.sizing_plan
"""

EXAMPLES = r"""
- name: Write one limit file per wave
  guestmemfs.liveupdate.report_files:
    path: guestmemfs-report/waves
    files:
      wave-001.limit: "hv000000\n"
      wave-002.limit: "hv000001\nhv000002\n"
    exclusive: wave-*.limit
  delegate_to: localhost

- name: Write this run's reports into guestmemfs-report/20250131T120000Z/, linked from guestmemfs-report/
  guestmemfs.liveupdate.report_files:
    path: guestmemfs-report
    run: 20250131T120000Z
    files:
      blackout.txt: "..."
  delegate_to: localhost
"""

RETURN = r"""
written:
  description: Names of the files written (new or changed).
  returned: always
  type: list
  elements: str
removed:
  description: Names of the stale files removed.
  returned: always
  type: list
  elements: str
directory:
  description: The directory the files were written to (O(path)/RUN with O(run)).
  returned: always
  type: str
"""

import fnmatch
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import replace_file
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.report_runs import differs_from_latest, publish, report_text, run_dir


def _same(path, data):
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), files=dict(type="dict", required=True),
                           exclusive=dict(type="str"), mode=dict(type="raw", default="0644"),
                           run=dict(type="str"), subdir=dict(type="str")),
        required_by={"subdir": "run"},
        supports_check_mode=True)
    p = module.params
    try:
        mode = int(str(p["mode"]), 8)
    except ValueError:
        module.fail_json(msg="mode %r: give an octal mode such as 0644" % (p["mode"],))
    files = dict((str(n), report_text(c)) for n, c in p["files"].items())
    names = list(files)
    bad = [n for n in names if not n or n in (".", "..") or "/" in n or "\0" in n]
    if bad:
        module.fail_json(msg="file names are plain names in path, not %s" % ", ".join(repr(n) for n in bad))
    base = path = p["path"]
    if p["run"]:
        if p["subdir"] and not re.match(r"^[A-Za-z0-9._-]+$", p["subdir"]) or p["subdir"] in (".", ".."):
            module.fail_json(msg="subdir %r: a plain directory name" % p["subdir"])
        try:
            path = os.path.join(run_dir(base, p["run"]), p["subdir"] or "")
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    written, removed, linked = [], [], False
    # A run writes a directory of its own; it changes something when what the top-level names show does.
    differs = (differs_from_latest(base, files, p["subdir"], p["exclusive"]) if p["run"] else None)
    existing = os.listdir(path) if os.path.isdir(path) else []
    if p["exclusive"]:
        keep = set(names)
        removed = sorted(n for n in existing if fnmatch.fnmatchcase(n, p["exclusive"]) and n not in keep
                         and os.path.isfile(os.path.join(path, n)))
    for name in names:
        data = to_bytes(files[name])
        target = os.path.join(path, name)
        if not _same(target, data):
            written.append(name)
    if not module.check_mode:
        try:
            if not os.path.isdir(path):
                os.makedirs(path)
            for name in written:
                data = to_bytes(files[name])
                replace_file(os.path.join(path, name), data, mode)
            for name in removed:
                os.unlink(os.path.join(path, name))
            if p["run"]:
                linked = publish(base, p["run"], [p["subdir"]] if p["subdir"] else sorted(names))
        except OSError as exc:
            module.fail_json(msg="writing the report files into %s: %s" % (path, exc), written=[], removed=[])
    changed = bool(differs or removed) if p["run"] else bool(written or removed or linked)
    module.exit_json(changed=changed, written=written, removed=removed,
                     directory=os.path.normpath(path))


if __name__ == "__main__":
    main()
