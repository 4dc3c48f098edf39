#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: update_step
short_description: Say where a hypervisor's live update stands and what a (re-)run must do next
version_added: 0.1.0
description:
  - Reads the host's journal (C(/var/lib/guestmemfs-liveupdate/journal.json)), its boot id and its
    running kernel, and picks the kernel to kexec into. From these alone it tells a run of
    C(playbooks/liveupdate.yml) what to do on this host, so that a re-run after a dead controller or
    play picks up where the host is - never saving a VM twice, never skipping a pending restore,
    never kexecing a host whose VMs are not saved.
  - C(start) - nothing in flight; preflight, save, kexec.
  - C(done) - already running the target kernel with nothing in flight.
  - C(kexec) - the VMs are saved on this boot; load the kernel and kexec without saving again.
  - C(wait) - the host is past its kexec (or rebooted); wait for its own boot-time restore.
  - C(wait_save) - a save is still running on the host.
  - C(rollback) - a save stopped half-way; restore its VMs on the running kernel.
  - C(blocked) - VMs were held or failed to restore, or (instead of C(start)) the boot configuration
    has drifted (C(boot_drift)); an operator must look first.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  kernel:
    description:
      - The kernel image to kexec into. Default - the kernel the C(kernel_install) role staged (its
        local fact C(/etc/ansible/facts.d/guestmemfs_kernel.fact)), else the newest C(/boot/vmlinuz-*)
        by version.
      - Its release is read from the image's own header, not from its file name.
    type: path
  initrd:
    description: Its initramfs. Default - C(/boot/initrd.img-RELEASE) beside a C(/boot/vmlinuz-RELEASE).
    type: path
  allow_boot_drift:
    description:
      - Let an update start although a memory backend's boot argument on the running cmdline (the
        carve-out) is missing from the boot configuration (C(boot_drift)). Without it the step is
        C(blocked) instead of C(start) - the next cold boot would destroy every VM's memory.
    type: bool
    default: false
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - The collection's host agent and journal (installed by the C(guestmemfs.liveupdate.qemu_vm) role)
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: It only reads the host's journal.
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
- name: Read where this host's update stands
  guestmemfs.liveupdate.update_step:
  register: step

- name: Stop on a host that needs an operator
  ansible.builtin.fail:
    msg: "{{ step.reason }}"
  when: step.step == 'blocked'
"""

RETURN = r"""
step:
  description: What to do next - C(start), C(done), C(kexec), C(wait), C(wait_save), C(rollback) or C(blocked).
  returned: always
  type: str
reason:
  description: Why, in words, from the journal.
  returned: always
  type: str
phase:
  description: The journal's phase (C(saving), C(saved), C(kexec), C(booted), C(verified), C(restored), ...).
  returned: always
  type: str
update_id:
  description: The journal's update id.
  returned: always
  type: str
boot_drift:
  description: The memory backends' running boot arguments (the carve-out) the boot configuration
    lacks - the next cold boot would boot without them. Empty when none.
  returned: always
  type: list
  elements: str
vms:
  description: Each VM's record in the journal.
  returned: always
  type: dict
boot_id:
  description: This boot's id.
  returned: always
  type: str
running_release:
  description: The running kernel's release.
  returned: always
  type: str
kernel:
  description: The kernel image chosen to kexec into.
  returned: always
  type: str
initrd:
  description: Its initramfs.
  returned: always
  type: str
target_release:
  description: The release that image announces.
  returned: always
  type: str
running_build:
  description: The running kernel's build (C(uname -v)).
  returned: always
  type: str
  sample: "#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1 (2026-10-02)"
target_build:
  description:
    - The build the image announces after its release. Same release with another build is a new
      kernel - the step is C(start), not C(done).
  returned: always
  type: str
save_time_limit:
  description:
    - Seconds the save of this host's VMs may take, from their memory (the migrations, then hashing
      all of it for the manifest) - the playbook's async limit for the save.
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts, hostinfo, hostupdate, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile, read_json

# What the kernel_install role records about the kernel it staged.
STAGED_FACT = "/etc/ansible/facts.d/guestmemfs_kernel.fact"


def main():
    module = AnsibleModule(
        argument_spec=dict(kernel=dict(type="path"), initrd=dict(type="path"),
                           allow_boot_drift=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    kernel, initrd = module.params["kernel"], module.params["initrd"]
    if not kernel:
        recorded = read_json(STAGED_FACT, {}) or {}
        kernel, initrd = recorded.get("kernel"), initrd or recorded.get("initrd")
    if not kernel:
        staged = facts.staged_kernels("/")
        if not staged:
            module.fail_json(msg="no /boot/vmlinuz-* is staged and no kernel was given")
        _release, kernel, staged_initrd = staged[-1]
        initrd = initrd or staged_initrd
    if not os.path.isfile(kernel):
        module.fail_json(msg="kernel %s is not staged (no such file)" % kernel)
    target, target_build = facts.image_version(kernel)
    if not target:
        module.fail_json(msg="%s is not a bzImage (no setup header): cannot tell its release" % kernel)
    if not initrd and os.path.basename(kernel).startswith("vmlinuz-"):
        candidate = os.path.join(os.path.dirname(kernel), "initrd.img-" + os.path.basename(kernel)[8:])
        initrd = candidate if os.path.exists(candidate) else None
    try:
        j = journal.load_journal()
    except CorruptFile as exc:
        module.fail_json(msg=str(exc))
    boot_id = hostinfo.boot_id()
    running, running_build = os.uname()[2], os.uname()[3]
    step, reason = journal.next_step(j, boot_id, running, target, running_build=running_build,
                                     target_build=target_build)
    drift = facts.boot_drift("/", module.run_command)
    if drift and step == "start" and not module.params["allow_boot_drift"]:
        step, reason = "blocked", ("the boot configuration has drifted: %s. Nothing was done; put it back "
                                   "(kernel_cmdline, the memory_backend role), or set guestmemfs_allow_boot_drift "
                                   "to update anyway" % "; ".join(drift))
    module.exit_json(changed=False, step=step, reason=reason, boot_drift=drift, phase=j.get("phase"), update_id=j.get("update_id"),
                     vms=j.get("vms", {}), boot_id=boot_id, running_release=running, kernel=kernel,
                     initrd=initrd, target_release=target, running_build=running_build, target_build=target_build,
                     save_time_limit=hostupdate.save_time_limit_of())


if __name__ == "__main__":
    main()
