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
"""

import fnmatch
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import replace_file


def _same(path, data):
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), files=dict(type="dict", required=True),
                           exclusive=dict(type="str"), mode=dict(type="raw", default="0644")),
        supports_check_mode=True)
    p = module.params
    try:
        mode = int(str(p["mode"]), 8)
    except ValueError:
        module.fail_json(msg="mode %r: give an octal mode such as 0644" % (p["mode"],))
    names = [str(n) for n in p["files"]]
    bad = [n for n in names if not n or n in (".", "..") or "/" in n or "\0" in n]
    if bad:
        module.fail_json(msg="file names are plain names in path, not %s" % ", ".join(repr(n) for n in bad))
    path = p["path"]
    written, removed = [], []
    existing = os.listdir(path) if os.path.isdir(path) else []
    if p["exclusive"]:
        keep = set(names)
        removed = sorted(n for n in existing if fnmatch.fnmatchcase(n, p["exclusive"]) and n not in keep
                         and os.path.isfile(os.path.join(path, n)))
    for name in names:
        data = to_bytes(p["files"][name] if p["files"][name] is not None else "")
        target = os.path.join(path, name)
        if not _same(target, data):
            written.append(name)
    if not module.check_mode:
        try:
            if not os.path.isdir(path):
                os.makedirs(path)
            for name in written:
                data = to_bytes(p["files"][name] if p["files"][name] is not None else "")
                replace_file(os.path.join(path, name), data, mode)
            for name in removed:
                os.unlink(os.path.join(path, name))
        except OSError as exc:
            module.fail_json(msg="writing the report files into %s: %s" % (path, exc), written=[], removed=[])
    module.exit_json(changed=bool(written or removed), written=written, removed=removed)


if __name__ == "__main__":
    main()
