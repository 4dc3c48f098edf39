#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: memory_backend
short_description: Mount the persistent memory backend that holds VM RAM across kexec
version_added: 0.1.0
description:
  - Makes the backend's filesystem available at I(path), in C(/etc/fstab) and mounted.
  - C(pmem) - legacy persistent memory from C(memmap=SIZE!OFFSET). Loads C(nd_e820) and C(nd_pmem)
    early at boot (C(modules-load.d)) so the device is there before the mount after a kexec, creates
    an ext4 filesystem once (only on a device without any filesystem signature), and mounts it with
    C(-o dax) by UUID.
  - C(guestmemfs) - C(mount -t guestmemfs guestmemfs PATH); the kernel must have been booted with
    C(guestmemfs=SIZE), and the mount is refused when that region was not reserved (the RFC then
    maps physical memory from address 0; see the C(guestmemfs_region) fact). A mounted guestmemfs is
    never unmounted (C(unmounted) and C(absent) are refused) - the RFC's umount never returns once a
    file was opened by path, and every later sync hangs behind it.
  - C(luo) - refused with a message and nothing changed - the luo backend has no filesystem; each VM's
    memory is a memfd held by the host agent.
  - Never unmounts or reformats what VMs use - a mount in use by a process is refused.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  backend:
    description: Which backend.
    type: str
    choices: [pmem, guestmemfs, luo]
    required: true
  path:
    description: Mount point.
    type: path
    required: true
  device:
    description:
      - The pmem block device. By default the only C(/dev/pmem*) device of the host; required when
        there are several.
    type: path
  state:
    description:
      - C(mounted) - in fstab and mounted; C(present) - in fstab only; C(unmounted) - not mounted,
        fstab kept; C(absent) - neither.
    type: str
    choices: [mounted, present, unmounted, absent]
    default: mounted
  root:
    description: Directory holding C(etc/) instead of C(/) (tests replaying a recorded host).
    type: path
    default: /
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - pmem - a C(/dev/pmem*) device (a C(memmap=) carve-out) and e2fsprogs; guestmemfs - the RFC kernel
attributes:
  check_mode:
    support: full
    description: Reports what would change and runs nothing.
  diff_mode:
    support: full
    description: Shows C(/etc/fstab) before and after.
  idempotent:
    support: full
    description: A backend already made and mounted is left as it is.
  platform:
    support: full
    platforms: posix
    description: Linux.
seealso:
  - module: guestmemfs.liveupdate.vm_memory
  - name: Preparing hypervisors
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/host-preparation.md
"""

EXAMPLES = r"""
- name: Mount legacy pmem with DAX at /mnt/pmem
  guestmemfs.liveupdate.memory_backend:
    backend: pmem
    path: /mnt/pmem

- name: Mount guestmemfs
  guestmemfs.liveupdate.memory_backend:
    backend: guestmemfs
    path: /mnt/guestmemfs
"""

RETURN = r"""
source:
  description: What is mounted (C(UUID=...) for pmem, C(guestmemfs) for guestmemfs).
  returned: when the backend is present
  type: str
device:
  description: The pmem block device.
  returned: backend is pmem and state is mounted or present
  type: str
mkfs:
  description: Whether a filesystem was (or would be) created.
  returned: always
  type: bool
mounted:
  description: Whether the backend is mounted at the end.
  returned: always
  type: bool
size_bytes:
  description: Capacity of the mounted filesystem.
  returned: when mounted
  type: int
free_bytes:
  description: Free space of the mounted filesystem.
  returned: when mounted
  type: int
"""

import glob
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import fstab, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import BACKENDS, get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import backend_mount
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

FSTAB_COMMENT = "guestmemfs.liveupdate: VM memory backend"


def write_file(module, path, text):
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=d)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644)
    module.atomic_move(tmp, path)


def run(module, cmd, what):
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        module.fail_json(msg="%s failed: %s" % (what, (err or out).strip()), rc=rc, stdout=out, stderr=err, cmd=cmd)
    return out


def block_device(module, root, backend):
    """The block device the backend's filesystem lives on (the one given, or the only one)."""
    if module.params["device"]:
        dev = module.params["device"]
        if not os.path.exists(os.path.join(root, dev.lstrip("/"))):
            module.fail_json(msg="%s device %s does not exist" % (backend.name, dev))
        return dev
    devs = sorted("/dev/" + os.path.basename(p) for p in glob.glob(os.path.join(root, backend.block_devices)))
    if not devs:
        module.fail_json(msg=backend.no_device_why)
    if len(devs) > 1:
        module.fail_json(msg="several %s devices (%s): say which with device" % (backend.name, ", ".join(devs)))
    return devs[0]


def fs_uuid_type(module, device, root="/"):
    """(uuid, type) of a device's filesystem signature, (None, None) for none. blkid's exit 2 means
    "nothing found" also when it could not read the device: only a device blkid read quietly and
    this module can read too counts as blank (anything else fails: never mkfs a device not read)."""
    blkid = module.get_bin_path("blkid", required=True)
    rc, out, err = module.run_command([blkid, "-p", "-o", "export", device])
    if rc == 2:
        try:
            with open(os.path.join(root, device.lstrip("/")), "rb") as fh:
                fh.read(65536)
            unread = None
        except (IOError, OSError) as exc:
            unread = str(exc)
        if err.strip() or unread:
            module.fail_json(msg="blkid could not read %s (%s): not formatting it, nothing was changed. Check the "
                                 "device and run again" % (device, err.strip() or unread),
                             rc=rc, stdout=out, stderr=err, cmd=[blkid, "-p", "-o", "export", device])
        return None, None
    if rc != 0:
        module.fail_json(msg="blkid %s failed" % device, rc=rc, stdout=out, stderr=err, cmd=[blkid, "-p", device])
    vals = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return vals.get("UUID"), vals.get("TYPE") or vals.get("PTTYPE") or "unknown"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", choices=["pmem", "guestmemfs", "luo"], required=True),
            path=dict(type="path", required=True),
            device=dict(type="path"),
            state=dict(type="str", choices=["mounted", "present", "unmounted", "absent"], default="mounted"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    root, path = p["root"], os.path.normpath(p["path"])
    backend = get_backend(p["backend"])
    if not backend.has_filesystem:
        module.fail_json(msg="the %s backend has nothing to mount at %s: it has no filesystem, each VM's memory is "
                             "a memfd the host agent holds; nothing was changed" % (backend.name, path),
                         changed=False, mkfs=False, mounted=False)
    result = dict(changed=False, mkfs=False, mounted=False)
    fstab_path = os.path.join(root, "etc/fstab")
    try:
        with open(fstab_path) as fh:
            fstab_before = fh.read()
    except (IOError, OSError):
        fstab_before = ""
    current = backend_mount(root, path)
    want_fstab = p["state"] in ("mounted", "present")
    want_mounted = p["state"] == "mounted"
    if want_mounted and not current["mounted"]:
        refusal = backend.mount_refusal(root)
        if refusal:
            module.fail_json(msg="not mounting %s: %s. Nothing was changed" % (path, refusal), **result)

    if current["mounted"] and not want_mounted:
        # Whichever backend's filesystem is mounted there decides whether it can go.
        for refusal in filter(None, (b().unmount_refusal(current) for b in BACKENDS.values())):
            module.fail_json(msg="not unmounting %s: %s. Nothing was changed" % (path, refusal), **result)
    if current["mounted"] and not want_mounted:
        busy = users(os.path.join(root, path.lstrip("/")), os.path.join(root, "proc"))
        if busy:
            module.fail_json(msg="%s is in use and stays mounted: %s" % (path, ", ".join(
                "%s[%d] %s" % (c, pid, f) for pid, c, f in busy[:5])))

    fstab_after = fstab_before
    if want_fstab:
        if backend.block_devices:
            device = block_device(module, root, backend)
            result["device"] = device
            uuid, fstype = fs_uuid_type(module, device, root)
            if fstype and fstype != backend.fstype:
                module.fail_json(msg="%s holds a %s signature, not %s: not formatting it. If it is yours to lose, "
                                     "clear it (wipefs -a %s) and run again" % (device, fstype, backend.fstype, device))
            if not fstype:
                stake = journal.at_stake()
                if stake:
                    module.fail_json(msg="%s reads as blank but VMs are at stake on this host (%s): not formatting "
                                         "it, nothing was changed. Recover or discard those VMs first"
                                     % (device, "; ".join(stake)), **result)
                result["mkfs"] = True
                if not module.check_mode:
                    run(module, [module.get_bin_path(backend.mkfs[0], required=True)] + list(backend.mkfs[1:])
                        + [device], "%s %s" % (backend.mkfs[0], device))
                    uuid, fstype = fs_uuid_type(module, device, root)
            source = "UUID=%s" % uuid if uuid else device
        else:
            source, _fstype, _options = backend.mount_spec(path)
        options = backend.fstab_options
        if backend.modules_load:
            modules_conf = os.path.join(root, "etc/modules-load.d", backend.modules_load[0])
            try:
                with open(modules_conf) as fh:
                    have = fh.read()
            except (IOError, OSError):
                have = None
            if have != backend.modules_load[1]:
                result["changed"] = True
                if not module.check_mode:
                    write_file(module, modules_conf, backend.modules_load[1])
        result["source"] = source
        if current["mounted"] and (current["fstype"] != backend.fstype):
            module.fail_json(msg="%s is already mounted with %s from %s: unmount it first"
                             % (path, current["fstype"], current["source"]))
        fstab_after = fstab.set_entry(fstab_before, source, path, backend.fstype, options, FSTAB_COMMENT)
    elif p["state"] == "absent":
        fstab_after = fstab.remove_entry(fstab_before, path)

    if fstab_after != fstab_before:
        result["changed"] = True
        if module._diff:
            result["diff"] = dict(before_header="/etc/fstab", after_header="/etc/fstab",
                                  before=fstab_before, after=fstab_after)
        if not module.check_mode:
            write_file(module, fstab_path, fstab_after)
    if result["mkfs"]:
        result["changed"] = True

    if want_mounted and not current["mounted"]:
        result["changed"] = True
        if not module.check_mode:
            if not os.path.isdir(os.path.join(root, path.lstrip("/"))):
                os.makedirs(os.path.join(root, path.lstrip("/")), 0o700)
            source, fstype, options = backend.mount_spec(path, result["source"])
            cmd = [module.get_bin_path("mount", required=True), "-t", fstype] + (
                ["-o", options] if options != "defaults" else []) + [source, path]
            run(module, cmd, "mounting %s" % path)
    elif not want_mounted and current["mounted"]:
        result["changed"] = True
        if not module.check_mode:
            run(module, [module.get_bin_path("umount", required=True), path], "unmounting %s" % path)

    final = backend_mount(root, path)
    result["mounted"] = final["mounted"] or (module.check_mode and want_mounted)
    if final["mounted"]:
        result["size_bytes"] = final.get("size_bytes")
        result["free_bytes"] = final.get("free_bytes")
        problems = backend.mount_problems(final, path)
        if problems:
            module.fail_json(msg="; ".join(problems), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
