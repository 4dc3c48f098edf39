#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm_memory
short_description: Create the memory file of each VM on the persistent memory backend
version_added: 0.1.0
description:
  - One file per VM in the backend's mount, at the size of the VM's RAM rounded up to the backend's
    granule (2 MiB for guestmemfs, 128 MiB sections for pmem are the carve-out's, files take 2 MiB).
    QEMU maps it as C(memory-backend-file,share=on).
  - C(pmem) - the file is created and its blocks written (zeros), so that every page has its place on
    the persistent memory before a VM runs. C(guestmemfs) - created and C(truncate)d, which is all
    guestmemfs supports, and refused while its KHO handover is active (the RFC corrupts the
    directory the next kernel inherits when a file is created or resized then).
  - Refuses, before changing anything, a set of files larger than the free capacity, a file that
    would shrink, and a resize of a file a process maps (a running VM).
  - C(luo) - no filesystem; each VM's memory is a memfd of exactly its size that the host's memfd holder
    (C(guestmemfs-luo.service), installed by the C(qemu_vm) role) creates and holds, reached at
    C(/run/guestmemfs-liveupdate/luo/<name>). Refuses a memfd whose size differs (its VM maps it; a
    memfd preserved for a live update cannot change) and memory beyond what the host has available.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  backend:
    description: Which backend the mount belongs to.
    type: str
    choices: [pmem, guestmemfs, luo]
    required: true
  path:
    description: The backend's mount point. Required for C(pmem) and C(guestmemfs); not used by C(luo).
    type: path
  vms:
    description:
      - The VMs, each with C(name) and C(memory) (bytes or K/M/G/T); the file is C(<name>.ram).
      - Other keys of a VM definition (disks, NICs, ...) are ignored here, so C(guestmemfs_vms) can be
        passed as it is.
    type: list
    elements: dict
    required: true
  require_mounted:
    description: Refuse to run when I(path) is not a mount point (files would land on the root disk).
    type: bool
    default: true
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - A mounted memory backend (M(guestmemfs.liveupdate.memory_backend))
attributes:
  check_mode:
    support: full
    description: Reports the files it would create or grow and writes nothing.
  diff_mode:
    support: full
    description: Shows each file's size before and after.
  idempotent:
    support: full
    description: Files of the wanted size are left as they are.
  platform:
    support: full
    platforms: posix
    description: Linux.
seealso:
  - module: guestmemfs.liveupdate.memory_backend
  - name: Preparing hypervisors
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/host-preparation.md
"""

EXAMPLES = r"""
- name: Memory files for two VMs on pmem
  guestmemfs.liveupdate.vm_memory:
    backend: pmem
    path: /mnt/pmem
    vms:
      - name: vm1
        memory: 256M
      - name: vm2
        memory: 256M
"""

RETURN = r"""
files:
  description: Each VM's file, C(name), C(path), C(size_bytes), C(before_bytes) and C(action) (C(create),
    C(grow) or C(none)).
  returned: always
  type: list
  elements: dict
free_bytes:
  description: Free space of the backend before the run (C(luo) - the host's MemAvailable).
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import backend_mount
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import MiB, human, parse_size

CHUNK = 8 * MiB


def prewrite(path, start, end):
    """Write zeros over [start, end) so DAX allocates every block now, then sync."""
    buf = b"\0" * CHUNK
    fd = os.open(path, os.O_WRONLY)
    try:
        os.lseek(fd, start, os.SEEK_SET)
        pos = start
        while pos < end:
            n = os.write(fd, buf[:min(CHUNK, end - pos)])
            pos += n
        os.fsync(fd)
    finally:
        os.close(fd)


def _wanted(module, backend):
    """[(name, bytes)] of the VMs, validated."""
    out, names = [], set()
    for vm in module.params["vms"]:
        name = vm.get("name")
        try:
            vmdef.check_name(name)
        except vmdef.VMDefError as exc:
            module.fail_json(msg=str(exc))
        if name in names:
            module.fail_json(msg="VM %s is listed twice" % name)
        if "memory" not in vm:
            module.fail_json(msg="VM %s has no memory" % name)
        names.add(name)
        try:
            want = backend.file_size(parse_size(vm["memory"], "memory of VM %s" % name))
        except ValueError as exc:
            module.fail_json(msg=str(exc))
        if want <= 0:
            module.fail_json(msg="VM %s: memory must be more than 0" % name)
        if backend.max_file_bytes and want > backend.max_file_bytes:
            module.fail_json(msg="VM %s needs %s, above the %s backend's %s per file%s" % (
                name, human(want), backend.name, human(backend.max_file_bytes), backend.max_file_why))
        out.append((name, want))
    return out


def _planned(module, plan, free):
    """The result of a plan; exits here when nothing is to change or in check mode."""
    changed = any(f["action"] != "none" for f in plan)
    result = dict(changed=changed, files=plan, free_bytes=free)
    if module._diff and changed:
        result["diff"] = dict(before="".join("%s %d\n" % (f["name"], f["before_bytes"]) for f in plan),
                              after="".join("%s %d\n" % (f["name"], f["size_bytes"]) for f in plan))
    if module.check_mode or not changed:
        module.exit_json(**result)
    return result


def _mem_available():
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def service_memory(module, backend):
    """A backend without a filesystem (luo): each VM's memory is made by the backend's service."""
    wanted = _wanted(module, backend)
    try:
        have = backend.service_memory()
    except BackendError as exc:
        module.fail_json(msg="%s. Nothing was changed" % exc)
    plan = []
    for name, want in wanted:
        size = have.get(name)
        if size is not None and size != want:
            module.fail_json(msg="%s. Nothing was changed" % backend.resize_refusal(name, size, want))
        plan.append(dict(name=name, path=backend.vm_mem_path(name), size_bytes=want, before_bytes=size or 0,
                         action="none" if size is not None else "create"))
    need = sum(f["size_bytes"] for f in plan if f["action"] == "create")
    free = _mem_available()
    if free is not None and need > free:
        module.fail_json(msg="the VMs' memfds need %s more, but the host has %s available: shrink the VMs or "
                             "move some. Nothing was changed" % (human(need), human(free)), files=plan)
    result = _planned(module, plan, free)
    for f in plan:
        if f["action"] == "create":
            try:
                backend.make_service_memory(f["name"], f["size_bytes"])
            except BackendError as exc:
                module.fail_json(msg="VM %s: %s" % (f["name"], exc), **result)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", choices=["pmem", "guestmemfs", "luo"], required=True),
            path=dict(type="path"),
            vms=dict(type="list", elements="dict", required=True),
            require_mounted=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    backend = get_backend(p["backend"])
    if not backend.has_filesystem:
        service_memory(module, backend)
    if not p["path"]:  # a backend with a filesystem needs its mount (Ansible's required_if wording)
        module.fail_json(msg="backend is %s but all of the following are missing: path" % backend.name)
    path = os.path.normpath(p["path"])
    mount = backend_mount("/", path)
    if p["require_mounted"] and not mount["mounted"]:
        module.fail_json(msg="%s is not mounted: mount the %s backend first (memory_backend)" % (path, backend.name))
    if mount["mounted"] and mount["fstype"] != backend.fstype:
        module.fail_json(msg="%s is a %s mount, not the %s backend's %s"
                         % (path, mount["fstype"], backend.name, backend.fstype))
    plan = []
    for name, want in _wanted(module, backend):
        fpath = os.path.join(path, name + ".ram")
        have = os.stat(fpath).st_size if os.path.exists(fpath) else None
        if have is not None and have > want:
            module.fail_json(msg="VM %s: %s is %s, larger than %s; not shrinking a VM's memory. Remove the "
                                 "file with the VM stopped if that is meant" % (name, fpath, human(have), human(want)))
        action = "create" if have is None else ("grow" if have < want else "none")
        if action == "grow":
            busy = users(fpath)
            if busy:
                module.fail_json(msg="VM %s: %s is in use by %s; stop the VM before resizing its memory" % (
                    name, fpath, ", ".join("%s[%d]" % (c, pid) for pid, c, _f in busy)))
        plan.append(dict(name=name, path=fpath, size_bytes=want, before_bytes=have or 0, action=action))

    try:
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
    except OSError as exc:
        module.fail_json(msg="cannot read the free space of %s: %s" % (path, exc))
    need = sum(f["size_bytes"] - f["before_bytes"] for f in plan)
    if need > free:
        module.fail_json(msg="the VM memory files need %s more, but %s has %s free: shrink the VMs or grow the "
                             "carve-out" % (human(need), path, human(free)), files=plan)
    changes = [f["name"] for f in plan if f["action"] != "none"]
    refusal = backend.file_change_refusal(mount["mounted"]) if changes else None
    if refusal:
        module.fail_json(msg="%s. Not changed: %s" % (refusal, ", ".join(changes)), files=plan)
    result = _planned(module, plan, free)
    for f in plan:
        if f["action"] == "none":
            continue
        try:
            fd = os.open(f["path"], os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, f["size_bytes"])
            finally:
                os.close(fd)
            if backend.prewrite_files:
                prewrite(f["path"], f["before_bytes"], f["size_bytes"])
        except OSError as exc:
            module.fail_json(msg="VM %s: %s: %s" % (f["name"], f["path"], exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
