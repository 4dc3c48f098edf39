#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm_cpr
short_description: Save a host's VMs with QEMU cpr-reboot, restore them, or wait for their restore
version_added: 0.1.0
description:
  - C(save) - for every running VM of the host (or those in I(vms)), in parallel, over QMP - the
    C(events) and C(x-ignore-shared) capabilities, mode C(cpr-reboot), C(stop), C(migrate) to a
    state file on the root disk, wait for C(completed), fsync, C(quit). The memory manifest that gates
    the restore is recorded - extents before any VM pauses, content once they are stopped. If one VM
    fails, it is resumed and the VMs already saved are restored on the running kernel.
  - C(update) - the whole critical path of the host's update in this one process, on the host - C(save)
    as above, sync, then the guarded kexec (the host agent's C(agent kexec)) - with no controller
    between the first pause and the kexec. Run it detached (C(async), C(poll=0)) and follow it with
    C(wait) and I(update_id). A kexec that is refused or does not start restores the saved VMs on
    the running kernel and fails.
  - C(restore) - restore the saved VMs on the running kernel (the path a failure before kexec takes).
    After a save whose process died half-way, first resumes the VMs it left paused and counts those
    whose state file was completed as saved.
    Each VM's unit verifies its memory against the manifest, starts QEMU with C(-incoming defer),
    loads the state and resumes it; a VM whose memory fails verification is not resumed.
  - C(wait) - after a kexec, wait until the host's own restore (which runs at boot without the
    controller) has resumed or held every VM, and report each VM's blackout from the QMP C(STOP)
    and C(RESUME) timestamps. With I(update_id) (the update C(update) runs), follow it from its
    start - saving, kexecing, restoring - and fail as soon as the journal says it stopped without a
    kexec; the host may go away in between (the kexec), the caller asks again once it answers.
  - C(status) - the host's journal.
  - C(wait_save) - follow a save running detached (async) for up to I(poll) seconds (default 25) and
    say where it stands - I(done) once the journal shows update I(update_id) past its save (or its
    saver gone), else how many VMs are saved so far - so that the caller can show progress.
  - C(shutdown) - shut down the VMs in I(vms) cleanly (ACPI power button, then wait for QEMU to exit, up
    to I(timeout) seconds) - the VMs a live update cannot carry whose policy is C(shutdown). Their units
    stay enabled, so they cold-start after the kexec.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  action:
    description: What to do.
    type: str
    choices: [save, update, restore, wait, wait_save, status, shutdown]
    required: true
  vms:
    description: VM names (default - all VMs configured on the host).
    type: list
    elements: str
  manifest_mode:
    description: Content check of the memory manifest - every chunk, a seeded sample, or extents only.
    type: str
    choices: [full, sampled, extents]
    default: full
  timeout:
    description: Seconds for one VM's migration (C(save)) or for the whole restore (C(wait)).
    type: int
    default: 300
  poll:
    description:
      - C(wait_save) - follow the save for at most this many seconds (default 25).
      - C(wait) - return after at most this many seconds, without failing, with I(done) false and
        where the restore stands (I(restored), I(total), I(last_step)), so that the caller can show
        progress and ask again; I(timeout) still bounds the whole wait of one call. Unset - wait until
        every VM is restored or I(timeout) passes.
    type: int
  update_id:
    description:
      - C(save) - the id the new update gets (default - a random one); the run that starts a save
        gives one, so that its rescue can name it even when the save died without an answer.
      - C(update) - the id the update gets, as for C(save) (required).
      - C(wait) - follow this update from its start (see C(update)).
      - C(restore) - act only on this update - when the journal holds another one (a second run whose
        save was refused, racing a live save), nothing is done and I(msg) says whose update it is.
    type: str
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - QEMU 10.0 or newer (cpr-reboot)
  - The collection's host agent (installed by the C(guestmemfs.liveupdate.qemu_vm) role)
attributes:
  check_mode:
    support: partial
    description: Runs in check mode.
    details: C(save), C(update) and C(restore) report the VMs they would act on and do nothing; C(wait) and
      C(status) only read; C(wait_save) only reads.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: partial
    description: >-
      C(status) and C(wait) only read; C(save), C(update), C(restore) and C(shutdown) are steps of one live update,
      each done once, driven by the host's journal.
  platform:
    support: full
    platforms: posix
    description: Linux hypervisors whose VMs the M(guestmemfs.liveupdate.qemu_vm) role set up.
seealso:
  - module: guestmemfs.liveupdate.vm_preservability
  - name: The live update
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/liveupdate.md
"""

EXAMPLES = r"""
- name: Save every VM of the host
  guestmemfs.liveupdate.vm_cpr:
    action: save

- name: Save every VM and kexec, in one process on the host, detached
  guestmemfs.liveupdate.vm_cpr:
    action: update
    update_id: "{{ my_update_id }}"
    manifest_mode: sampled
  async: 1200
  poll: 0

- name: Follow it (ask again after the kexec, once the host answers)
  guestmemfs.liveupdate.vm_cpr:
    action: wait
    update_id: "{{ my_update_id }}"
    poll: 25

- name: After the kexec, wait for the VMs to be resumed
  guestmemfs.liveupdate.vm_cpr:
    action: wait
  register: restored
"""

RETURN = r"""
vms:
  description: Per VM - C(state), and for a restored VM C(stop_ts), C(resume_ts), C(blackout_s),
    C(save_s), C(state_bytes), C(verify).
  returned: always
  type: dict
update_id:
  description: The update this journal belongs to.
  returned: when a journal exists
  type: str
msg:
  description: Why C(restore) with an I(update_id) did nothing (the journal holds another update).
  returned: when C(restore) left another update alone
  type: str
phase:
  description: The journal's phase (see M(guestmemfs.liveupdate.update_step)).
  returned: action is wait or status
  type: str
proofs:
  description:
    - What this host's kernel updates proved of their kernel pair (C(running -> target) release), kept across
      updates - per pair its last check's C(result) (C(proven) by a full check passed on every VM the host
      carried, or C(failed) when a check found a VM's memory moved or changed), C(update_id), C(ts), C(vms),
      C(modes) and C(detail). The playbook reads every host's at the start of a run (docs/liveupdate.md,
      Verification).
  returned: action is status
  type: dict
  sample: {"6.12.117+deb13-amd64 -> 7.3.4+deb13-amd64": {"result": "proven", "update_id": "6f1c...", "ts": 1765000000.0,
           "vms": 2, "modes": ["full"], "detail": "full check passed on 2 VMs"}}
progress:
  description: Where the update I(update_id) stands (C(wait) with I(update_id)) - C(starting), C(saving),
    C(kexec), C(restoring) or C(done).
  returned: action is wait with update_id
  type: str
done:
  description: Whether every VM reached its final state (C(wait); false only with I(poll)), or whether the
    save is over (C(wait_save)).
  returned: action is wait or wait_save
  type: bool
saved:
  description: How many of the VMs are saved so far (C(wait_save)).
  returned: action is wait_save
  type: int
restored:
  description: How many of the VMs are restored so far (C(wait)).
  returned: action is wait
  type: int
total:
  description: How many VMs the host restores (C(wait)) or saves (C(wait_save)).
  returned: action is wait or wait_save
  type: int
last_step:
  description: The journal's last step - its last log message, else its phase.
  returned: action is wait or wait_save
  type: str
booted_release:
  description: The kernel release the host booted after its kexec.
  returned: action is wait
  type: str
kexec_proof:
  description:
    - "What the booted kernel says of its boot, read once every VM is restored - C(release), C(version),
      C(kho_exec_from) and C(kho_exec_count) (the kernel log's C(KHO: exec from: RELEASE (count N)), null
      without KHO), C(systemd_kexecs) (systemd's KexecsCount, null before systemd 262) - and
      C(verdict) (C(kexec), C(not the target) or C(unproven)) with C(evidence), one line per witness."
  returned: action is wait, after a kexec
  type: dict
booted_as_loaded:
  description:
    - Whether the host booted the kernel and command line the update loaded; false after a cold boot
      into the default kernel (a new kernel that panicked).
  returned: action is wait
  type: bool
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import bootproof, hostinfo, hostupdate, journal, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", choices=["save", "update", "restore", "wait", "wait_save", "status", "shutdown"],
                        required=True),
            vms=dict(type="list", elements="str"),
            manifest_mode=dict(type="str", choices=["full", "sampled", "extents"], default="full"),
            timeout=dict(type="int", default=300),
            update_id=dict(type="str"),
            poll=dict(type="int"),
        ),
        required_if=[("action", "shutdown", ["vms"]), ("action", "wait_save", ["update_id"]),
                     ("action", "update", ["update_id"])],
        supports_check_mode=True,
    )
    try:
        _run(module)
    except CorruptFile as exc:  # a journal or manifest that is not JSON: named, with the recovery
        module.fail_json(msg=str(exc))


def _run(module):
    p = module.params
    action = p["action"]

    def run(argv):
        return module.run_command(argv)[0]
    names = p["vms"]
    # Names become paths, unit instances and QMP sockets: checked before anything acts.
    if vmdef.names_problem(names):
        module.fail_json(msg=vmdef.names_problem(names))
    if action == "shutdown":
        if not names:
            module.fail_json(msg="action shutdown needs vms: the VMs to shut down")
        if module.check_mode:
            module.exit_json(changed=True, vms=dict((n, {"state": "would shut down"}) for n in names))
        try:
            out = hostupdate.shutdown_for_update(names, run, timeout=p["timeout"])
        except hostupdate.UpdateError as exc:
            module.fail_json(msg=str(exc))
        module.exit_json(changed=any(v != "not running" for v in out.values()),
                         vms=dict((n, {"state": v}) for n, v in out.items()))
    if action in ("save", "update"):
        # update: the save, then the kexec, in this process (the caller runs it detached)
        if module.check_mode:
            module.exit_json(changed=True, vms=dict((n, {"state": "would save" + (", then kexec" if action == "update" else "")})
                                                    for n in names or hostupdate.vm_names()))
        step = hostupdate.update_host if action == "update" else hostupdate.save_all
        try:
            r = step(run, names, mode=p["manifest_mode"], timeout=p["timeout"], update_id=p["update_id"])
        except hostupdate.UpdateError as exc:
            module.fail_json(msg=str(exc), update_id=exc.update_id,
                             vms=hostupdate.load_journal().get("vms", {}) if exc.update_id else {})
        # (an update gets here only from a kexec that returns: the process usually ends with the old kernel)
        module.exit_json(changed=True, update_id=r["update_id"], vms=hostupdate.load_journal().get("vms", {}),
                         manifest_record_s=r["manifest_record_s"], manifest_content_s=r["manifest_content_s"])
    j = hostupdate.load_journal()
    if action == "restore" and p["update_id"] and j.get("update_id") != p["update_id"]:
        module.exit_json(changed=False, vms={}, update_id=j.get("update_id"),
                         msg="the journal holds update %s (phase %s), not %s: left alone" % (
                             j.get("update_id"), j.get("phase"), p["update_id"]))
    if action == "restore" and not module.check_mode and j.get("phase") == "saving" \
            and not hostinfo.pid_alive(j.get("saver_pid")):
        hostupdate.recover_interrupted_save(run)
        j = hostupdate.load_journal()
    if action == "restore":
        saved = [n for n, v in j.get("vms", {}).items() if v.get("state") in ("saved",) + journal.VM_NOT_RESUMED
                 and (names is None or n in names)]
        if module.check_mode or not saved:
            module.exit_json(changed=bool(saved), vms=j.get("vms", {}))
        text = hostupdate.rollback(run, saved)
        j = hostupdate.load_journal()
        bad = [n for n in saved if j["vms"][n].get("state") != "restored"]
        if bad:
            module.fail_json(msg="restore on the running kernel left %s not running: %s" % (", ".join(bad), text),
                             vms=j["vms"])
        module.exit_json(changed=True, vms=j["vms"], update_id=j.get("update_id"))
    if action == "wait_save":
        start = time.monotonic()
        while True:
            j = hostupdate.load_journal()
            ours = j.get("update_id") == p["update_id"]
            done = ours and (j.get("phase") != "saving" or not hostinfo.pid_alive(j.get("saver_pid")))
            if done or time.monotonic() - start >= (p["poll"] or 25):
                vms = j.get("vms", {}) if ours else {}
                progress = _progress(j, vms) if ours else dict(last_step="the save has not started yet")
                module.exit_json(changed=False, done=done, phase=j.get("phase"), update_id=j.get("update_id"),
                                 saved=sum(1 for v in vms.values() if v.get("state") == "saved"), total=len(vms),
                                 last_step=progress["last_step"])
            time.sleep(1)
    if action == "wait":
        start = time.monotonic()
        deadline = start + p["timeout"]
        while True:
            j = hostupdate.load_journal()
            if p["update_id"]:
                where, text = journal.update_progress(j, journal.boot_id(), p["update_id"])
                if where == "stopped":
                    module.fail_json(msg=text, vms=j.get("vms", {}), update_id=j.get("update_id"), phase=j.get("phase"),
                                     progress=where)
                if where in ("starting", "saving", "kexec"):
                    if time.monotonic() > deadline:
                        module.fail_json(msg="after %ss, update %s is still %s: %s" % (p["timeout"], p["update_id"],
                                                                                       where, text), progress=where)
                    # not started after a few seconds: the caller reads the process's own answer (a refusal?)
                    slice_s = min(p["poll"] or 0, 5) if where == "starting" else p["poll"]
                    if slice_s and time.monotonic() - start >= slice_s:
                        vms = j.get("vms", {}) if where != "starting" else {}
                        module.exit_json(changed=False, done=False, vms=vms, phase=j.get("phase"), progress=where,
                                         update_id=j.get("update_id"), **dict(_progress(j, vms), last_step=text))
                    # the kexec ends this process with the old kernel: answer at once while it runs
                    if where == "kexec" and p["poll"]:
                        module.exit_json(changed=False, done=False, vms=j.get("vms", {}), phase=j.get("phase"),
                                         progress=where, update_id=j.get("update_id"),
                                         **dict(_progress(j, j.get("vms", {})), last_step=text))
                    time.sleep(0.5)
                    continue
            vms = dict((n, v) for n, v in j.get("vms", {}).items() if names is None or n in names)
            if vms and all(journal.vm_done(v.get("state")) for v in vms.values()):
                break
            if time.monotonic() > deadline:
                module.fail_json(msg="after %ss, not every VM is restored: %s. See journalctl -u 'guestmemfs-vm@*'"
                                 % (p["timeout"], dict((n, v.get("state")) for n, v in vms.items())), vms=vms)
            if p["poll"] and time.monotonic() - start >= p["poll"]:
                module.exit_json(changed=False, done=False, vms=vms, phase=j.get("phase"), update_id=j.get("update_id"),
                                 **_progress(j, vms))
            time.sleep(1)
        bad = dict((n, v) for n, v in vms.items() if v.get("state") != "restored")
        if bad:
            module.fail_json(msg="not resumed: %s. Their state and memory files are kept; the journal "
                                 "(/var/lib/guestmemfs-liveupdate/journal.json) says why" % "; ".join(
                                     "%s %s (%s)" % (n, v.get("state"), journal.vm_detail(v))
                                     for n, v in sorted(bad.items())), vms=vms, update_id=j.get("update_id"))
        module.exit_json(changed=False, done=True, vms=vms, update_id=j.get("update_id"), phase=j.get("phase"),
                         **dict(_progress(j, vms), booted_release=j.get("booted_release"),
                                booted_as_loaded=j.get("booted_as_loaded"), kexec_proof=_kexec_proof(module, j)))
    module.exit_json(changed=False, vms=j.get("vms", {}), update_id=j.get("update_id"), phase=j.get("phase"),
                     proofs=j.get("proofs") or {})


def _kexec_proof(module, j):
    """What the kernel and systemd say of this boot (bootproof), with the verdict on them; None when
    the journal shows no boot after a kexec. Read here, once every VM is restored: off the blackout path."""
    if j.get("to_boot_id") is None:
        return None
    proof = bootproof.read_proof(module.run_command)
    target = j.get("kexec_target") or {}
    verdict, evidence = bootproof.verdict(proof, target.get("from_release"), target.get("release"), j.get("booted_as_loaded"))
    return dict(proof, verdict=verdict, evidence=evidence)


def _progress(j, vms):
    """Where a restore stands: VMs restored so far, of how many, and the journal's last step."""
    log = j.get("log") or []
    last = (log[-1].get("msg") if log and isinstance(log[-1], dict) else None) or j.get("phase") or "no journal yet"
    return dict(restored=sum(1 for v in vms.values() if v.get("state") == "restored"), total=len(vms), last_step=last)


if __name__ == "__main__":
    main()
