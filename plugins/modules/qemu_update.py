#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: qemu_update
short_description: Replace the QEMU under a hypervisor's running VMs without restarting them
version_added: 0.1.0
description:
  - Replaces the QEMU binary of each running VM (or of O(vms)) by O(binary) without a kexec and
    without a guest reboot, O(parallel) VMs at a time, on the host, journaled
    (C(/var/lib/guestmemfs-liveupdate/journal.json)).
  - Before anything pauses, O(binary) must run, be QEMU 9.0 or newer (cpr-reboot with C(file:)
    migration) and offer every VM's machine type (C(-machine help)), and the QEMU each VM runs now is
    kept for its rollback (a copy of its executable, modules and firmware), or the module refuses.
  - Per VM, the kernel update's save (cpr-reboot to its state file with x-ignore-shared, the memory's
    digests and the journal durable before its QEMU quits), then its unit starts O(binary) with the
    argv the VM ran with and C(-incoming defer), verifies its memory as O(memory_check) says, loads the
    state and resumes it.
  - A new QEMU that does not start or refuses the state never ran the guest; the VM is restored by
    its old QEMU (the kept copy) on its memory verified again, and the module fails naming it. A VM
    whose memory does not verify is held, never resumed.
  - With O(state=kept), it only keeps a copy of the QEMU each running VM runs, pausing nothing -
    run it before a package replaces that QEMU in place.
  - See C(docs/qemu-update.md) for the failure table.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  state:
    description:
      - V(updated) - every VM (of O(vms)) runs O(binary).
      - V(kept) - the QEMU each running VM runs now is kept (before a package replaces it in place).
    type: str
    choices: [updated, kept]
    default: updated
  binary:
    description: The new QEMU, an absolute path. Required with O(state=updated).
    type: path
  vms:
    description: The VMs to update. Default - every running VM of the host.
    type: list
    elements: str
  parallel:
    description: How many VMs of the host are updated at a time.
    type: int
    default: 1
  memory_check:
    description:
      - How each VM's memory is checked before it resumes. The memory never moves in a QEMU update,
        so V(sampled) (extents plus a sampled content check) is the default; V(full) hashes all of it;
        V(extents) checks only that it did not move.
    type: str
    choices: [full, sampled, extents]
    default: sampled
  update_id:
    description: The update's id in the journal. Default - a new one.
    type: str
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - The collection's host agent and journal (installed by the C(guestmemfs.liveupdate.qemu_vm) role)
attributes:
  check_mode:
    support: full
    description: Probes O(binary) and checks every refusal, pausing, keeping and journaling nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: A VM whose running executable already is O(binary) (same content) is left alone.
  platform:
    support: full
    platforms: posix
    description: Linux.
seealso:
  - module: guestmemfs.liveupdate.vm_cpr
  - name: The QEMU update
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/qemu-update.md
"""

EXAMPLES = r"""
- name: Keep the QEMU the VMs run before the package replaces it
  guestmemfs.liveupdate.qemu_update:
    state: kept

- name: Install the new QEMU
  ansible.builtin.apt:
    name: qemu-system-x86
    default_release: trixie-backports
    state: latest

- name: Move every VM to the new QEMU, two at a time
  guestmemfs.liveupdate.qemu_update:
    binary: /usr/bin/qemu-system-x86_64
    parallel: 2
  async: 3600
  poll: 5
  register: qemu

- name: Check a QEMU built elsewhere against one VM, changing nothing
  guestmemfs.liveupdate.qemu_update:
    binary: /opt/qemu-11.1/bin/qemu-system-x86_64
    vms: [web1]
  check_mode: true
"""

RETURN = r"""
update_id:
  description: The update's id in the journal (null when nothing was to update).
  returned: state=updated, not in check mode
  type: str
vms:
  description: Per VM, what happened to it (or, in check mode, the QEMU it runs now).
  returned: always
  type: dict
  sample: {"web1": "web1 resumed on /usr/bin/qemu-system-x86_64, blackout 0.412s"}
outcomes:
  description:
    - Per VM, V(updated), V(already) (it ran O(binary) before), V(not_updated) (its save failed; it
      runs on its old QEMU), V(rolled_back) (the new QEMU refused it; it runs on its old QEMU), V(held)
      (not resumed - its memory did not verify) or V(failed).
  returned: state=updated, not in check mode
  type: dict
  sample: {"web1": "updated"}
kept:
  description: Per VM, the kept copy of the QEMU it ran before.
  returned: not in check mode
  type: dict
records:
  description:
    - Per VM, its journal record after the update - state, C(blackout_s) (QMP STOP to RESUME),
      C(save_s), C(state_bytes), C(verify) (the memory check's verdict), C(qemu_from), C(qemu) (the
      binary it runs now), C(qemu_kept), C(rolled_back), C(new_qemu_error).
  returned: state=updated, not in check mode
  type: dict
probe:
  description: What the probe of O(binary) found (version, machine types, VMs already on it).
  returned: state=updated
  type: dict
  sample: {"binary": "/usr/bin/qemu-system-x86_64", "version": "10.0", "already": []}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, hostupdate, qemu_update, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile


def main():
    module = AnsibleModule(
        argument_spec=dict(state=dict(type="str", choices=["updated", "kept"], default="updated"),
                           binary=dict(type="path"), vms=dict(type="list", elements="str"),
                           parallel=dict(type="int", default=1),
                           memory_check=dict(type="str", choices=["full", "sampled", "extents"], default="sampled"),
                           update_id=dict(type="str")),
        required_if=[("state", "updated", ["binary"])],
        supports_check_mode=True,
    )
    p = module.params
    if vmdef.names_problem(p["vms"]):
        module.fail_json(msg=vmdef.names_problem(p["vms"]))
    if p["parallel"] < 1:
        module.fail_json(msg="parallel must be at least 1, not %d. Nothing was done" % p["parallel"])

    def run(argv):
        return module.run_command(argv)[0]
    try:
        if p["state"] == "kept":
            if module.check_mode:
                module.exit_json(changed=True, vms={}, kept={})
            kept = qemu_update.keep_all(module.run_command, p["vms"], cpr.CONF_DIR)
            module.exit_json(changed=True, vms=dict((n, "kept as %s" % k) for n, k in kept.items()), kept=kept)
        if module.check_mode:
            plan = qemu_update.check(module.run_command, p["binary"], p["vms"], cpr.CONF_DIR)
            module.exit_json(changed=bool(plan["vms"]), vms=plan["vms"], probe=plan["probe"])
        r = qemu_update.update_qemu(run, module.run_command, p["binary"], p["vms"], parallel=p["parallel"],
                                    mode=p["memory_check"], conf_dir=cpr.CONF_DIR, update_id=p["update_id"])
    except hostupdate.UpdateError as exc:
        # what each VM ended as, when the update got that far
        result = getattr(exc, "result", None) or {}
        left = dict((k, result[k]) for k in ("vms", "outcomes", "kept", "records") if k in result)
        module.fail_json(msg=str(exc), update_id=exc.update_id, **left)
    except CorruptFile as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(r["update_id"]), update_id=r["update_id"], vms=r["vms"], outcomes=r["outcomes"],
                     kept=r["kept"], probe=r.get("probe", {}), records=r["records"])


if __name__ == "__main__":
    main()
