#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: memory_manifest
short_description: Record or verify the memory manifest that gates every VM resume
version_added: 0.1.0
description:
  - C(record) - for each VM memory file, its size, its physical extents (FIEMAP plus the pmem
    device's physical base) and content digests per 1 MiB chunk (C(full)), or of a sample of chunks
    chosen by a recorded seed (C(sampled)), or none (C(extents)). Stored root-only and durably on the
    root disk, outside the memory backend.
  - C(verify) - recompute and compare. Each file is C(ok), C(extents_moved), C(content_changed) (with
    the start of the first differing chunk), C(size_changed) or C(missing). Fails unless every file is
    C(ok).
  - M(guestmemfs.liveupdate.vm_cpr) records it during a save, and each VM unit verifies its own entry
    before it restores; this module is for operators and tests.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  action:
    description: Record or verify.
    type: str
    choices: [record, verify]
    required: true
  files:
    description: VM name to memory file; default - every VM configured on the host (C(record)) or every
      file in the manifest (C(verify)).
    type: dict
  mode:
    description: Content check when recording.
    type: str
    choices: [full, sampled, extents]
    default: full
  samples:
    description: Chunks per file in C(sampled) mode.
    type: int
    default: 64
  path:
    description: Where the manifest is.
    type: path
    default: /var/lib/guestmemfs-liveupdate/manifest.json
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - Linux with the FIEMAP ioctl on the backend's filesystem
attributes:
  check_mode:
    support: full
    description: C(record) computes the manifest and reports it changed (a run would write it) without
      writing; C(verify) only reads.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: partial
    description: C(verify) changes nothing; C(record) writes the manifest anew on every run.
  platform:
    support: full
    platforms: posix
    description: Linux.
seealso:
  - module: guestmemfs.liveupdate.vm_cpr
  - name: The live update
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/liveupdate.md
"""

EXAMPLES = r"""
- name: Verify every VM's memory after the kexec
  guestmemfs.liveupdate.memory_manifest:
    action: verify
"""

RETURN = r"""
results:
  description: Per VM, C(status) and C(detail) (and C(first_diff_offset) for C(content_changed)).
  returned: action is verify
  type: dict
record_s:
  description: Seconds the record took.
  returned: action is record
  type: float
bytes:
  description: Size of the manifest in bytes.
  returned: action is record
  type: int
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, hostupdate, journal, manifest, vmdef


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", choices=["record", "verify"], required=True),
            files=dict(type="dict"),
            mode=dict(type="str", choices=["full", "sampled", "extents"], default="full"),
            samples=dict(type="int", default=64),
            path=dict(type="path", default=manifest.MANIFEST_PATH),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if vmdef.names_problem(p["files"]):
        module.fail_json(msg=vmdef.names_problem(p["files"]))
    if p["action"] == "record":
        files = p["files"] or dict((n, cpr.VM.load(n).mem_path) for n in hostupdate.vm_names())
        if not files:
            module.fail_json(msg="no VM memory files to record: give files or configure VMs (qemu_vm)")
        missing = sorted(n for n, f in files.items() if not os.path.isfile(f))
        if missing:
            module.fail_json(msg="memory files missing: %s" % ", ".join("%s (%s)" % (n, files[n]) for n in missing))
        # A record approves the memory as it is now: never for a VM whose saved memory is still to be
        # verified (or was found altered), which would let it resume on whatever is there.
        stake = journal.at_stake()
        if stake:
            module.fail_json(msg="not recording the manifest while VMs are at stake (%s): a new record would "
                                 "approve their memory as it is now. Nothing was changed; recover them first "
                                 "(agent verify NAME, systemctl start guestmemfs-vm@NAME)" % "; ".join(stake))
        m = manifest.record(files, mode=p["mode"], samples=p["samples"])
        if not module.check_mode:
            manifest.save(m, p["path"])
        module.exit_json(changed=True, record_s=m["record_s"], bytes=len(json.dumps(m)))
    m = manifest.load(p["path"])
    if not m:
        module.fail_json(msg="no manifest at %s: nothing was recorded on this host" % p["path"])
    names = list(p["files"]) if p["files"] else None
    results = manifest.verify(m, names)
    bad = dict((n, r) for n, r in results.items() if r["status"] != manifest.OK)
    if bad:
        module.fail_json(msg="memory NOT verified: %s. Do not resume these VMs; their files are untouched"
                         % "; ".join(r["detail"] for r in bad.values()), results=results)
    module.exit_json(changed=False, results=results)


if __name__ == "__main__":
    main()
