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

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine, cpr, cpu_quota, manifest, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import events, hostinfo, journal, proofs, sd_notify
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import preservability as pres
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import (
    DEFAULT_BACKEND, backend_of, by_backend, get_backend)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile, read_json, write_json
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.journal import (
    IDLE_PHASES, SAVED_PHASES, load_journal, update_journal)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cpr import vm_names
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

# The argv each VM was started with (module_utils/vmdef); tests point it at a tree.
ARGV_DIR = vmdef.ARGV_DIR
# The root under which the agent reads the live host's kernel files (kexec_loaded, mounts, KHO):
# tests point it at a tree (tests/unit/conftest.py points it at an empty one for every test).
ROOT = "/"
UNIT = cpu_quota.UNIT  # the VM unit's name, defined once


class UpdateError(Exception):
    """A step failed; the message says what was left where and how to recover. ``update_id`` is
    the update the failing step had begun (None when it began none)."""

    def __init__(self, msg, update_id=None):
        Exception.__init__(self, msg)
        self.update_id = update_id


# One host-wide update lock (flock, in /run: gone with the boot), held by a save from its first
# check to its end and by the guarded kexec; between them the journal (phase saved) keeps any
# other save out. Tests point it at a tree (tests/unit/conftest.py).
UPDATE_LOCK = os.path.join(cpr.RUN_DIR, "update.lock")
# Room a save needs beside what it writes per VM: the device state (a few MB measured; VGA memory
# and other device RAM count, so generously), and per GiB of VM memory the manifest's digests.
STATE_ROOM = 64 * 1024 * 1024
MANIFEST_ROOM_PER_CHUNK = 256
# The save's time limit: the migrations, then hashing every VM's memory (full manifest) at a
# pessimistic 100 MB/s.
SAVE_BASE_S = 360
HASH_BYTES_PER_S = 100 * 1024 * 1024


@contextlib.contextmanager
def update_lock(what):
    """Hold the host's update lock for ``what`` (non-blocking): UpdateError names its holder."""
    d = os.path.dirname(UPDATE_LOCK)
    if not os.path.isdir(d):
        os.makedirs(d, 0o700)
    fd = os.open(UPDATE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (IOError, OSError):
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
            raise UpdateError("another update step holds this host's update lock %s (%s): %s refused, nothing "
                              "was paused or changed. Let it finish (agent status shows the journal), then re-run"
                              % (UPDATE_LOCK, holder, what))
        os.ftruncate(fd, 0)
        os.pwrite(fd, ("pid %d, %s" % (os.getpid(), what)).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def free_bytes(path):
    """Bytes root may still write on the filesystem holding ``path`` (or its nearest parent)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _filesystem(path):
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.stat(path).st_dev, path


def space_problems(vms):
    """What the save of ``vms`` would lack on the filesystems of the journal, the manifest and the
    state files (each written beside its old copy first), summed per filesystem; [] when enough."""
    need = {}

    def add(path, nbytes, what):
        dev, where = _filesystem(path)
        n, whats, _w = need.get(dev, (0, [], where))
        need[dev] = (n + nbytes, whats + [what], where)
    jsize = os.path.getsize(journal.JOURNAL) if os.path.exists(journal.JOURNAL) else 0
    add(journal.JOURNAL, 2 * jsize + 64 * 1024 * (1 + len(vms)), "journal")
    add(manifest.MANIFEST_PATH, 2 * sum(64 * 1024 + (vm.memory_bytes // manifest.CHUNK + 1) * MANIFEST_ROOM_PER_CHUNK
                                        for vm in vms), "manifest")
    for vm in vms:
        add(vm.state_path, STATE_ROOM + vm.memory_bytes // 1024, "%s's state" % vm.name)
    out = []
    for _dev, (n, whats, where) in sorted(need.items(), key=lambda kv: kv[1][2]):
        free = free_bytes(where)
        if free < n:
            out.append("%s has %d MiB free, the save needs about %d MiB there (%s)" % (
                where, free // 2 ** 20, -(-n // 2 ** 20), ", ".join(whats)))
    return out


def save_time_limit(memory_bytes):
    """Seconds a save of VMs with ``memory_bytes`` of memory in all may take (its async limit)."""
    return SAVE_BASE_S + -(-int(memory_bytes) // HASH_BYTES_PER_S)


def save_time_limit_of(conf_dir=None):
    """save_time_limit for every VM configured on this host."""
    return save_time_limit(sum(vm.memory_bytes for vm in _configured(conf_dir or cpr.CONF_DIR)))


def _new_update_id():
    # imported here: the VM unit's start (vm_run, on a host still booting) never makes one
    import uuid
    return str(uuid.uuid4())


def save_all(run, names=None, mode="full", conf_dir=cpr.CONF_DIR, timeout=120, update_id=None):
    """Save every running VM (in parallel) and record the manifest that gates their restore.

    Only one update step at a time (the host's update lock), only from an idle journal, only with
    room for journal, manifest and state files. Extents are recorded before any VM pauses; each
    VM's content, and its journal entry, are durable before its QEMU quits. On any failure the VMs
    already saved are restored on this kernel (their units restart them from the state file), the
    others resume, and UpdateError names each VM's outcome. ``run(argv) -> rc`` runs a command
    (systemctl)."""
    with update_lock("a save"):
        return _save_all(run, names, mode, conf_dir, timeout, update_id or _new_update_id())


def update_host(run, names=None, mode="full", conf_dir=cpr.CONF_DIR, timeout=120, update_id=None):
    """The whole critical path of one host's update, on the host, in one process: save every VM
    (pause, migrate, digests and journal durable before each QEMU quits, manifest), sync, then the
    guarded kexec - under one hold of the update lock, with no controller between the first pause
    and the kexec. The controller starts this detached and then only reads the journal. A kexec
    that is refused or does not start restores the saved VMs on this kernel (verified memory) and
    raises UpdateError saying so; a failed save rolls back as save_all does. Returns the save's
    result only when the kexec was started by a way that returns (the journal's phase is kexec)."""
    update_id = update_id or _new_update_id()
    with update_lock("an update (save and kexec)"):
        saved = _save_all(run, names, mode, conf_dir, timeout, update_id, autonomous=True)
        try:
            # Each QEMU was told to quit after its save: the guard refuses while one still maps memory.
            wait_unmapped([cpr.VM.load(n, conf_dir) for n in sorted(saved["vms"])], QUIT_WAIT_S)
            err = _kexec_now(run, conf_dir)
        except Exception as exc:  # the kexec did not happen, whatever stopped it
            err = "%s: %s" % (type(exc).__name__, exc)
        if err is None:
            return saved
        update_journal(lambda j: None, msg="the kexec did not happen: %s" % err)
        events.emit("failure", update_id, outcome="failed", detail="the kexec did not happen: %s" % err)
        try:
            rolled = rollback(run, sorted(saved["vms"]), conf_dir)
        except Exception as exc:
            rolled = "NOT restored (%s: %s): agent verify, then systemctl start %s for each" % (
                type(exc).__name__, exc, UNIT % "NAME")
    raise UpdateError("%s; nothing else changed. VMs saved for it were restored on this kernel: %s. Unload the "
                      "loaded kernel (kexec state=unloaded) and re-run when fixed" % (err, rolled), update_id=update_id)


# How long QEMUs that were told to quit after their save may take to let go of their memory.
QUIT_WAIT_S = 30


def libvirt_refusals():
    """Why this host cannot be updated while libvirt runs QEMU domains on it (the preflight's
    refusal, ``preservability.libvirt_problems``): a kexec would end them with their memory."""
    return [p["detail"] for p in pres.libvirt_problems(hostinfo.libvirt_domains(ROOT))]


def wait_unmapped(vms, timeout, poll=0.05):
    deadline = time.monotonic() + timeout
    while any(users(vm.mem_path, mapped_only=True) for vm in vms) and time.monotonic() < deadline:
        time.sleep(poll)


def _save_all(run, names, mode, conf_dir, timeout, update_id, autonomous=False):
    j = load_journal()
    if j.get("phase") not in IDLE_PHASES:
        raise UpdateError("update %s is in flight on this host (phase %s, saved on boot %s): a save starts only "
                          "from an idle journal. Nothing was paused; `update_step` says what that update needs"
                          % (j.get("update_id"), j.get("phase"), j.get("from_boot_id")))
    libvirt = libvirt_refusals()
    if libvirt:
        raise UpdateError("%s. Nothing was paused" % "; ".join(libvirt))
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
                                                       j.get("vms", {}).get(vm.name, {}).get("state"),
                                                       vm.name, UNIT % vm.name))
    short = space_problems(running)
    if short:
        raise UpdateError("not enough free space for the save: %s. Nothing was paused; free space there and "
                          "re-run" % "; ".join(short))
    # Each VM restores with exactly the argv it runs with now (recorded when it started), never one
    # rebuilt from a definition changed since.
    argvs = dict((vm.name, started_argv(vm)) for vm in running)
    for vm in running:
        vm.launch = started_launch(vm)
    unreachable = [problem for problem in (state_problem(vm) for vm in running) if problem]
    if unreachable:
        raise UpdateError("%s. Nothing was paused" % "; ".join(unreachable))
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
                             saver_pid=os.getpid(), autonomous=autonomous, manifest_mode=mode)(j)
        j["vms"] = dict((vm.name, {"state": "saving", "mem_path": vm.mem_path, "state_path": vm.state_path,
                                   "argv": argvs[vm.name][0], "argv_source": argvs[vm.name][1],
                                   "launch": vm.launch}) for vm in running)
    results, errors = {}, {}
    try:
        update_journal(begin, msg="saving %d VMs" % len(running))
        m = manifest.record(dict((vm.name, vm.mem_path) for vm in running), mode=mode, content=False)
        for name, token in tokens.items():
            m["files"][name]["luo_token"] = token
        manifest.save(m)
        events.emit("record", update_id, detail="manifest %s of %d VMs (%s)" % (manifest.MANIFEST_PATH, len(running), mode),
                    mode=mode, vms=len(running), record_s=m.get("record_s"))
        durable = durable_save(m, update_id)

        def one(vm):
            try:
                results[vm.name] = cpr.save(vm, timeout=timeout, before_quit=durable, run=run)
            except Exception as exc:  # any failure of one VM must not stop the others' rollback
                errors[vm.name] = str(exc)
        threads = [threading.Thread(target=one, args=(vm,)) for vm in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not errors:
            os.sync()
            update_journal(journal.phase_update("saved", saved_ts=time.time()),
                           msg="saved %d VMs; manifest %s" % (len(running), manifest.MANIFEST_PATH))
            events.emit("sync", update_id, detail="every VM saved, the host's filesystems synced")
            return {"update_id": update_id, "vms": results, "manifest_record_s": m.get("record_s"),
                    "manifest_content_s": m.get("content_s")}
    except Exception as exc:  # a full disk, a lost journal: whatever it is, roll back
        errors["the save"] = "%s: %s" % (type(exc).__name__, exc)
    _roll_back_save(run, running, results, errors, conf_dir, update_id)


def durable_save(m, update_id):
    """cpr.save's ``before_quit`` for the VMs of manifest ``m`` (recorded without content): before a
    VM's QEMU quits its memory is final, so hash it, and make the digests and its journal entry
    (saved) durable; a failure here resumes the VM (cpr.save)."""
    lock = threading.Lock()

    def durable(vm, r):
        part = manifest.add_content({"files": {vm.name: dict(m["files"][vm.name])}})
        with lock:
            m["files"][vm.name] = part["files"][vm.name]
            m["content_s"] = max(m.get("content_s") or 0, part["content_s"])
            manifest.save(m)
            update_journal(journal.set_vm(vm.name, state="saved", state_path=vm.state_path, **r))
        # QEMU's own times of the pause and of the end of its migration
        events.emit("pause", update_id, vm.name, ts=r.get("stop_ts"))
        events.emit("save", update_id, vm.name, ts=r.get("saved_ts"), detail=vm.state_path,
                    state_bytes=r.get("state_bytes"), content_s=part.get("content_s"))
    return durable


def _roll_back_save(run, running, results, errors, conf_dir, update_id):
    """After a failed save: resume what is paused, restore what was saved, on this kernel; raise
    UpdateError saying what was left where. Each step is tried even when one before failed (a
    full disk may refuse the journal too)."""
    for name, err in sorted(errors.items()):
        events.emit("failure", update_id, None if name == "the save" else name, outcome="failed",
                    detail="saving failed: %s" % err)
    left = []
    for vm in running:
        if vm.name in results:
            continue
        now = cpr.status(vm)
        if now in ("paused", "postmigrate", "finish-migrate"):
            try:
                cpr.resume(vm, run)
                now = "running"
            except Exception as exc:
                left.append("%s could not be resumed (%s): `agent status`, then resume it over QMP %s" % (
                    vm.name, exc, vm.qmp_path))
        try:
            update_journal(journal.set_vm(vm.name, state="running" if now == "running" else "down (%s)" % now,
                                          error=errors.get(vm.name, errors.get("the save"))))
        except Exception as exc:
            left.append("%s's journal entry not written (%s)" % (vm.name, exc))
    try:
        rolled = rollback(run, sorted(results), conf_dir)
    except Exception as exc:
        rolled = "NOT restored (%s: %s); their state files and the manifest %s are kept: free space on the " \
                 "journal's and manifest's disk, then run vm_cpr action=restore (or agent verify, then systemctl " \
                 "start %s)" % (", ".join(sorted(results)), exc, manifest.MANIFEST_PATH, UNIT % "NAME")
    try:
        update_journal(journal.phase_update("rolled_back"), msg="save failed: %s" % errors)
    except Exception as exc:
        left.append("the journal %s could not record the rollback (%s)" % (journal.JOURNAL, exc))
    raise UpdateError("saving failed (%s); VMs not saved were resumed where they ran. VMs already saved were "
                      "restored on this kernel: %s%s" % (
                          "; ".join("%s: %s" % kv for kv in sorted(errors.items())), rolled or "none",
                          (". Left: " + "; ".join(left)) if left else ""), update_id=update_id)


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


def started_argv(vm):
    """(argv, source): the argv ``vm`` was started with as recorded at its start, or, for a VM started
    before argvs were recorded, the one its configuration gives now."""
    argv = vmdef.load_argv(vm.name, ARGV_DIR)
    if argv:
        return argv, "recorded"
    # Such a VM ran as root (confinement came after argvs were recorded): its argv unconfined.
    return vmdef.build_argv(dict(vm.conf, qemu_user=None), cpr.RUN_DIR), "configuration (no argv recorded at start)"


def started_launch(vm):
    """How ``vm``'s QEMU was launched (vmdef.launch), as recorded at its start; None: as root (an
    argv recorded before confinement, or the opt-out)."""
    try:
        rec = vmdef.load_record(vm.name, ARGV_DIR)
    except vmdef.VMDefError:
        return None
    return (rec or {}).get("launch")


def state_problem(vm):
    """Why a confined QEMU could not write its state file (before anything pauses), or None."""
    if not confine.confined(vm.launch):
        return None
    try:
        uid, gid = confine.ids(vm.launch["user"])
    except confine.ConfineError as exc:
        return "%s: %s" % (vm.name, exc)
    blocked = confine.unreachable(vm.state_path, uid, gid) if os.path.isdir(os.path.dirname(vm.state_path)) \
        else confine.unreachable(os.path.dirname(vm.state_path), uid, gid)
    if blocked:
        return "%s: its QEMU runs as %s and cannot reach its state file %s (directory %s): the qemu_vm role " \
               "makes the state directory 0711" % (vm.name, vm.launch["user"], vm.state_path, blocked)
    return None


# Where this unit's start went, step by step (time.time()): vm_run fills it, its forked step puts it
# in the journal with the restore (_phases). A host's blackout is its slowest VM's.
_STARTED = {}


def _started_at(step):
    _STARTED[step] = time.time()


def _agent_started_at():
    """When this process started, seconds since the kernel's start (/proc/self/stat), or None."""
    try:
        with open("/proc/self/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19]) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _phases(r):
    """{part of the unit's start: seconds} from vm_run's stamps and QEMU's own times (cpr.restore's
    ``r``); None for a restore this process's vm_run did not start (agent vm-restore, by hand)."""
    s = _STARTED
    if not all(k in s for k in ("agent", "run", "run_mono", "verified", "nics", "exec")) or s["agent"] is None:
        return None

    def took(a, b):
        return round(max(0.0, b - a), 3)
    return {"agent_started_at_s": round(s["agent"], 3),  # since the kernel's start
            "imports_s": took(s["agent"], s["run_mono"]),  # the unit's sandbox, Python, the agent's imports
            "verify_s": took(s["run"], s["verified"]),  # the boot's record, this VM's memory check
            "nic_wait_s": took(s["verified"], s["nics"]),  # its bridges and taps
            "qemu_up_s": took(s["exec"], r["restore_started_ts"]),  # fork, exec, QEMU answering on QMP
            "load_s": took(r["restore_started_ts"], r["loaded_ts"]),  # its device state loaded
            "resume_s": took(r["loaded_ts"], r["resume_ts"])}  # cont -> RESUME


def record_argv(name, argv, launch=None):
    write_json(vmdef.argv_record_path(name, ARGV_DIR),
               {"argv": argv, "launch": launch, "boot_id": journal.boot_id(), "ts": time.time()})


def _wait_for_nics(vm, launch, verified=False):
    """None once the interfaces the VM's NICs need exist; else the exit code of a VM not started."""
    try:
        confine.wait_for_interfaces(confine.nic_interfaces(launch, vm.conf))
    except confine.ConfineError as exc:
        return _not_started(vm, "%s. Its memory %s and any saved state are kept; once the interface exists, start "
                            "its unit again" % (exc, vm.mem_path), verified)
    return None


def _become_qemu(vm, argv, launch, run, conf_dir, restoring=False):
    """Become the VM's QEMU (confine.exec_qemu), the rest of the unit's start forked beside it first
    (fork_unit_step: none run by hand); returns an exit code only when it refused."""
    refused = None
    _started_at("exec")
    try:
        refused = fork_unit_step(lambda main: unit_started(vm.name, run, conf_dir, restoring, main))
        confine.exec_qemu(vm, argv, launch)
    except (confine.ConfineError, OSError) as exc:
        why = "%s. Its memory %s and any saved state are kept; fix that, then start its unit again" % (exc, vm.mem_path)
        code = _not_started(vm, why, restoring)
        if refused:
            refused(why)
        return code
    return 0


def _not_started_path(name):
    return os.path.join(os.path.dirname(UPDATE_LOCK), "not-started", vmdef.check_name(name) + ".json")


def _not_started(vm, why, verified=False):
    """vm_run refuses to become QEMU: said, and noted for the unit's restore step (which runs beside
    it and would otherwise wait for a QEMU that never comes): this process, this boot, why. A VM
    ``verified`` for this boot (its update restores it) is journaled ``not_started``: final for the
    update, which ends held at once rather than wait for it, its verdict for this boot kept."""
    sys.stderr.write("%s NOT started: %s\n" % (vm.name, why))
    try:
        write_json(_not_started_path(vm.name), {"pid": os.getpid(), "boot_id": journal.boot_id(), "why": why})
    except OSError as exc:  # the restore then takes the conservative path: restore_failed, verified again
        sys.stderr.write("%s: could not note the refusal for its restore step: %s\n" % (vm.name, exc))
    if verified:
        try:
            update_journal(journal.set_vm(vm.name, state="not_started", error=why, not_started_ts=time.time()),
                           msg="%s NOT started: %s" % (vm.name, why))
            finish_if_done()
        except (OSError, CorruptFile) as exc:  # it stays restoring: its restore step reads the note above
            sys.stderr.write("%s: could not journal the refusal: %s\n" % (vm.name, exc))
    return 9


def _refused_by(name, pid):
    """Why the agent ``pid`` (the unit's main process, this boot) refused to start ``name``, or None."""
    try:
        rec = read_json(_not_started_path(name), default={})
    except CorruptFile:  # a torn note proves nothing: the conservative path (restore_failed)
        return None
    if str(rec.get("pid")) == pid and rec.get("boot_id") == journal.boot_id():
        return rec.get("why") or "refused"
    return None


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
    events.emit("rollback", j.get("update_id"), outcome="ok" if all(o.endswith(" restored") for o in out) else "failed",
                detail="on the running kernel: %s" % (", ".join(out) or "no VM"))
    return ", ".join(out)


def recover_interrupted_save(run, conf_dir=cpr.CONF_DIR):
    """After a save whose process died half-way: a VM still paused in QEMU is resumed (its memory
    never left this kernel) with its CPU quota, a VM whose QEMU quit after a complete save counts as
    saved (restored next, on verified memory), a VM with neither is reported down with its memory
    file kept. ``run(argv) -> rc`` runs systemctl."""
    out = {}
    for name, v in sorted((load_journal().get("vms") or {}).items()):
        if v.get("state") != "saving":
            continue
        vm = cpr.VM.load(name, conf_dir)
        now = cpr.status(vm)
        if now in ("paused", "postmigrate", "finish-migrate", "running"):
            try:
                if now != "running":
                    cpr.resume(vm, run)
                else:  # the saver may have died between the pause, which lifted its quota, and the resume
                    cpu_quota.apply(run, vm.conf)
                state = "running"
            except Exception as exc:
                state = "down (resume failed: %s)" % exc
            for stale in (vm.state_path + ".partial", vm.state_path):  # the VM runs on: any state is stale
                if os.path.exists(stale):
                    os.unlink(stale)
        elif os.path.exists(vm.state_path):
            state = "saved"
        else:
            state = "down (QEMU gone, no state file: boot it afresh with systemctl start %s; memory %s kept)" % (
                UNIT % name, vm.mem_path)
        update_journal(journal.set_vm(name, state=state, state_path=vm.state_path),
                       msg="%s after an interrupted save: %s" % (name, state))
        out[name] = state
    # No VM left saved (each resumed or down): the update is over, or every re-run would find it
    # "saving" and roll back again. With a VM saved, its restore (rollback) closes it.
    finish_if_done(conf_dir)
    return out


# A held VM's verdict that no later verification may lift: it ran past its saved state.
RESUMED_PAST_STATE = "resumed_past_state"
# VM states that carry a verdict on its memory (``verified_boot_id``): it holds on that boot only.
VERIFIED_STATES = ("restoring", "not_started")


@contextlib.contextmanager
def _boot_lock():
    """One of the boot's agent processes at a time records the boot (flock beside the journal)."""
    fd = os.open(journal.JOURNAL + ".boot.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_boot():
    """Once per boot, before this boot starts or restores any VM: finalise a save or a resume that
    the end of an earlier boot cut short, and record the boot. Whichever of the boot's agent
    processes comes first does it (guestmemfs-verify.service, or a VM unit's vm_run: the VM units
    start right after the backend's mount, not after that service); the others, one at a time,
    find it done. -> the journal."""
    with _boot_lock():
        return _record_boot()


def _record_boot():
    j = load_journal()
    m = manifest.load() or {}  # before any change: a manifest that does not read changes nothing
    boot = journal.boot_id()
    if j.get("phase") in ("saving", journal.QEMU_UPDATE_PHASE) and j.get("from_boot_id") not in (None, boot):
        j = _finalise_interrupted_save(j, m)
    j = _finalise_interrupted_resumes(j)
    after_kexec = j.get("phase") in SAVED_PHASES + ("interrupted",) and j.get("from_boot_id") not in (None, boot)
    if after_kexec:
        # Whether this boot is the kernel the update loaded, or a cold boot into the default one
        # (a new kernel that panicked, a power cycle): the VMs restore either way, on verified memory.
        target = j.get("kexec_target") or {}
        cmdline = (hostinfo.read_file(ROOT, hostinfo.CMDLINE) or "").strip()
        as_loaded = cmdline == (target.get("cmdline") or "").strip() and _release() == target.get("release")

        def booted(j, phase=j.get("phase")):
            journal.phase_update("booted", to_boot_id=boot, booted_release=_release(), booted_as_loaded=as_loaded)(j)
            if as_loaded and phase != "interrupted":
                journal.count(j, "kexecs")
        what = "booted %s (%s) after phase %s" % (
            _release(), "the loaded kernel" if as_loaded else "NOT the loaded kernel", j.get("phase"))
        update_journal(booted, msg=what)
        events.emit("boot", j.get("update_id"), detail=what, release=_release(), as_loaded=as_loaded)
        # A save cut short before any VM was saved leaves nothing to restore: close the update now,
        # or it would wait ("booted") for restores that never come.
        j = finish_if_done()
    return j


def verify_pending(names=None, content=True):
    """Verify the memory of every saved VM (or of ``names``) against the manifest, in parallel.
    ``ok`` -> state restoring, for this boot only (its unit may restore it on this boot); anything
    else -> held, never resumed. First the boot is recorded (record_boot): guestmemfs-verify.service
    does only that (``content=False``); each VM's unit verifies its own memory (vm_run), so a VM
    restores as soon as its own check passed, not after every VM's."""
    j = record_boot()
    if not content:
        return {}
    m = manifest.load() or {}
    boot = journal.boot_id()
    pending = [n for n, v in j.get("vms", {}).items() if (names is None or n in names) and (
        v.get("state") in ("saved", "restore_failed")
        or (v.get("state") == "held" and (v.get("verify") or {}).get("status") != RESUMED_PAST_STATE)
        or (v.get("state") in VERIFIED_STATES and v.get("verified_boot_id") != boot))]
    verdicts = {}

    def one(name):
        entry = m.get("files", {}).get(name)
        if not entry:
            verdicts[name] = {"status": "no_manifest", "detail": "no manifest entry for %s" % name}
        elif entry.get("mode") != "extents" and "digests" not in entry:
            verdicts[name] = {"status": "no_digests", "detail": "the manifest has no content digests for %s (its save "
                              "stopped before recording them): its memory cannot be verified" % name}
        else:
            verdicts[name] = manifest.verify_file(entry)
    threads = [threading.Thread(target=one, args=(n,)) for n in pending]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, verdict in verdicts.items():
        if verdict["status"] == manifest.OK:
            update_journal(journal.set_vm(name, state="restoring", verify=verdict, verified_ts=time.time(),
                                          verified_boot_id=boot), msg="%s verified" % name)
        else:
            update_journal(journal.set_vm(name, state="held", verify=verdict),
                           msg="%s held: %s" % (name, verdict["detail"]))
        events.emit("verify", j.get("update_id"), name, outcome="ok" if verdict["status"] == manifest.OK else "failed",
                    detail=verdict.get("detail"), verdict=verdict["status"], mode=verdict.get("mode"))
    if verdicts:
        update_journal(_verified_when_none_waits)
        finish_if_done()
    return verdicts


def _verified_when_none_waits(j):
    """Phase ``verified`` once this boot gave every VM of the update its verdict: each VM's unit
    verifies its own VM, so the last of them (not the first call after the kexec) gets there."""
    if j.get("phase") not in SAVED_PHASES + ("booted",) or j.get("from_boot_id") in (None, journal.boot_id()):
        return
    vms = j.get("vms") or {}
    if any(v.get("state") == "saved" for v in vms.values()):
        return
    journal.phase_update("verified")(j)
    journal.note(j, "verified: %s" % ", ".join(
        "%s %s" % (n, (v.get("verify") or {}).get("status")) for n, v in sorted(vms.items())))


def _finalise_interrupted_save(j, m):
    """A save that the end of its boot cut short (power loss, reset, a kernel panic): each VM's
    outcome from what is on disk. Saved (state file and digests complete): verified next, restored
    on intact memory. A state file without digests: held. No state file: down, its memory file
    kept, its unit boots it afresh. Phase ``interrupted``; ``interrupted_save`` says what it left."""
    boot = journal.boot_id()
    outcome = {}

    def fn(j):
        for name, v in sorted((j.get("vms") or {}).items()):
            if v.get("state") != "saving":
                outcome[name] = v.get("state")
                continue
            state_path = v.get("state_path") or os.path.join(cpr.STATE_DIR, name + ".state")
            entry = m.get("files", {}).get(name) or {}
            complete = entry and (entry.get("mode") == "extents" or "digests" in entry)
            if os.path.exists(state_path) and complete:
                v["state"] = "saved"
            elif os.path.exists(state_path):
                v["state"] = "held"
                v["verify"] = {"status": "no_digests", "detail": "the save stopped before %s's digests were recorded: "
                               "state file %s kept, its memory cannot be verified. Recover: agent discard-state %s, "
                               "then systemctl start %s (it boots afresh)" % (name, state_path, name, UNIT % name)}
            else:
                v["state"] = ("down (the host rebooted during the save of update %s on boot %s: no complete state; "
                              "memory file %s kept; its unit boots it afresh, or systemctl start %s)"
                              % (j.get("update_id"), j.get("from_boot_id"), v.get("mem_path"), UNIT % name))
            outcome[name] = v["state"]
        j["interrupted_save"] = {"update_id": j.get("update_id"), "saved_on_boot_id": j.get("from_boot_id"),
                                 "found_on_boot_id": boot, "ts": time.time(), "vms": dict(outcome)}
        journal.phase_update("interrupted")(j)
        journal.note(j, "the host rebooted during the save of update %s: %s" % (j.get("update_id"), "; ".join(
            "%s %s" % kv for kv in sorted(outcome.items()))), boot=boot)
    return update_journal(fn)


def _finalise_interrupted_resumes(j):
    """A VM journaled ``resuming`` on an earlier boot may have run past its saved state: held for
    good (never loaded again); the recovery is to discard that state."""
    boot = journal.boot_id()
    stale = [n for n, v in (j.get("vms") or {}).items()
             if v.get("state") == "resuming" and v.get("resuming_boot_id") != boot]
    for name in stale:
        rec = j["vms"][name]
        detail = ("%s was resuming on boot %s when that boot ended: its memory may have run past its saved state %s, "
                  "which must not be loaded again. Recover: agent discard-state %s, then systemctl start %s (it boots "
                  "afresh)" % (name, rec.get("resuming_boot_id"), rec.get("state_path"), name, UNIT % name))
        j = _held_past_state(name, detail, "%s held: resuming interrupted" % name)
    return j


def _held_past_state(name, detail, msg, **fields):
    """VM ``name`` held for good: its memory may have run past its saved state, which is never
    verified or loaded again (verify_pending leaves it out). -> the journal."""
    return update_journal(journal.set_vm(name, state="held", verify={"status": RESUMED_PAST_STATE, "detail": detail},
                                         **fields), msg=msg)


def _release():
    return os.uname()[2]


def finish_if_done(conf_dir=cpr.CONF_DIR):
    """Close the update once every VM of it is final: ``restored`` on a new boot, ``rolled_back``
    on the boot it saved on, ``held`` when any VM was not resumed."""
    def fn(j):
        vms = j.get("vms") or {}
        if not vms or j.get("phase") in IDLE_PHASES:
            return
        if j.get("unfinished") and j.get("from_boot_id") == journal.boot_id() and hostinfo.pid_alive(j.get("saver_pid")):
            return  # a QEMU update's process still decides these VMs' outcome (a rollback may follow)
        if any(not journal.vm_done(v.get("state")) and v.get("state") != "running" for v in vms.values()):
            return
        # A save the end of its boot cut short: its VMs are back, but no kernel was updated.
        interrupted = (j.get("interrupted_save") or {}).get("update_id") == j.get("update_id")
        if any(v.get("state") in journal.VM_NOT_RESUMED for v in vms.values()):
            phase = "held"
        elif any(v.get("rolled_back") for v in vms.values()):
            phase = "rolled_back"  # a QEMU update left a VM on its old QEMU
        elif j.get("phase") == journal.QEMU_UPDATE_PHASE:
            phase = "restored"
        else:
            phase = "restored" if j.get("from_boot_id") != journal.boot_id() and not interrupted else "rolled_back"
        if j.get("phase") == phase:
            return
        # One ending per update for the metrics: the first (a held update's recovery is not another).
        first_ending = j.get("phase") != "held"
        kernel_update = j.get("phase") != journal.QEMU_UPDATE_PHASE and not interrupted \
            and j.get("from_boot_id") != journal.boot_id()
        journal.phase_update(phase, finished_ts=time.time())(j)
        if first_ending:
            journal.count(j, "updates", phase, ts_name="last_success_ts" if phase == "restored" else None)
            found = proofs.remember(j) if kernel_update else None
            if found:
                journal.note(j, "kernel pair %s: %s (%s)" % (found[0], found[1]["result"], found[1]["detail"]))
        journal.note(j, "phase %s" % phase)
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
    does not return when the kexec started. Under the host's update lock: never during a save."""
    try:
        with update_lock("the kexec"):
            err = _kexec_now(run, conf_dir)
    except UpdateError as exc:
        err = "not kexecing: %s" % exc
    if err:
        try:
            update_id = load_journal().get("update_id")
        except Exception:  # a journal that does not read: the refusal says so already
            update_id = None
        events.emit("failure", update_id, outcome="failed", detail=err)
    return err


def _kexec_now(run, conf_dir):
    j = load_journal()
    problems = journal.not_saved(j, journal.boot_id())
    vms = _configured(conf_dir)
    for vm in vms:
        mapped = users(vm.mem_path, mapped_only=True)
        if mapped:
            problems.append("%s's memory is still mapped by %s" % (vm.name, ", ".join(
                "%s[%d]" % (c, pid) for pid, c, _f in mapped)))
    problems += libvirt_refusals()
    loaded = hostinfo.kexec_loaded(ROOT)
    if loaded is None:
        problems.append("%s cannot be read" % hostinfo.KEXEC_LOADED)
    elif not loaded:
        problems.append("no kernel is loaded for kexec")
    groups = by_backend(vms) or [(get_backend(DEFAULT_BACKEND), [])]
    for backend, vms_of in groups:
        problems += backend.kexec_problems(vms_of, j, ROOT)
    if problems:
        events.emit("kexec-requested", j.get("update_id"), outcome="failed", detail="not kexecing: " + "; ".join(problems))
        return "not kexecing: " + "; ".join(problems)
    backend, vms_of = groups[0]
    # Written before the kexec, which syncs the filesystems first (and does not return when it starts).
    events.emit("kexec-requested", j.get("update_id"), detail="kexec into %s via %s" % (
        (j.get("kexec_target") or {}).get("release") or "the loaded kernel", backend.name),
        target_release=(j.get("kexec_target") or {}).get("release"))
    return backend.kexec(vms_of, j, run, ROOT)


def discard_state(name, conf_dir=None):
    """Discard VM ``name``'s saved state on purpose (``agent discard-state``): the state file moves
    aside (kept, never deleted), the journal records it (state ``discarded``, final), and the VM's
    unit boots it afresh. Refused while its QEMU runs or another update step holds the lock.
    Returns (exit code, text)."""
    conf_dir = conf_dir or cpr.CONF_DIR
    try:
        with update_lock("discard-state %s" % name):
            vm = cpr.VM.load(name, conf_dir)
            rec = load_journal().get("vms", {}).get(name, {})
            now = cpr.status(vm)
            if now is not None:
                return 5, ("%s: its QEMU answers (status %s): a state is not discarded under a running VM; nothing "
                           "changed. Stop it first (systemctl stop %s)" % (name, now, UNIT % name))
            if not os.path.exists(vm.state_path):
                return 5, "%s has no saved state (%s does not exist; journal: %s): nothing discarded" % (
                    name, vm.state_path, rec.get("state"))
            kept = "%s.discarded-%d" % (vm.state_path, int(time.time()))
            os.rename(vm.state_path, kept)
            update_journal(journal.set_vm(name, state="discarded", discarded_from=rec.get("state"), discarded_to=kept,
                                          discarded_ts=time.time()),
                           msg="%s: saved state discarded on purpose (was %s), kept as %s" % (
                               name, rec.get("state"), kept))
            finish_if_done(conf_dir)
            return 0, ("%s: saved state discarded (journal state was %s), kept as %s; `systemctl start %s` boots it "
                       "afresh on memory file %s" % (name, rec.get("state"), kept, UNIT % name, vm.mem_path))
    except UpdateError as exc:
        return 5, str(exc)


def vm_run(name, conf_dir=cpr.CONF_DIR, run=None):
    """The VM unit's ExecStart: a cold start, or, with a saved state whose memory verified, QEMU
    with -incoming defer. A VM whose state file exists is never cold-started. Under its unit
    (Type=notify) this process forks the rest of the start (unit_started: the restore, the CPU quota,
    then READY=1) and becomes QEMU: no second agent start per VM. ``run(argv) -> rc`` runs systemctl."""
    _STARTED.clear()
    _STARTED.update(agent=_agent_started_at(), run_mono=time.monotonic())
    _started_at("run")
    run = run or subprocess.call
    vm = cpr.VM.load(name, conf_dir)
    refusal = backend_of(vm).start_refusal(vm, ROOT)
    if refusal:
        sys.stderr.write(refusal[1] + "\n")
        return refusal[0]
    # Before any VM starts on this boot, cold or restored: what the last boot cut short is settled.
    record_boot()
    if not os.path.exists(vm.state_path):
        argv, launch = vm.argv(), vm.cold_launch()
        record_argv(name, argv, launch)
        return _wait_for_nics(vm, launch) or _become_qemu(vm, argv, launch, run, conf_dir)
    rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") == "saved" or (
            rec.get("state") in VERIFIED_STATES and rec.get("verified_boot_id") != journal.boot_id()):
        # its own memory, now (a verdict belongs to the boot it was given on)
        verify_pending([name])
        rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") == "not_started":  # not started earlier on this boot: this start restores it
        rec = update_journal(journal.set_vm(name, state="restoring", error=None),
                             msg="%s: its unit starts again on this boot's verdict" % name)["vms"][name]
    _started_at("verified")
    if rec.get("state") == "restoring":
        # The argv the VM ran with when it was saved (the journal keeps it from the save).
        # How it was launched comes with it: a VM saved before confinement restores as it ran.
        if rec.get("argv"):
            base, launch = rec["argv"], rec.get("launch")
        else:
            base, launch = started_argv(vm)[0], started_launch(vm)
        # Its NICs' bridges and taps after its verdict (a held VM waits for nothing) and while the
        # bridge comes its memory is already verified; the unit's restore (vm_restore) waits as long as
        # this process is the agent.
        refused = _wait_for_nics(vm, launch, verified=True)
        if refused:
            return refused
        _started_at("nics")
        record_argv(name, base, launch)
        return _become_qemu(vm, vmdef.incoming_argv(base), launch, run, conf_dir, restoring=True)
    if rec.get("state") == "held":
        sys.stderr.write("%s NOT resumed: %s. State %s and memory %s are kept. Recover: check the backend, "
                         "then restore the memory file from a copy and run `agent verify`, or boot the VM "
                         "afresh after `agent discard-state %s`.\n"
                         % (name, rec.get("verify", {}).get("detail"), vm.state_path, vm.mem_path, name))
        return 4
    sys.stderr.write("%s: state file %s exists but its memory is not verified (journal: %s): not starting. "
                     "Run `agent verify %s` first.\n" % (name, vm.state_path, rec.get("state"), name))
    return 3


RESTORE_WAIT_POLL_S = 0.2
# The longest the restore's wait trusts an unchanged stat of the journal (same inode, size, time).
RESTORE_REREAD_S = 2.0
# How long vm_restore waits for the QEMU its unit started to answer on QMP (it may die instead).
RESTORE_CONNECT_WAIT_S = 60


def _main_alive(name):
    """Whether the VM unit's main process (vm_run: verifying, then QEMU) still runs (an exited one
    systemd has not reaped yet does not). systemd gives its control processes $MAINPID; run by hand
    (no $MAINPID) nothing is verifying: no wait."""
    pid = os.environ.get("MAINPID", "")
    if not pid.isdigit():
        return False
    try:
        with open("/proc/%s/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _main_exited(name):
    """Whether systemd gave this step a main process ($MAINPID) that has exited."""
    return os.environ.get("MAINPID", "").isdigit() and not _main_alive(name)


def _main_is_agent(name):
    """Whether the VM unit's main process is still this agent (vm_run verifying or waiting for the
    VM's NICs), not yet the QEMU it becomes by exec; False run by hand (no $MAINPID)."""
    pid = os.environ.get("MAINPID", "")
    try:
        return pid.isdigit() and os.readlink("/proc/%s/exe" % pid) == os.readlink("/proc/self/exe")
    except OSError:  # gone, or a zombie
        return False


def _journal_stamp():
    """The journal file's identity and change time: it is replaced whole (durable.write_json)."""
    try:
        st = os.stat(journal.JOURNAL)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _verdict_pending(rec):
    return rec.get("state") == "saved" or (
        rec.get("state") in VERIFIED_STATES and rec.get("verified_boot_id") != journal.boot_id())


def vm_restore(name, run, conf_dir=cpr.CONF_DIR):
    """The VM unit's ExecStartPost: finish an incoming restore and resume the VM; then, and on a cold
    start at once, give it its CPU quota (module_utils/cpu_quota: not before, the restore would run at
    the guest's share of a CPU). ``run(argv) -> rc`` runs systemctl."""
    stamp, read_at = _journal_stamp(), time.monotonic()
    j = load_journal()
    rec, update_id = j.get("vms", {}).get(name, {}), j.get("update_id")
    # The unit is Type=simple: systemd runs this as soon as vm_run is forked, while vm_run may still
    # be verifying the memory. Wait for its verdict rather than take "not restoring" for "nothing to do".
    # ... and, the verdict given, as long as vm_run has not become QEMU (it waits for the VM's NICs):
    # only then does QMP's minute (RESTORE_CONNECT_WAIT_S) start.
    while _main_alive(name) and (_verdict_pending(rec) or (rec.get("state") in VERIFIED_STATES and _main_is_agent(name))):
        time.sleep(RESTORE_WAIT_POLL_S)
        # Read again only once it changed (every VM's restore waits so, on a host still booting);
        # and now and then whatever its stat says.
        now = _journal_stamp()
        if now != stamp or time.monotonic() - read_at >= RESTORE_REREAD_S:
            stamp, read_at = now, time.monotonic()
            j = load_journal()
            rec, update_id = j.get("vms", {}).get(name, {}), j.get("update_id")
    if rec.get("state") == "saved":
        vm = cpr.VM.load(name, conf_dir)
        sys.stderr.write("%s: its memory was not verified (the unit's start ended without a verdict): not resuming. "
                         "State %s and memory %s kept; run `agent verify %s`, then systemctl restart %s\n" % (
                             name, vm.state_path, vm.mem_path, name, UNIT % name))
        return 3
    if rec.get("state") == "not_started" and rec.get("verified_boot_id") == journal.boot_id():
        # nothing ran on its memory
        sys.stderr.write("%s NOT started: %s. Not resumed; its verdict for this boot stands (journal: not_started): "
                         "systemctl start %s restores it\n" % (name, rec.get("error"), UNIT % name))
        return 9
    if rec.get("state") not in VERIFIED_STATES:
        _give_quota(run, cpr.VM.load(name, conf_dir))
        return 0
    vm = cpr.VM.load(name, conf_dir)
    if rec.get("verified_boot_id") != journal.boot_id():
        sys.stderr.write("%s: its memory was verified on boot %s, not this one: not resuming. State %s and memory %s "
                         "kept; run `agent verify %s`, then systemctl restart %s\n" % (
                             name, rec.get("verified_boot_id"), vm.state_path, vm.mem_path, name, UNIT % name))
        return 3

    connect_wait = RESTORE_CONNECT_WAIT_S
    if _main_exited(name):
        why = _refused_by(name, os.environ["MAINPID"])
        if why:  # the agent never became QEMU: nothing ran on the memory verified for this boot
            sys.stderr.write("%s NOT started: %s. Not resumed; its verdict for this boot stands (journal: restoring): "
                             "systemctl start %s restores it\n" % (name, why, UNIT % name))
            return 9
        connect_wait = 0  # QEMU came and went: nothing will answer on its QMP socket
    return _resume(vm, rec, update_id, run, connect_wait, os.environ.get("MAINPID"))


def _resume(vm, rec, update_id, run, connect_wait, main_pid):
    """Feed its saved state to the VM's QEMU (started with -incoming defer on memory verified for
    this boot), resume it, journal it; then its CPU quota. 0, or 1 once journaled restore_failed."""
    name = vm.name
    vm.launch = rec.get("launch")
    told = []

    def resuming(vm):  # from cont on, the VM's memory runs past its saved state
        update_journal(journal.set_vm(name, state="resuming", resuming_boot_id=journal.boot_id()),
                       msg="%s resuming" % name)
        told.append(True)
    try:
        r = cpr.restore(vm, connect_wait=connect_wait, before_cont=resuming)
    except Exception as exc:
        if not connect_wait:
            exc = "its QEMU (the unit's main process %s) exited before its restore: %s" % (main_pid, exc)
        if told:  # cont was sent: held for good, as a resume a boot's end cut short (never verified again)
            detail = ("its QEMU was told to resume it, then its restore failed (%s): the guest may run past its saved "
                      "state %s, which must not be loaded again. If its QEMU still runs (systemctl status %s), that "
                      "is the VM; if not: agent discard-state %s, then systemctl start %s (it boots afresh)" % (
                          exc, vm.state_path, UNIT % name, name, UNIT % name))
            _held_past_state(name, detail, "%s held: %s" % (name, detail), error=str(exc))
        else:
            update_journal(journal.set_vm(name, state="restore_failed", error=str(exc)),
                           msg="%s restore failed: %s" % (name, exc))
        events.emit("failure", update_id, name, outcome="failed", detail="restore failed: %s; state %s and memory %s "
                    "kept" % (exc, vm.state_path, vm.mem_path))
        finish_if_done()
        sys.stderr.write("%s: restore failed: %s; state %s and memory %s kept\n" % (name, exc, vm.state_path,
                                                                                    vm.mem_path))
        return 1
    blackout = round(r["resume_ts"] - rec["stop_ts"], 3) if rec.get("stop_ts") else None
    phases = _phases(r)
    os.rename(vm.state_path, vm.state_path + ".restored")
    update_journal(journal.set_vm(name, state="restored", blackout_s=blackout, to_boot_id=journal.boot_id(),
                                  phases=phases, **r),
                   msg="%s resumed, blackout %ss" % (name, blackout))
    # QEMU's own times: its state loaded, then cont
    events.emit("restore", update_id, name, ts=r.get("loaded_ts"), detail="state %s loaded" % vm.state_path,
                **({"phases": phases} if phases else {}))
    events.emit("resume", update_id, name, ts=r.get("resume_ts"), detail="blackout %ss" % blackout, blackout_s=blackout)
    _give_quota(run, vm)
    finish_if_done()
    return 0


class _UnitMain(object):
    """The unit's main process as the forked step (unit_started) sees it: the agent that becomes
    QEMU. ``pidfd`` (pidfd_open(2)): no pid reused by another process is ever signalled; ``exec_pipe``:
    the read end of a close-on-exec pipe, at EOF once the agent became QEMU (or died), a text if it
    refused (_become_qemu)."""

    def __init__(self, pid, pidfd, exec_pipe):
        self.pid, self.pidfd, self.exec_pipe = pid, pidfd, exec_pipe

    def refused(self):
        """Blocks until the agent became QEMU (None) or refused to (why)."""
        chunks = []
        while True:
            chunk = os.read(self.exec_pipe, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace") or None

    def exited(self):
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return bool(p.poll(0))

    def stop(self):
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except OSError as exc:  # the unit fails at its start's timeout instead
            sys.stderr.write("could not stop QEMU (pid %s): %s\n" % (self.pid, exc))

    def __str__(self):
        return str(self.pid)


def fork_unit_step(step):
    """Under a Type=notify unit (systemd gave $NOTIFY_SOCKET), run ``step(main)`` (a _UnitMain) in a
    process of its own and return ``refused(why)``, which the agent calls if it does not become QEMU
    after all; else None (run by hand, or by a unit written before: its ExecStartPost restores).
    The step is forked twice so that systemd, not QEMU, reaps it; it inherits the agent's imports."""
    if not sd_notify.address():
        return None
    main = os.getpid()
    pidfd = os.pidfd_open(main)
    r, w = os.pipe2(os.O_CLOEXEC)  # w closes at QEMU's exec: the step's EOF
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        code = 70
        try:
            os.close(w)
            if os.fork() == 0:
                try:
                    code = step(_UnitMain(main, pidfd, r))
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            code = 0
        finally:
            os._exit(code)
    os.close(r)
    os.close(pidfd)
    if os.waitpid(child, 0)[1]:  # its own fork failed: no step would restore the VM or say READY
        os.close(w)
        raise OSError("could not fork the unit's restore step")

    def refused(why):
        try:
            os.write(w, why.encode("utf-8", "replace")[:60000])
        finally:
            os.close(w)
    return refused


def unit_started(name, run, conf_dir, restoring, main):
    """The rest of the VM unit's start, beside its main process (fork_unit_step): once the agent is
    QEMU, the restore (with a saved state) and the CPU quota, then READY=1: ``systemctl start``
    returns once the VM runs (the QEMU update relies on it). A restore that failed before ``cont``
    stops QEMU (nothing ran on the memory; the unit fails, as its ExecStartPost made it fail
    before); one that may have resumed the guest never does: READY=1, the journal says what."""
    why = main.refused()
    if why is not None:  # vm_run said it and journaled it; the unit fails with its exit code
        return 9
    vm = cpr.VM.load(name, conf_dir)
    if not restoring:
        _give_quota(run, vm)
        _ready("%s running (started afresh)" % name)
        return 0
    rc, status = 1, None
    try:
        j = load_journal()
        rec = j.get("vms", {}).get(name, {})
        if rec.get("state") not in VERIFIED_STATES or rec.get("verified_boot_id") != journal.boot_id():
            status = "%s: journal state %s, verified on boot %s: not restored by this start" % (
                name, rec.get("state"), rec.get("verified_boot_id"))
        else:
            rc = _resume(vm, rec, j.get("update_id"), run, 0 if main.exited() else RESTORE_CONNECT_WAIT_S, main)
    except Exception as exc:  # a journal that cannot be written, a state file that cannot be renamed
        status = "%s: its restore step failed: %s" % (name, exc)
    if rc == 0:
        _ready("%s restored" % name)
        return 0
    if status:
        sys.stderr.write(status + "\n")
    try:
        resumed = (load_journal().get("vms", {}).get(name, {}).get("resuming_boot_id") == journal.boot_id())
    except Exception:  # cannot tell: never stop a QEMU that may run the guest
        resumed = True
    if resumed:
        sys.stderr.write("%s: its QEMU was told to resume it: left running, not stopped (agent status)\n" % name)
        _ready("%s resumed, its restore step failed: see the journal" % name)
        return rc
    main.stop()  # paused, never resumed: its state and memory stay as they were
    return rc


def _ready(status):
    sd_notify.notify("READY=1\nSTATUS=%s" % status)
    sd_notify.barrier()


def _give_quota(run, vm):
    err = cpu_quota.apply(run, vm.conf)
    if err:  # never a reason to stop a running VM: its unit would kill QEMU
        sys.stderr.write("%s runs without its CPU quota %s: %s\n" % (vm.name, vm.conf.get("cpu_quota"), err))
