# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of one host's live update, each journaled, shared by the modules (the controller
drives a host) and by the host's own agent (the boot-time restore runs without a controller).
Where an update stands is the journal (module_utils/journal). What a backend does differently
(preserve before the pause, the kexec itself, refusing a start) its Backend does
(module_utils/backends): this file never asks which backend a VM is on.
A VM whose state file exists is never cold-started: it is restored, on verified memory, or held.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys
import threading
import time
import uuid

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, manifest, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import (
    DEFAULT_BACKEND, backend_of, by_backend, get_backend)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import write_json
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.journal import (
    IDLE_PHASES, SAVED_PHASES, VM_FINAL, load_journal, set_phase, update_journal)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cpr import vm_names
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

# The argv each VM was started with (module_utils/vmdef); tests point it at a tree.
ARGV_DIR = vmdef.ARGV_DIR
# The root under which the agent reads the live host's kernel files (kexec_loaded, mounts, KHO):
# tests point it at a tree (tests/unit/conftest.py points it at an empty one for every test).
ROOT = "/"
UNIT = "guestmemfs-vm@%s.service"


class UpdateError(Exception):
    """A step failed; the message says what was left where and how to recover."""


def save_all(run, names=None, mode="full", conf_dir=cpr.CONF_DIR, timeout=120):
    """Save every running VM (in parallel) and record the manifest that gates their restore.

    Extents are recorded before any VM pauses; content once they are stopped. On a failure the
    VMs already saved are restored on this kernel (their units restart them from the state file)
    and UpdateError names each VM's outcome. ``run(argv) -> rc`` runs a command (systemctl)."""
    names = names if names is not None else vm_names(conf_dir)
    vms = [cpr.VM.load(n, conf_dir) for n in names]
    status = dict((vm.name, cpr.status(vm)) for vm in vms)
    running = [vm for vm in vms if status[vm.name] in ("running", "paused")]
    # A VM whose QEMU holds its memory but cannot be saved would die in the kexec: refuse.
    unsaveable = ["%s (QMP status %s; mapped by %s)" % (vm.name, status[vm.name], ", ".join(
        "%s[%d]" % (c, pid) for pid, c, _f in users(vm.mem_path, mapped_only=True)))
        for vm in vms if vm not in running and users(vm.mem_path, mapped_only=True)]
    if unsaveable:
        raise UpdateError("VMs that run but cannot be saved: %s. Nothing was paused; fix or stop them first"
                          % "; ".join(unsaveable))
    if not running:
        raise UpdateError("no running VM to save among %s" % (", ".join(names) or "none"))
    for vm in vms:
        if os.path.exists(vm.state_path):
            raise UpdateError("%s: a state file already exists (%s): an earlier save was not restored "
                              "(journal: %s). Nothing was paused; restore it first (agent verify %s, then "
                              "systemctl start %s)" % (vm.name, vm.state_path,
                                                       load_journal().get("vms", {}).get(vm.name, {}).get("state"),
                                                       vm.name, UNIT % vm.name))
    # Each VM restores with exactly the argv it runs with now (recorded when it started), never one
    # rebuilt from a definition changed since.
    argvs = dict((vm.name, _started_argv(vm)) for vm in running)
    update_id = str(uuid.uuid4())
    tokens = {}
    for backend, vms_of in by_backend(running):
        try:
            tokens.update(backend.before_pause(vms_of, update_id))
        except BackendError as exc:
            raise UpdateError(str(exc))

    def begin(j):
        # A new update: only this boot's preflight carries over from the journal.
        j["phases"] = dict((k, v) for k, v in (j.get("phases") or {}).items()
                           if k == "preflight" and v.get("boot_id") == journal.boot_id())
        journal.phase_update("saving", update_id=update_id, started_ts=time.time(), from_boot_id=journal.boot_id(),
                             saver_pid=os.getpid())(j)
        j["vms"] = dict((vm.name, {"state": "saving", "mem_path": vm.mem_path, "argv": argvs[vm.name][0],
                                   "argv_source": argvs[vm.name][1]}) for vm in running)
    update_journal(begin, msg="saving %d VMs" % len(running))
    m = manifest.record(dict((vm.name, vm.mem_path) for vm in running), mode=mode, content=False)
    for name, token in tokens.items():
        m["files"][name]["luo_token"] = token

    results, errors = {}, {}

    def one(vm):
        try:
            r = cpr.save(vm, timeout=timeout)
            results[vm.name] = r
            update_journal(journal.set_vm(vm.name, state="saved", state_path=vm.state_path, **r))
        except Exception as exc:  # any failure of one VM must not stop the others' rollback
            errors[vm.name] = str(exc)
    threads = [threading.Thread(target=one, args=(vm,)) for vm in running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # The saved VMs' memory is final now: hash it, so that whatever comes next (kexec, or a
    # rollback on this kernel) restores them only on verified memory.
    manifest.add_content(m, names=set(results))
    for name in errors:
        m["files"].pop(name, None)
    manifest.save(m)
    if errors:
        for vm in running:
            if vm.name in errors:
                now = cpr.status(vm)
                update_journal(journal.set_vm(vm.name, state="running" if now == "running" else "down (%s)" % now,
                                              error=errors[vm.name]))
        rolled = rollback(run, sorted(results), conf_dir)
        update_journal(journal.phase_update("rolled_back"), msg="save failed: %s" % errors)
        raise UpdateError("saving failed for %s; those VMs were resumed where they ran. VMs already saved "
                          "were restored on this kernel: %s" % (
                              "; ".join("%s: %s" % kv for kv in sorted(errors.items())), rolled or "none"))
    os.sync()
    update_journal(journal.phase_update("saved", saved_ts=time.time()),
                   msg="saved %d VMs; manifest %s" % (len(running), manifest.MANIFEST_PATH))
    return {"update_id": update_id, "vms": results, "manifest_record_s": m.get("record_s"),
            "manifest_content_s": m.get("content_s")}


def shutdown_for_update(names, run, conf_dir=cpr.CONF_DIR, timeout=300, poll=1.0):
    """Shut down cleanly (the ACPI power button) the VMs an update cannot carry whose policy is
    ``shutdown``: they cold-start after the kexec, their units being enabled. Before anything else
    pauses. UpdateError names a VM that did not stop in time: it still runs, nothing was paused."""
    out = {}
    for name in names:
        vm = cpr.VM.load(name, conf_dir)
        if cpr.status(vm) is None:
            out[name] = "not running"
            continue
        t0 = time.monotonic()
        cpr.powerdown(vm)
        while cpr.status(vm) is not None:
            if time.monotonic() - t0 > timeout:
                raise UpdateError("%s did not shut down within %ds after the power button (its guest ignores ACPI?): "
                                  "it still runs and nothing was paused. Shut it down yourself or give it the "
                                  "policy refuse or skip" % (name, timeout))
            time.sleep(poll)
        run(["systemctl", "stop", UNIT % name])  # the unit may still be stopping after QEMU's exit
        out[name] = "shut down in %.1fs" % (time.monotonic() - t0)

        def note(j, name=name, took=out[name]):
            j.setdefault("shutdown_for_update", {})[name] = {"ts": time.time(), "boot_id": journal.boot_id(), "outcome": took}
        update_journal(note, msg="%s %s for the update (policy shutdown; cold start after it)" % (name, out[name]))
    return out


def _started_argv(vm):
    """(argv, source): the argv ``vm`` was started with as recorded at its start, or, for a VM started
    before argvs were recorded, the one its configuration gives now."""
    argv = vmdef.load_argv(vm.name, ARGV_DIR)
    if argv:
        return argv, "recorded"
    return vm.argv(), "configuration (no argv recorded at start)"


def record_argv(name, argv):
    write_json(vmdef.argv_record_path(name, ARGV_DIR), {"argv": argv, "boot_id": journal.boot_id(), "ts": time.time()})


def rollback(run, names, conf_dir=cpr.CONF_DIR):
    """Restore saved VMs on the running kernel: verify their memory, then start their units (the
    same path as after a kexec: incoming migration, resume). Returns a text per VM."""
    verdicts = verify_pending(names)
    j = load_journal()
    for backend, _vms in by_backend(_configured(conf_dir)):
        backend.abort(j)
    out = []
    for name in names:
        if verdicts.get(name, {}).get("status") not in (None, manifest.OK):
            out.append("%s NOT restored: %s" % (name, verdicts[name]["detail"]))
            continue
        rc = run(["systemctl", "start", UNIT % name])
        out.append("%s %s" % (name, "restored" if rc == 0 else "NOT restored (rc %d): see journalctl -u %s"
                              % (rc, UNIT % name)))
    finish_if_done()
    return ", ".join(out)


def recover_interrupted_save(conf_dir=cpr.CONF_DIR):
    """After a save whose process died half-way: a VM still paused in QEMU is resumed (its memory
    never left this kernel), a VM whose QEMU quit after a complete save counts as saved (restored
    next, on verified memory), a VM with neither is reported down with its memory file kept."""
    out = {}
    for name, v in sorted((load_journal().get("vms") or {}).items()):
        if v.get("state") != "saving":
            continue
        vm = cpr.VM.load(name, conf_dir)
        now = cpr.status(vm)
        if now in ("paused", "postmigrate", "finish-migrate", "running"):
            try:
                if now != "running":
                    cpr.resume(vm)
                state = "running"
            except Exception as exc:
                state = "down (resume failed: %s)" % exc
            if os.path.exists(vm.state_path + ".partial"):
                os.unlink(vm.state_path + ".partial")
        elif os.path.exists(vm.state_path):
            state = "saved"
        else:
            state = "down (QEMU gone, no state file: boot it afresh with systemctl start %s; memory %s kept)" % (
                UNIT % name, vm.mem_path)
        update_journal(journal.set_vm(name, state=state, state_path=vm.state_path),
                       msg="%s after an interrupted save: %s" % (name, state))
        out[name] = state
    return out


def verify_pending(names=None):
    """Verify the memory of every saved VM (or of ``names``) against the manifest, in parallel.
    ``ok`` -> state restoring (its unit may restore it); anything else -> held, never resumed.
    Runs at boot from guestmemfs-verify.service, before any VM unit starts."""
    j = load_journal()
    after_kexec = j.get("phase") in SAVED_PHASES and j.get("from_boot_id") not in (None, journal.boot_id())
    if after_kexec:
        # Whether this boot is the kernel the update loaded, or a cold boot into the default one
        # (a new kernel that panicked, a power cycle): the VMs restore either way, on verified memory.
        target = j.get("kexec_target") or {}
        cmdline = (hostinfo.read_file(ROOT, hostinfo.CMDLINE) or "").strip()
        as_loaded = cmdline == (target.get("cmdline") or "").strip() and _release() == target.get("release")
        set_phase("booted", to_boot_id=journal.boot_id(), booted_release=_release(), booted_as_loaded=as_loaded,
                  msg="booted %s (%s) after phase %s" % (_release(), "the loaded kernel" if as_loaded else
                                                         "NOT the loaded kernel", j.get("phase")))
    pending = [n for n, v in j.get("vms", {}).items()
               if v.get("state") in ("saved", "restore_failed", "held") and (names is None or n in names)]
    m = manifest.load() or {}
    verdicts = {}

    def one(name):
        entry = m.get("files", {}).get(name)
        verdicts[name] = manifest.verify_file(entry) if entry else {
            "status": "no_manifest", "detail": "no manifest entry for %s" % name}
    threads = [threading.Thread(target=one, args=(n,)) for n in pending]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, verdict in verdicts.items():
        if verdict["status"] == manifest.OK:
            update_journal(journal.set_vm(name, state="restoring", verify=verdict, verified_ts=time.time()),
                           msg="%s verified" % name)
        else:
            update_journal(journal.set_vm(name, state="held", verify=verdict),
                           msg="%s held: %s" % (name, verdict["detail"]))
    if after_kexec:
        set_phase("verified", msg="verified: %s" % ", ".join(
            "%s %s" % (n, v["status"]) for n, v in sorted(verdicts.items())))
        finish_if_done()
    return verdicts


def _release():
    return os.uname()[2]


def finish_if_done(conf_dir=cpr.CONF_DIR):
    """Close the update once every VM of it is final: ``restored`` on a new boot, ``rolled_back``
    on the boot it saved on, ``held`` when any VM was not resumed."""
    def fn(j):
        vms = j.get("vms") or {}
        if not vms or j.get("phase") in IDLE_PHASES:
            return
        if any(v.get("state") not in VM_FINAL and v.get("state") != "running"
               and not str(v.get("state", "")).startswith("down") for v in vms.values()):
            return
        if any(v.get("state") in ("held", "restore_failed") for v in vms.values()):
            phase = "held"
        else:
            phase = "restored" if j.get("from_boot_id") != journal.boot_id() else "rolled_back"
        journal.phase_update(phase, finished_ts=time.time())(j)
        j.setdefault("log", []).append({"ts": time.time(), "boot_id": journal.boot_id(), "msg": "phase %s" % phase})
    j = update_journal(fn)
    for backend, _vms in by_backend(_configured(conf_dir)):
        backend.after_update(j)
    return j


def _configured(conf_dir=cpr.CONF_DIR):
    """The VMs configured on this host (those whose configuration reads)."""
    out = []
    for name in vm_names(conf_dir):
        try:
            out.append(cpr.VM.load(name, conf_dir))
        except (IOError, OSError, ValueError):
            continue
    return out


def kexec_now(run, conf_dir=cpr.CONF_DIR):
    """Kexec, only for a host whose every VM is saved on this boot and whose next kernel is loaded:
    a VM still running would die with its memory unsaved. Each backend adds its own refusals and
    does the kexec its way (systemctl kexec, the memfd holder, reboot(2)). Returns an error text, or
    does not return when the kexec started."""
    j = load_journal()
    problems = journal.not_saved(j, journal.boot_id())
    vms = _configured(conf_dir)
    for vm in vms:
        mapped = users(vm.mem_path, mapped_only=True)
        if mapped:
            problems.append("%s's memory is still mapped by %s" % (vm.name, ", ".join(
                "%s[%d]" % (c, pid) for pid, c, _f in mapped)))
    loaded = hostinfo.kexec_loaded(ROOT)
    if loaded is None:
        problems.append("%s cannot be read" % hostinfo.KEXEC_LOADED)
    elif not loaded:
        problems.append("no kernel is loaded for kexec")
    groups = by_backend(vms) or [(get_backend(DEFAULT_BACKEND), [])]
    for backend, vms_of in groups:
        problems += backend.kexec_problems(vms_of, j, ROOT)
    if problems:
        return "not kexecing: " + "; ".join(problems)
    backend, vms_of = groups[0]
    return backend.kexec(vms_of, j, run, ROOT)


def vm_run(name, conf_dir=cpr.CONF_DIR):
    """The VM unit's ExecStart: a cold start, or, with a saved state whose memory verified, QEMU
    with -incoming defer. A VM whose state file exists is never cold-started."""
    vm = cpr.VM.load(name, conf_dir)
    refusal = backend_of(vm).start_refusal(vm, ROOT)
    if refusal:
        sys.stderr.write(refusal[1] + "\n")
        return refusal[0]
    if not os.path.exists(vm.state_path):
        argv = vm.argv()
        record_argv(name, argv)
        os.execvp(argv[0], argv)
    rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") == "restoring":
        # The argv the VM ran with when it was saved (the journal keeps it from the save).
        base = rec.get("argv") or _started_argv(vm)[0]
        record_argv(name, base)
        argv = vmdef.incoming_argv(base)
        os.execvp(argv[0], argv)
    if rec.get("state") == "held":
        sys.stderr.write("%s NOT resumed: %s. State %s and memory %s are kept. Recover: check the backend, "
                         "then restore the memory file from a copy and run `agent verify`, or boot the VM "
                         "afresh after moving the state file away.\n"
                         % (name, rec.get("verify", {}).get("detail"), vm.state_path, vm.mem_path))
        return 4
    sys.stderr.write("%s: state file %s exists but its memory is not verified (journal: %s): not starting. "
                     "Run `agent verify %s` first.\n" % (name, vm.state_path, rec.get("state"), name))
    return 3


def vm_restore(name, conf_dir=cpr.CONF_DIR):
    """The VM unit's ExecStartPost: finish an incoming restore and resume the VM."""
    rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") != "restoring":
        return 0
    vm = cpr.VM.load(name, conf_dir)
    try:
        r = cpr.restore(vm)
    except Exception as exc:
        update_journal(journal.set_vm(name, state="restore_failed", error=str(exc)),
                       msg="%s restore failed: %s" % (name, exc))
        finish_if_done()
        sys.stderr.write("%s: restore failed: %s; state %s and memory %s kept\n" % (name, exc, vm.state_path,
                                                                                    vm.mem_path))
        return 1
    blackout = round(r["resume_ts"] - rec["stop_ts"], 3) if rec.get("stop_ts") else None
    os.rename(vm.state_path, vm.state_path + ".restored")
    update_journal(journal.set_vm(name, state="restored", blackout_s=blackout, to_boot_id=journal.boot_id(), **r),
                   msg="%s resumed, blackout %ss" % (name, blackout))
    finish_if_done()
    return 0
