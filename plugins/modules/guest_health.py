#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_health
short_description: Ask each VM's guest agent whether the guest is healthy (the in-guest rollout gate)
version_added: 0.3.0
description:
  - For every VM of the host whose definition has C(guest_agent) (a virtio-serial channel
    C(org.qemu.guest_agent.0), or an ISA serial port with C(guest_agent_port=isa-serial); socket
    C(/run/guestmemfs-liveupdate/NAME.qga) either way), speaks the
    qemu-guest-agent protocol - C(guest-sync-delimited), C(guest-ping) and, with I(command),
    C(guest-exec) and C(guest-exec-status) - and says per VM whether the guest answered (and the
    command exited 0) within I(timeout) seconds. The VMs are asked in parallel.
  - A VM without the channel is reported as not checked (C(ok) null), never as failed.
  - The verdict is data - C(passed) and C(failed_vms); the module fails only on bad input. The
    C(liveupdate.yml) playbook runs it before a wave and after a host's VMs resumed (C(docs/gates.md)),
    never while a VM is paused.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  vms:
    description: VM names (default - every VM configured on the host).
    type: list
    elements: str
  command:
    description:
      - A program and its arguments to run in each guest through C(guest-exec); the guest is healthy only if
        it exits 0. Unset - C(guest-ping) alone. It should only read - it runs on every gate.
    type: list
    elements: str
  timeout:
    description: Seconds each VM's agent has to answer (and its command to exit); an agent that does not
      answer yet is asked again every second until then.
    type: int
    default: 60
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - qemu-guest-agent (or any agent that speaks its protocol) running in the guests that have the channel
attributes:
  check_mode:
    support: full
    description: Runs in check mode; I(command) is not run in check mode, C(guest-ping) is.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Only asks the guests.
  platform:
    support: full
    platforms: posix
    description: Linux hypervisors whose VMs the M(guestmemfs.liveupdate.qemu_vm) role set up.
seealso:
  - module: guestmemfs.liveupdate.vm_definition
  - name: Rollout gates
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/gates.md
"""

EXAMPLES = r"""
- name: Ping every guest's agent
  guestmemfs.liveupdate.guest_health:
  register: health

- name: And run a check in each guest
  guestmemfs.liveupdate.guest_health:
    command: [/usr/bin/systemctl, is-system-running]
    timeout: 120
"""

RETURN = r"""
passed:
  description: No VM with the channel failed.
  returned: always
  type: bool
failed_vms:
  description: The VMs whose agent did not answer in time, or whose command failed.
  returned: always
  type: list
  elements: str
vms:
  description: Per VM - C(ok) (true, false, or null when the VM has no channel), C(detail), C(seconds)
    (until it answered), C(exitcode) and C(stdout) (the end of it) of I(command).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, qga, vmdef


def main():
    module = AnsibleModule(
        argument_spec=dict(vms=dict(type="list", elements="str"), command=dict(type="list", elements="str"),
                           timeout=dict(type="int", default=60)),
        supports_check_mode=True,
    )
    p = module.params
    if vmdef.names_problem(p["vms"]):
        module.fail_json(msg=vmdef.names_problem(p["vms"]))
    if p["timeout"] < 1:
        module.fail_json(msg="timeout must be at least 1 second, not %s" % p["timeout"])
    if p["command"] is not None and not p["command"]:
        module.fail_json(msg="command is an empty list: give a program and its arguments, or leave it unset")
    names = cpr.vm_names()
    unknown = sorted(set(p["vms"] or []) - set(names))
    if unknown:
        module.fail_json(msg="no such VM on this host: %s (configured: %s)" % (", ".join(unknown), ", ".join(names) or "none"))
    try:
        confs = [cpr.VM.load(n).conf for n in names]
    except vmdef.VMDefError as exc:
        module.fail_json(msg=str(exc))
    command = None if module.check_mode else p["command"]
    vms = qga.check_host(confs, cpr.RUN_DIR, command=command, timeout=p["timeout"], vms=p["vms"])
    failed = [n for n, r in vms.items() if r["ok"] is False]
    module.exit_json(changed=False, passed=not failed, failed_vms=failed, vms=vms)


if __name__ == "__main__":
    main()
