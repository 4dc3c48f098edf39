#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kexec
short_description: Preflight and load the next kernel for a kexec live update
version_added: 0.1.0
description:
  - C(loaded) - checks, before anything changes, that the kernel and initrd are staged, kexec-tools
    and the running kernel's kexec_file_load are there, and the memory backend is mounted (pmem - with
    DAX). Builds the next kernel's command line from the running one as the backend needs it (pmem
    keeps C(memmap=), without which the next kernel would overwrite the region; guestmemfs drops
    C(guestmemfs=), which would carve a second region; luo keeps C(kho=on liveupdate=on)) plus
    I(append), and loads it with C(kexec -s) (kexec_file_load; the legacy kexec_load can place the new
    kernel inside the region, and carries no KHO handover).
  - C(luo) - also refuses, before anything is loaded, a running kernel without C(/dev/liveupdate) (KHO
    and LUO must be built in and switched on with C(kho=on liveupdate=on)), a target kernel whose
    config (C(/boot/config-RELEASE), or C(config-RELEASE) beside the image; the release is read from
    the image) lacks C(KEXEC_HANDOVER), C(LIVEUPDATE), C(LIVEUPDATE_MEMFD) or C(KEXEC_FILE), and a
    next command line on which KHO or LUO would be off (the target would strand the preserved memory).
    There is no mount to check.
  - C(unloaded) - unloads a loaded kernel (a failure before the kexec).
  - The kexec itself is the host agent's (C(agent kexec)), run by M(ansible.builtin.reboot) with
    C(reboot_command), which waits for a new boot_id. It syncs, then runs C(systemctl kexec) (pmem),
    asks the memfd holder (luo), or calls C(reboot(LINUX_REBOOT_CMD_KEXEC)) itself (guestmemfs, whose
    RFC C(umount) in systemd's shutdown never returns).
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  state:
    description: Load or unload.
    type: str
    choices: [loaded, unloaded]
    default: loaded
  kernel:
    description: The kernel image to kexec into.
    type: path
  initrd:
    description: Its initramfs.
    type: path
  backend:
    description: The memory backend whose rules the next command line follows.
    type: str
    choices: [pmem, guestmemfs, luo]
    default: pmem
  path:
    description:
      - The backend's mount point, checked to be mounted.
      - Required for C(pmem) and C(guestmemfs) with I(state=loaded); C(luo) has no filesystem and
        ignores it.
    type: path
  append:
    description: Arguments added to the next kernel's command line.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - kexec-tools (C(kexec -s), kexec_file_load)
  - A running kernel with C(CONFIG_KEXEC_FILE)
attributes:
  check_mode:
    support: full
    description: Runs the preflight and reports the command line; loads nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: partial
    description: >-
      C(state=loaded) loads the kernel again on every run (after its preflight); C(state=unloaded) changes
      nothing when no kernel is loaded.
  platform:
    support: full
    platforms: posix
    description: Linux with kexec-tools.
seealso:
  - module: guestmemfs.liveupdate.update_step
  - name: The live update
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/liveupdate.md
"""

EXAMPLES = r"""
- name: Preflight and load the new kernel before any VM pauses
  guestmemfs.liveupdate.kexec:
    kernel: /boot/vmlinuz-6.12.117+deb13-amd64
    initrd: /boot/initrd.img-6.12.117+deb13-amd64
    backend: pmem
    path: /mnt/vmmem

- name: Load a KHO+LUO kernel for the luo backend (refused unless both ends have KHO and LUO on)
  guestmemfs.liveupdate.kexec:
    kernel: /boot/vmlinuz-7.3.4-lu1
    initrd: /boot/initrd.img-7.3.4-lu1
    backend: luo
"""

RETURN = r"""
cmdline:
  description: The command line loaded for the next kernel.
  returned: state is loaded
  type: str
boot_id:
  description: This boot's id; the kexec is confirmed by a different one.
  returned: always
  type: str
load_s:
  description: Seconds C(kexec -s -l) took.
  returned: when loaded
  type: float
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts, hostupdate
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend


def next_cmdline(backend, running_args, append):
    args = [a for a in running_args if not a.startswith("BOOT_IMAGE=")]
    args = backend.next_kernel_args(args)
    names = set(a.split("=", 1)[0] for a in append)
    return [a for a in args if a.split("=", 1)[0] not in names] + list(append)


def load_command(kexec, kernel, initrd, cmdline):
    """The load: kexec_file_load (``-s``), the only one that is safe for a carve-out and the only
    one that carries a KHO handover."""
    return [kexec, "-s", "-l", kernel, "--initrd=%s" % initrd, "--command-line=%s" % cmdline]


def target_config(kernel):
    """(release, {option: value} or None, where it was looked for) of a kernel image's config: the
    installed /boot/config-RELEASE, else config-RELEASE beside the image. Never the running
    kernel's /proc/config.gz: that describes another kernel."""
    release = facts.image_release(kernel)
    if not release:
        return None, None, []
    places = ["/boot/config-%s" % release, os.path.join(os.path.dirname(kernel), "config-%s" % release)]
    for place in dict.fromkeys(places):
        try:
            with open(place) as fh:
                return release, facts.parse_kconfig(fh.read()), places
        except (IOError, OSError):
            pass
    return release, None, places


def preflight(module, backend, f):
    p = module.params
    problems = []
    for what in ("kernel", "initrd"):
        if not p[what]:
            problems.append("%s is not given" % what)
        elif not os.path.isfile(p[what]):
            problems.append("%s %s is not staged (no such file)" % (what, p[what]))
        elif what == "kernel" and facts.image_problem(p[what]):
            problems.append(facts.image_problem(p[what]))
    if not module.get_bin_path("kexec"):
        problems.append("kexec-tools is not installed")
    if not f["kexec_file"]:
        problems.append("the running kernel has no kexec_file_load (CONFIG_KEXEC_FILE), the only safe load")
    if backend.has_filesystem:
        m = f["backend_mount"]
        if not m["mounted"]:
            problems.append("the %s backend is not mounted at %s" % (backend.name, p["path"]))
        elif m["fstype"] != backend.fstype:
            problems.append("%s is %s, not the %s backend" % (p["path"], m["fstype"], backend.name))
        else:
            problems += backend.mount_problems(m, p["path"])
    problems += backend.load_problems(f)
    return problems


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["loaded", "unloaded"], default="loaded"),
            kernel=dict(type="path"),
            initrd=dict(type="path"),
            backend=dict(type="str", choices=["pmem", "guestmemfs", "luo"], default="pmem"),
            path=dict(type="path"),
            append=dict(type="list", elements="str", default=[]),
        ),
        required_if=[("state", "loaded", ("kernel", "initrd"))],
        supports_check_mode=True,
    )
    p = module.params
    backend = get_backend(p["backend"])
    if p["state"] == "loaded" and backend.has_filesystem and not p["path"]:
        module.fail_json(msg="path is required for the %s backend: its mount is checked before loading" % backend.name)
    f = facts.gather("/", mount_point=p["path"] if backend.has_filesystem else None)
    result = dict(changed=False, boot_id=f["boot_id"])
    kexec = module.get_bin_path("kexec")
    if p["state"] == "unloaded":
        if f["kexec_loaded"] and kexec:
            result["changed"] = True
            if not module.check_mode:
                cmd = [kexec, "-s", "-u"]
                rc, out, err = module.run_command(cmd)
                if rc != 0:
                    module.fail_json(msg="kexec -s -u failed", rc=rc, stdout=out, stderr=err, cmd=cmd, **result)
        module.exit_json(**result)

    problems = preflight(module, backend, f)
    args = next_cmdline(backend, f["cmdline"]["args"], p["append"])
    cmd = load_command(kexec or "kexec", p["kernel"], p["initrd"], " ".join(args))
    if backend.checks_target_kernel:
        release, config, places = target_config(p["kernel"]) if p["kernel"] and os.path.isfile(p["kernel"]) \
            else (None, None, [])
        problems += backend.target_problems(f["kho"], release, config, places, args, cmd)
    problems += backend.next_cmdline_problems(f["cmdline"]["args"], args)
    cmdline = " ".join(args)
    result["cmdline"] = cmdline
    if problems:
        module.fail_json(msg="kexec preflight failed, nothing was changed: " + "; ".join(problems), **result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)
    t0 = time.time()
    rc, out, err = module.run_command(cmd)
    result["load_s"] = round(time.time() - t0, 2)
    if rc != 0:
        module.fail_json(msg="loading %s failed (under lockdown or Secure Boot an unsigned kernel is refused)"
                         % p["kernel"], rc=rc, stdout=out, stderr=err, cmd=cmd, **result)
    if not facts.gather("/")["kexec_loaded"]:
        module.fail_json(msg="kexec -s -l returned 0 but /sys/kernel/kexec_loaded is not 1", cmd=cmd, **result)
    target = dict(kernel=p["kernel"], initrd=p["initrd"], cmdline=cmdline, release=facts.image_release(p["kernel"]))
    if hostupdate.load_journal().get("phase") in hostupdate.IDLE_PHASES:
        hostupdate.set_phase("preflight", kexec_target=target, msg="loaded %s" % p["kernel"])
    else:  # an update in flight keeps its phase: only the loaded kernel is noted
        hostupdate.update_journal(lambda j: j.update(kexec_target=target), msg="loaded %s" % p["kernel"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
