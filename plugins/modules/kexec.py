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
  - C(loaded) - checks, before anything changes, that the kernel and initrd are staged, the running
    kernel's kexec_file_load is there, and the memory backend is mounted (pmem - with
    DAX). Builds the next kernel's command line from the running one as the backend needs it (pmem
    keeps C(memmap=), without which the next kernel would overwrite the region; guestmemfs drops
    C(guestmemfs=), which would carve a second region; luo keeps C(kho=on liveupdate=on)) plus
    I(append), and loads it with the kexec_file_load syscall itself, never through the C(kexec) binary
    (a kexec-tools that falls back to the legacy kexec_load, or a wrapper, can place the new kernel
    inside the region, and kexec_load carries no KHO handover); the load counts only once
    C(/sys/kernel/kexec_loaded) reads 1.
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
  allow_boot_drift:
    description:
      - Load although a memory backend's boot argument on the running cmdline (the carve-out) is
        missing from the boot configuration (C(boot_drift)). Without it that is refused - the next
        cold boot (a crash, a power cut) would boot without the carve-out and destroy every VM's
        memory. Fix the boot configuration (M(guestmemfs.liveupdate.kernel_cmdline)) instead
        whenever possible.
    type: bool
    default: false
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - A running kernel with C(CONFIG_KEXEC_FILE) (the module calls kexec_file_load(2) itself, no kexec-tools)
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
    description: Linux with kexec_file_load (CONFIG_KEXEC_FILE).
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
  description: Seconds the load took.
  returned: when loaded
  type: float
boot_drift:
  description: The memory backends' running boot arguments the boot configuration lacks (empty when none).
  returned: state is loaded
  type: list
  elements: str
load_syscall:
  description: The system call that loaded the next kernel (always C(kexec_file_load)).
  returned: when loaded
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts, hostupdate, journal, kexec_load, luo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend


def next_cmdline(backend, running_args, append):
    args = [a for a in running_args if not a.startswith("BOOT_IMAGE=")]
    args = backend.next_kernel_args(args)
    names = set(a.split("=", 1)[0] for a in append)
    return [a for a in args if a.split("=", 1)[0] not in names] + list(append)


def load_command(kexec, kernel, initrd, cmdline):
    """The load as kexec-tools spells it (kexec_file_load, ``-s``: the only load that is safe for a
    carve-out and the only one that carries a KHO handover), for the preflight and the messages; the
    module itself loads with ``kexec_load.load_next_kernel``, never through a binary."""
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
            allow_boot_drift=dict(type="bool", default=False),
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
    if p["state"] == "unloaded":
        if f["kexec_loaded"]:
            result["changed"] = True
            if not module.check_mode:
                try:
                    luo.kexec_unload()
                except luo.LuoError as exc:
                    module.fail_json(msg="unloading the next kernel failed: %s" % exc, rc=exc.errno, stdout="",
                                     stderr=str(exc), cmd=["kexec_file_load", "unload"], **result)
        module.exit_json(**result)

    problems = preflight(module, backend, f)
    args = next_cmdline(backend, f["cmdline"]["args"], p["append"])
    cmd = load_command("kexec", p["kernel"], p["initrd"], " ".join(args))
    if backend.checks_target_kernel:
        release, config, places = target_config(p["kernel"]) if p["kernel"] and os.path.isfile(p["kernel"]) \
            else (None, None, [])
        problems += backend.target_problems(f["kho"], release, config, places, args, cmd)
    problems += backend.next_cmdline_problems(f["cmdline"]["args"], args)
    result["boot_drift"] = facts.boot_drift("/", module.run_command)
    if result["boot_drift"] and not p["allow_boot_drift"]:
        problems.append("the boot configuration has drifted: %s. Put it back (kernel_cmdline), or set "
                        "allow_boot_drift (guestmemfs_allow_boot_drift) to go on anyway"
                        % "; ".join(result["boot_drift"]))
    for d in result["boot_drift"] if p["allow_boot_drift"] else []:
        module.warn("boot configuration drift (allowed): %s" % d)
    cmdline = " ".join(args)
    result["cmdline"] = cmdline
    if problems:
        module.fail_json(msg="kexec preflight failed, nothing was changed: " + "; ".join(problems), **result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)
    try:
        result["load_s"] = round(kexec_load.load_next_kernel(p["kernel"], p["initrd"], cmdline), 2)
    except luo.LuoError as exc:
        module.fail_json(msg="loading %s failed, nothing is paused: %s. Fix that and run again; the kernel it "
                             "replaced, if any, is no longer loaded" % (p["kernel"], exc), rc=exc.errno,
                         stdout="", stderr=str(exc), cmd=cmd, **result)
    result["load_syscall"] = "kexec_file_load"
    # from_release: what the boot after the kexec checks KHO's "exec from" against (bootproof)
    target = dict(kernel=p["kernel"], initrd=p["initrd"], cmdline=cmdline, release=facts.image_release(p["kernel"]),
                  from_release=os.uname()[2])
    hostupdate.update_journal(note_loaded(target), msg="loaded %s" % p["kernel"])
    module.exit_json(**result)


def note_loaded(target):
    """The journal change that notes the loaded kernel: phase preflight on an idle host; an update in
    flight keeps its phase. Decided under the journal's lock (a save of another run may begin at any time)."""
    def fn(j):
        if j.get("phase") in hostupdate.IDLE_PHASES:
            journal.phase_update("preflight", kexec_target=target)(j)
        else:
            j.update(kexec_target=target)
    return fn


if __name__ == "__main__":
    main()
