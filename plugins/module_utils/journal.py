# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The journal of one host's live update (root-only, durable, locked), read and written by the
modules, the host agent and the memfd holder alike.

``{"update_id", "phase", "phases": {phase: {ts, boot_id}}, "vms": {name: {"state", ...}}, "log",
"totals"}`` (``totals``: counters kept across updates - kexecs, endings, the last success - that
the metrics file shows; every change of the journal renders that file again, module_utils/metrics).
The host's phase goes preflight -> saving -> saved -> [handover] -> kexec -> booted -> verified ->
restored (or ``held`` when a VM was not resumed, ``rolled_back`` when the update stopped before
the kexec; ``interrupted`` when the boot-time verify finds a save cut short by a reboot, recorded
in ``interrupted_save``). A VM's state goes running -> saving -> saved -> restoring (for the boot
its memory was verified on) -> resuming (journaled before ``cont``) -> restored, or ends ``held``
(its memory failed verification: not resumed, state and memory files kept), ``restore_failed``,
``not_started`` (its memory verified on ``verified_boot_id``, its unit did not start QEMU: ``error``
says why; the unit's next start restores it on that boot's verdict) or ``discarded`` (an operator
discarded its saved state: ``agent discard-state``).
``next_step`` reads the journal to tell a re-run (after a dead controller) where this host is.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, hostinfo, metrics
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import locked, read_json, write_json

BASE = "/var/lib/guestmemfs-liveupdate"
JOURNAL = os.path.join(BASE, "journal.json")
# Phases in which VMs are saved and the kexec has not yet been confirmed by a new boot.
SAVED_PHASES = ("saved", "handover", "kexec")
# Phases after which a host has no update in flight.
IDLE_PHASES = (None, "preflight", "restored", "rolled_back")
# A QEMU update (module_utils/qemu_update) in flight: VMs saved and restored one by one on one boot.
QEMU_UPDATE_PHASE = "qemu-update"
# Phases whose journal writes (one per VM saved) do not render the metrics file: phase changes do.
QUIET_METRICS_PHASES = ("saving",)
# VM states that are final for one update.
VM_FINAL = ("restored", "held", "restore_failed", "not_started", "discarded")
# Final VM states that leave the VM down, its state kept: an operator must act.
VM_NOT_RESUMED = ("held", "restore_failed", "not_started")


def vm_detail(v):
    """What to say of VM record ``v``: its memory's verdict, or for a VM whose verdict was ok and
    that failed after it (restore_failed, not_started) its error."""
    verdict = (v.get("verify") or {}).get("detail")
    if v.get("state") in ("restore_failed", "not_started"):
        return v.get("error") or verdict
    return verdict or v.get("error")


def vm_done(state):
    """Whether a VM in ``state`` needs nothing more from its update: final, or ``down ...`` (its QEMU
    died with its save, or the host rebooted during it: no state to restore; its unit boots it afresh)."""
    return state in VM_FINAL or str(state or "").startswith("down")


def boot_id():
    """This boot's id (tests replace this function)."""
    return hostinfo.boot_id()


def phase_update(name, **fields):
    """A journal change that records reaching phase ``name`` (with ``fields``)."""
    def fn(j):
        j["phase"] = name
        j.setdefault("phases", {})[name] = {"ts": time.time(), "boot_id": boot_id()}
        j.update(fields)
    return fn


def note(j, msg, boot=None):
    """Add ``msg`` to the journal's log, with the time and the boot (this one unless ``boot``)."""
    j.setdefault("log", []).append({"ts": time.time(), "boot_id": boot or boot_id(), "msg": msg})


def set_phase(phase, msg=None, **fields):
    """Record that this host reached ``phase`` (durably, before the step it guards acts)."""
    return update_journal(phase_update(phase, **fields), msg=msg or "phase %s" % phase)


def next_step(j, boot_id, running_release=None, target_release=None, pid_alive=hostinfo.pid_alive,
              running_build=None, target_build=None):
    """What a run of the live update must do on this host, from its journal alone.

    Returns ``(step, reason)``; step is one of:
    ``start`` (nothing in flight: preflight, save, kexec), ``done`` (already running the target,
    nothing in flight), ``kexec`` (VMs saved on this boot: do not save again, load and kexec),
    ``wait`` (the host is past the kexec: wait for its own restore), ``wait_save`` (a save is still
    running), ``rollback`` (a save died half-way: restore the saved VMs on this kernel) or
    ``blocked`` (VMs held or failed: an operator must look; nothing may act on this host).
    The target is running when its release and, if both are known, its build (``uname -v``) match:
    a rebuild of the same release is a new kernel.
    """
    vms = j.get("vms", {}) or {}
    phase = j.get("phase")
    same_boot = j.get("from_boot_id") == boot_id
    held = sorted(n for n, v in vms.items() if v.get("state") in VM_NOT_RESUMED)
    if held:
        return "blocked", ("VMs not resumed after update %s: %s. Their state and memory files are kept; see "
                           "`agent status`, recover each (held or restore_failed: agent verify NAME, then systemctl "
                           "start guestmemfs-vm@NAME; not_started, its memory verified, its QEMU never started: fix "
                           "what its error says, then systemctl start guestmemfs-vm@NAME) and re-run" % (
                               j.get("update_id"), ", ".join("%s (%s)" % (n, vms[n].get("state")) for n in held)))
    if j.get("autonomous") and same_boot and phase in ("saving",) + SAVED_PHASES and pid_alive(j.get("saver_pid")):
        # The host's own update process (hostupdate.update_host) saves and kexecs by itself.
        return "wait", "the host's update process (pid %s) runs update %s (phase %s): it kexecs by itself" % (
            j.get("saver_pid"), j.get("update_id"), phase)
    if phase in ("saving", QEMU_UPDATE_PHASE):
        if same_boot and pid_alive(j.get("saver_pid")):
            return "wait_save", "a save of update %s is still running (pid %s)" % (
                j.get("update_id"), j.get("saver_pid"))
        if same_boot:
            return "rollback", "the save of update %s stopped half-way: restore its VMs on this kernel" % (
                j.get("update_id"))
        # The boot-time verify finalises such a save (phase interrupted); it has not run, or failed.
        return "blocked", ("the host rebooted during the save of update %s and its boot-time verify has not "
                           "finalised it: see `systemctl status guestmemfs-verify.service`, run `agent verify` "
                           "(each VM saved completely is verified, the others reported down with their memory "
                           "files kept), then re-run" % j.get("update_id"))
    if phase in SAVED_PHASES:
        if same_boot:
            return "kexec", "VMs of update %s are saved on this boot (phase %s): kexec without saving again" % (
                j.get("update_id"), phase)
        return "wait", "the host left the boot it saved on (phase %s): wait for its own restore" % phase
    if phase in ("booted", "verified"):
        return "wait", "the new kernel is restoring the VMs of update %s" % j.get("update_id")
    pending = sorted(n for n, v in vms.items() if v.get("state") not in VM_FINAL + ("running",)
                     and not str(v.get("state", "")).startswith("down"))
    if pending and phase not in ("rolled_back",):
        return "wait", "VMs still pending: %s" % ", ".join(pending)
    if target_release and running_release == target_release:
        if running_build and target_build and running_build != target_build:
            return "start", "running %s build %r; the staged image is build %r of the same release" % (
                running_release, running_build, target_build)
        return "done", "already running %s with nothing in flight" % target_release
    return "start", "no update in flight (phase %s)" % phase


def update_progress(j, boot_id, update_id, pid_alive=hostinfo.pid_alive):
    """Where update ``update_id``, run by the host's own update process (hostupdate.update_host,
    started detached), stands by the journal alone -> (state, text). ``starting``: not in the
    journal yet; ``saving``; ``kexec``: saved on this boot, the process kexecs; ``restoring``: a
    later boot restores the VMs (or ``done`` once every VM is final); ``stopped``: it ended on this
    boot without a kexec (rolled back, held, or its process died), the text says what it left."""
    if j.get("update_id") != update_id:
        return "starting", "update %s has not started yet (the journal holds update %s, phase %s)" % (
            update_id, j.get("update_id"), j.get("phase"))
    phase = j.get("phase")
    vms = j.get("vms") or {}
    if j.get("from_boot_id") == boot_id:
        alive = pid_alive(j.get("saver_pid"))
        last = "; ".join(e.get("msg", "") for e in (j.get("log") or [])[-2:] if isinstance(e, dict))
        if phase == "saving" and alive:
            return "saving", "saving: %d of %d VMs saved" % (
                sum(1 for v in vms.values() if v.get("state") == "saved"), len(vms))
        if phase in SAVED_PHASES and alive:
            return "kexec", "every VM saved, the host's update process is kexecing (phase %s)" % phase
        if phase == "saving":
            return "stopped", ("the update process (pid %s) died during the save: re-run, it restores the VMs on "
                               "this kernel (`agent status` says where each is)" % j.get("saver_pid"))
        if phase in SAVED_PHASES:
            return "stopped", ("the update process (pid %s) ended after the save without a kexec (phase %s): "
                               "re-run, it kexecs without saving again or restores the VMs on this kernel (%s)"
                               % (j.get("saver_pid"), phase, last))
        if phase in ("rolled_back", "held", "restored"):
            return "stopped", "the update stopped on this boot before a kexec (phase %s): %s" % (phase, last)
    if vms and all(vm_done(v.get("state")) for v in vms.values()):
        return "done", "every VM is final (phase %s)" % phase
    return "restoring", "the new boot restores the VMs (phase %s): %d of %d restored" % (
        phase, sum(1 for v in vms.values() if v.get("state") == "restored"), len(vms))


# What an operator does about a journal that is not JSON (durable.CorruptFile names the file).
JOURNAL_RECOVERY = (
    "Recover: nothing was changed and every VM's state and memory files are kept (VMs with a state file "
    "stay down, as their verdict cannot be read). Repair the JSON (a write cut short, a full disk?) or "
    "restore it from a copy; `agent status` reads it again once it parses. Do not delete it while a VM "
    "has a state file under /var/lib/guestmemfs-liveupdate/state: the journal says which VMs are saved")


def load_journal(path=None):
    return read_json(path or JOURNAL, {}, recover=JOURNAL_RECOVERY) or {}


def update_journal(fn, path=None, msg=None):
    """Read, change with ``fn(journal)``, write, under a lock: VM units restore in parallel."""
    path = path or JOURNAL
    with locked(path):
        j = load_journal(path)
        before = j.get("phase")
        fn(j)
        if msg:
            note(j, msg)
        write_json(path, j)
        # The metrics file, never raising. While VMs save, every VM's journal write waits for this
        # lock with every VM paused: only the phase's change is rendered then, not each VM's.
        if j.get("phase") != before or j.get("phase") not in QUIET_METRICS_PHASES:
            metrics.refresh(j)
        return j


def count(j, name, key=None, ts_name=None):
    """Add one to the journal's lasting counter ``name`` (``totals``, kept across updates for the
    metrics), or to its ``key`` entry; record the time as ``ts_name`` too when given."""
    totals = j.setdefault("totals", {})
    if key is None:
        totals[name] = int(totals.get(name) or 0) + 1
    else:
        by = totals.setdefault(name, {})
        by[key] = int(by.get(key) or 0) + 1
    if ts_name:
        totals[ts_name] = time.time()


def set_vm(name, **fields):
    """A journal change that updates VM ``name``'s record with ``fields``."""
    def fn(j):
        j.setdefault("vms", {}).setdefault(name, {}).update(fields)
    return fn


def not_saved(j, boot_id):
    """Why journal ``j`` does not say that every VM of its update is saved on boot ``boot_id`` with
    its state file: what a kexec now would lose ([] when every VM is saved)."""
    problems = []
    if j.get("phase") not in SAVED_PHASES or j.get("from_boot_id") != boot_id:
        problems.append("the journal's phase is %s (boot %s), not saved on this boot" % (
            j.get("phase"), j.get("from_boot_id")))
    for name, v in sorted((j.get("vms") or {}).items()):
        if v.get("state") != "saved" or not os.path.exists(v.get("state_path") or ""):
            problems.append("%s is %s (state file %s)" % (name, v.get("state"), v.get("state_path")))
    return problems


def at_stake(j=None, state_dir=None):
    """What a destructive step (mkfs on the backend, a cold reboot, dropping a memfd, re-recording
    the manifest) would destroy on this host: an update in flight, each VM the journal has not
    finished with (saving, saved, restoring, held, restore_failed, not_started), each saved state file. [] when
    nothing is at stake. Those steps refuse otherwise: recover or discard each VM first."""
    j = load_journal() if j is None else j
    out = []
    if j.get("phase") not in IDLE_PHASES + ("held",):
        out.append("update %s is in phase %s" % (j.get("update_id"), j.get("phase")))
    for name, v in sorted((j.get("vms") or {}).items()):
        state = str(v.get("state"))
        if state not in ("restored", "running") and not state.startswith("down"):
            out.append("%s is %s in the journal" % (name, state))
    state_dir = state_dir or cpr.STATE_DIR
    try:
        files = sorted(f for f in os.listdir(state_dir) if f.endswith(".state"))
    except OSError:
        files = []
    out += ["%s has a saved state (%s)" % (f[:-len(".state")], os.path.join(state_dir, f)) for f in files]
    return out
