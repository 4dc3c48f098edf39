# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replace the QEMU under running VMs without a kexec, one host-side step shared by the module
``qemu_update`` and ``agent qemu-update``.

Per VM: the save of the kernel update (cpr-reboot to its state file, x-ignore-shared, digests and
journal durable before its QEMU quits), then its unit starts the new binary with ``-incoming
defer`` on the argv it ran with (only the binary differs), the unit verifies its memory (it never
moved: extents plus a sampled content check by default) and resumes it. A new QEMU that does not
start or refuses the state never ran the guest: the VM is restored by the binary it ran before
(kept, with its modules and firmware, as it ran), on its memory verified again.
A VM whose memory does not verify is held, never resumed. Nothing pauses before the new binary is
proven to run, to offer every VM's machine type and to carry cpr-reboot."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    cpr, events, hostupdate, journal, manifest, preservability, virtio_queues, vmdef)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.kernel_build import file_sha256
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.journal import (
    IDLE_PHASES, load_journal, update_journal)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

# The journal's phase while a QEMU update is in flight (no kexec: it starts and ends on one boot).
PHASE = journal.QEMU_UPDATE_PHASE
# The first QEMU whose save and restore the collection drives: cpr-reboot mode (8.2) and file:
# migration URIs (9.0).
MIN_VERSION = (9, 0)
# The executables of the QEMUs the VMs ran before an update, kept for their rollback (0711 like
# its parent: a confined QEMU reaches the binary by its path, lists nothing).
KEPT_DIR = os.path.join(journal.BASE, "qemu")
UNIT = hostupdate.UNIT


class QemuUpdateError(hostupdate.UpdateError):
    """A refusal or a failure of a QEMU update; the message says what it left and how to recover."""


def version(text):
    """(major, minor) from ``qemu-system-* --version``, or None."""
    m = re.search(r"QEMU emulator version (\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def probe(binary, machine_types, run_out):
    """Whether ``binary`` can take VMs of ``machine_types`` -> (problems, facts). Runs it
    (``--version``, ``-machine help``) by ``run_out(argv) -> (rc, stdout, stderr)`` (the module's
    run_command) and changes nothing."""
    facts = {"binary": binary}
    if not os.path.isabs(binary):
        return ["the new QEMU %r is not an absolute path" % binary], facts
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        return ["the new QEMU %s does not exist or is not executable" % binary], facts
    try:
        rc, out, err = run_out([binary, "--version"])
    except (OSError, ValueError) as exc:
        return ["the new QEMU %s does not run: %s" % (binary, exc)], facts
    facts["version_text"] = (out or err).strip().splitlines()[0] if (out or err).strip() else ""
    v = version(out)
    if rc != 0 or v is None:
        return ["the new QEMU %s does not run: `--version` gave rc %d, %r" % (
            binary, rc, (out + err).strip()[:200])], facts
    facts["version"] = "%d.%d" % v
    problems = []
    if v < MIN_VERSION:
        problems.append("the new QEMU %s is version %d.%d: it lacks cpr-reboot with file: migration (QEMU %d.%d "
                        "or newer)" % ((binary,) + v + MIN_VERSION))
    try:
        offered = preservability.target_machines(binary, run_out)
    except (OSError, ValueError) as exc:
        return problems + ["the new QEMU %s does not list its machine types: %s" % (binary, exc)], facts
    facts["machines"] = sorted(offered)
    missing = sorted(set(machine_types) - offered)
    if missing:
        problems.append("the new QEMU %s does not offer machine type%s %s (`-machine help`): the VM%s cannot be "
                        "restored by it" % (binary, "s" if len(missing) > 1 else "", ", ".join(missing),
                                            "s" if len(missing) > 1 else ""))
    return problems, facts


def _running_exe(vm):
    """(pid, sha256) of the one QEMU that maps ``vm``'s memory."""
    pids = sorted(set(pid for pid, _comm, _file in users(vm.mem_path, mapped_only=True)))
    if len(pids) != 1:
        raise QemuUpdateError("%s: %d processes map its memory %s (%s), not one QEMU. Nothing was paused"
                              % (vm.name, len(pids), vm.mem_path, ", ".join(str(p) for p in pids) or "none"))
    return pids[0], file_sha256("/proc/%d/exe" % pids[0])


def _resolve(argv0):
    path = argv0 if os.path.isabs(argv0) else shutil.which(argv0)
    return os.path.realpath(path) if path else None


def data_dirs(binary, run_out):
    """Where ``binary`` finds its firmware (``-L help``) and its modules (PREFIX/lib/*/qemu, PREFIX/lib/qemu):
    a relocatable QEMU finds both relative to itself."""
    prefix = os.path.dirname(os.path.dirname(binary))
    rc, out, _err = run_out([binary, "-L", "help"])
    dirs = [os.path.normpath(line.strip()) for line in out.splitlines() if rc == 0 and line.strip().startswith("/")]
    dirs += glob.glob(os.path.join(prefix, "lib", "*", "qemu")) + [os.path.join(prefix, "lib", "qemu")]
    return prefix, sorted(set(d for d in dirs if os.path.isdir(d) and d.startswith(prefix + "/")))


def _rollback_source(vm, argv0, kept_dir):
    """(kept tree, sha256, kept binary or None, original or None, problem or None) for ``vm``'s
    running QEMU: its kept copy, else the file it was started from if that is still the same."""
    _pid, digest = _running_exe(vm)
    where = os.path.join(kept_dir or KEPT_DIR, digest[:16])
    done = os.path.join(where, "kept.json")
    if os.path.exists(done):
        with open(done) as fh:
            return where, digest, os.path.join(where, json.load(fh)["binary"]), None, None
    original = _resolve(argv0)
    if original and os.path.isfile(original) and file_sha256(original) == digest:
        return where, digest, None, original, None
    return where, digest, None, None, (
        "%s: its QEMU %s was replaced on disk since it started (the running executable is no longer %s) and no "
        "copy of it was kept: nothing could take the VM back if the new QEMU refused it. Keep the running QEMU "
        "before installing a new one in its place (agent qemu-update --keep-only, the playbook's first step), "
        "or install the new QEMU beside it" % (vm.name, argv0, original or argv0))


def keep_qemu(vm, argv0, run_out, kept_dir=None):
    """The QEMU ``vm`` runs now, kept for its rollback -> the kept binary's path. A copy of its
    executable, modules and firmware under ``kept_dir``/SHA256/ with their layout (a relocatable QEMU
    finds them relative to itself): a package that later replaces them in place leaves it intact.
    Refused (QemuUpdateError) when the file the VM was started from is no longer the executable it
    runs and nothing was kept before: then no QEMU could take it back."""
    where, digest, kept, original, problem = _rollback_source(vm, argv0, kept_dir)
    if problem:
        raise QemuUpdateError(problem)
    if kept:
        return kept
    prefix, dirs = data_dirs(original, run_out)
    tmp = where + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    rel = os.path.relpath(original, prefix)
    os.makedirs(os.path.dirname(os.path.join(tmp, rel)))
    shutil.copy2(original, os.path.join(tmp, rel))
    for d in dirs:
        shutil.copytree(d, os.path.join(tmp, os.path.relpath(d, prefix)), symlinks=True)
    with open(os.path.join(tmp, "kept.json"), "w") as fh:
        json.dump({"binary": rel, "from": original, "sha256": digest, "dirs": dirs, "ts": time.time()}, fh)
    for d in [os.path.dirname(where)]:
        if not os.path.isdir(d):
            os.makedirs(d, 0o711)
    for root, _subdirs, _files in os.walk(tmp):  # a confined QEMU reaches them as its user
        os.chmod(root, 0o755)
    os.rename(tmp, where)
    return os.path.join(where, rel)


def update_qemu(run, run_out, binary, names=None, parallel=1, mode="sampled", conf_dir=cpr.CONF_DIR, timeout=120,
                update_id=None, kept_dir=None):
    """Replace the QEMU of every running VM (or of ``names``) by ``binary``, ``parallel`` VMs at a
    time, under the host's update lock, journaled. Returns {update_id, vms: {name: outcome}}; raises
    QemuUpdateError when it refused (nothing paused) or when a VM did not end on the new binary (the
    message names each VM's outcome and what to do). ``run(argv) -> rc`` runs systemctl, ``run_out(argv) ->
    (rc, stdout, stderr)`` the QEMUs' probes (the module's run_command)."""
    if mode not in manifest.MODES:
        raise QemuUpdateError("memory check %r: use one of %s. Nothing was paused" % (mode, ", ".join(manifest.MODES)))
    if not isinstance(parallel, int) or parallel < 1:
        raise QemuUpdateError("parallel must be a whole number of at least 1, not %r. Nothing was paused" % (parallel,))
    update_id = update_id or str(uuid.uuid4())
    with hostupdate.update_lock("a QEMU update"):
        plan = _check(binary, names, conf_dir, run_out, kept_dir=kept_dir)
        if not plan["vms"]:
            return {"update_id": None, "vms": dict((n, "%s already runs %s" % (n, binary))
                                                   for n in plan["probe"]["already"]),
                    "outcomes": dict((n, "already") for n in plan["probe"]["already"]), "kept": {}, "records": {},
                    "probe": plan["probe"]}
        return _update(run, binary, plan, parallel, mode, conf_dir, timeout, update_id, kept_dir)


def check(run_out, binary, names=None, conf_dir=cpr.CONF_DIR):
    """What update_qemu would do, changing nothing -> {vms: {name: old binary}, probe: facts};
    QemuUpdateError when it would refuse."""
    plan = _check(binary, names, conf_dir, run_out, keep=False)
    return {"vms": dict((vm.name, argv[0]) for vm, argv in plan["vms"]), "probe": plan["probe"]}


def keep_all(run_out, names=None, conf_dir=cpr.CONF_DIR, kept_dir=None):
    """Keep the QEMU every running VM (or ``names``) runs now (keep_qemu), before a package replaces
    it in place -> {name: kept binary}. Pauses nothing."""
    out = {}
    for name in names or cpr.vm_names(conf_dir):
        vm = cpr.VM.load(name, conf_dir)
        if cpr.status(vm) == "running":
            out[name] = keep_qemu(vm, hostupdate.started_argv(vm)[0][0], run_out, kept_dir)
    return out


def ring_problems(binary, plan, facts):
    """The VMs of ``plan`` whose virtqueue rings ``binary`` would refuse on load (virtio_queues),
    asked before any pause. Rings that cannot be compared refuse the VM too: pausing it would be a
    blackout the restore may throw away. A device the scratch instance cannot have is noted in ``facts``."""
    problems, allocated = [], {}
    for vm, argv in plan:
        try:
            running = virtio_queues.running_queues(vm.qmp_path)
            if not running:
                continue
            key = (vm.conf["machine"], tuple(virtio_queues.scratch_args(argv)))
            if key not in allocated:
                allocated[key] = virtio_queues.allocated_queues(subprocess.Popen, binary, vm.conf["machine"], argv)
        except virtio_queues.QueueProbeError as exc:
            problems.append("%s: cannot check that the new QEMU can load its virtio rings: %s" % (vm.name, exc))
            continue
        if virtio_queues.unprobed(running, allocated[key]):
            facts.setdefault("rings_unprobed", {})[vm.name] = virtio_queues.unprobed(running, allocated[key])
        rows = virtio_queues.too_large(running, allocated[key])
        if rows:
            problems.append("%s: the new QEMU would refuse its device state: %s (a ring the VM's QEMU holds is larger "
                            "than the new QEMU allocates for that queue; a QEMU of 11.1 or newer refuses such a state "
                            "on load). Leave %s on its QEMU (name the other VMs), or give it a cold boot on the new "
                            "QEMU when it can have one" % (vm.name, virtio_queues.describe(rows), vm.name))
    return problems


def _check(binary, names, conf_dir, run_out, keep=True, kept_dir=None):
    j = load_journal()
    if j.get("phase") not in IDLE_PHASES:
        raise QemuUpdateError("update %s is in flight on this host (phase %s): a QEMU update starts only from an idle "
                              "journal. Nothing was paused; `agent status` says what that update needs"
                              % (j.get("update_id"), j.get("phase")))
    configured = cpr.vm_names(conf_dir)
    unknown = sorted(set(names or ()) - set(configured))
    if unknown:
        raise QemuUpdateError("no VM %s on this host (configured: %s). Nothing was paused" % (
            ", ".join(unknown), ", ".join(configured) or "none"))
    vms = [cpr.VM.load(n, conf_dir) for n in (names or configured)]
    running = [vm for vm in vms if cpr.status(vm) == "running"]
    idle = [vm.name for vm in vms if vm not in running]
    if names and idle:
        raise QemuUpdateError("%s not running: only a running VM's QEMU is replaced. Nothing was paused" % ", ".join(idle))
    if not running:
        raise QemuUpdateError("no running VM among %s. Nothing was paused" % (", ".join(v.name for v in vms) or "none"))
    problems, facts = probe(binary, sorted(set(vm.conf["machine"] for vm in running)), run_out)
    if not problems:
        # A VM already running this very binary is done (a re-run after a dead controller skips it).
        target = file_sha256(binary)
        facts["already"] = sorted(vm.name for vm in running if _running_exe(vm)[1] == target)
        running = [vm for vm in running if vm.name not in facts["already"]]
        if not running:
            return {"vms": [], "probe": facts, "kept": {}}
    for vm in running:
        if os.path.exists(vm.state_path):
            problems.append("%s: a state file already exists (%s): an earlier save was not restored" % (
                vm.name, vm.state_path))
        vm.launch = hostupdate.started_launch(vm)
        problems += [p for p in (hostupdate.state_problem(vm),) if p]
    problems += hostupdate.space_problems(running)
    plan = [(vm, hostupdate.started_argv(vm)[0]) for vm in running]
    problems += [p for p in (_rollback_source(vm, argv[0], kept_dir)[4] for vm, argv in plan) if p]
    if not problems:
        problems += ring_problems(binary, plan, facts)
    if problems:
        raise QemuUpdateError("%s. Nothing was paused; every VM runs on its QEMU as before" % "; ".join(problems))
    # Before any pause: the QEMU each VM runs now, kept for its rollback (or the refusal to begin).
    kept = {}
    if keep:
        for vm, argv in plan:
            kept[vm.name] = keep_qemu(vm, argv[0], run_out, kept_dir)
    return {"vms": plan, "probe": facts, "kept": kept}


def _update(run, binary, plan, parallel, mode, conf_dir, timeout, update_id, kept_dir):
    vms = [vm for vm, _argv in plan["vms"]]
    old = dict((vm.name, argv) for vm, argv in plan["vms"])
    # Before any pause: the binaries the VMs run now, for their rollback.
    kept = plan["kept"]

    def begin(j):
        j["phases"] = {}
        journal.phase_update(PHASE, update_id=update_id, started_ts=time.time(), from_boot_id=journal.boot_id(),
                             saver_pid=os.getpid(), autonomous=False, manifest_mode=mode, qemu_to=binary,
                             qemu_probe=plan["probe"])(j)
        j["unfinished"] = sorted(old)
        j["vms"] = dict((vm.name, {
            "state": "running", "mem_path": vm.mem_path, "state_path": vm.state_path, "launch": vm.launch,
            "argv": vmdef.with_binary(old[vm.name], binary), "argv_source": "recorded, binary %s" % binary,
            "qemu_from": old[vm.name][0], "qemu_to": binary, "qemu_kept": kept[vm.name],
            "rollback_argv": vmdef.with_binary(old[vm.name], kept[vm.name])}) for vm in vms)
    update_journal(begin, msg="QEMU update to %s (%s) of %d VMs, %d at a time" % (
        binary, plan["probe"].get("version"), len(vms), parallel))
    events.emit("record", update_id, detail="QEMU update to %s of %s" % (binary, ", ".join(sorted(old))))
    m = manifest.record(dict((vm.name, vm.mem_path) for vm in vms), mode=mode, content=False)
    manifest.save(m)
    durable = hostupdate.durable_save(m, update_id)
    outcomes = dict((n, ("already", "%s already runs %s" % (n, binary))) for n in plan["probe"].get("already", []))
    pending = list(vms)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                vm = pending.pop(0)
            try:
                outcomes[vm.name] = _one(run, vm, durable, timeout)
            except Exception as exc:  # one VM's surprise must not stop the others
                outcomes[vm.name] = ("failed", "%s: %s: %s; `agent status` says where it stands" % (
                    vm.name, type(exc).__name__, exc))
            update_journal(lambda j, n=vm.name: j.__setitem__("unfinished", [x for x in j.get("unfinished") or []
                                                                             if x != n]))
    threads = [threading.Thread(target=worker) for _n in range(min(parallel, len(vms)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hostupdate.finish_if_done(conf_dir)
    records = dict((n, v) for n, v in (load_journal().get("vms") or {}).items() if n in old)
    out = {"update_id": update_id, "records": records, "vms": dict((n, o[1]) for n, o in outcomes.items()),
           "outcomes": dict((n, o[0]) for n, o in outcomes.items()), "kept": kept, "probe": plan["probe"]}
    if any(o[0] not in ("updated", "already") for o in outcomes.values()):
        err = QemuUpdateError("QEMU update %s did not bring every VM to %s: %s" % (
            update_id, binary, "; ".join(o[1] for _n, o in sorted(outcomes.items()))), update_id=update_id)
        err.result = out
        raise err
    return out


def _start(run, vm):
    """The VM's unit, started again on its state (vm_run verifies and starts the journaled argv with
    -incoming defer, vm_restore loads the state and resumes) -> the VM's journal record after it."""
    hostupdate.wait_unmapped([vm], hostupdate.QUIT_WAIT_S)
    run(["systemctl", "stop", UNIT % vm.name])  # the old QEMU's unit, inactive once its QEMU quit
    rc = run(["systemctl", "start", UNIT % vm.name])
    rec = load_journal().get("vms", {}).get(vm.name, {})
    return rc, rec


def _one(run, vm, durable, timeout):
    """One VM onto the new binary -> (outcome, text): updated, not_updated (still on its old QEMU,
    never paused for long), rolled_back, held or failed."""
    name = vm.name
    update_journal(journal.set_vm(name, state="saving"), msg="%s saving for the QEMU update" % name)
    try:
        cpr.save(vm, timeout=timeout, before_quit=durable, run=run)
    except Exception as exc:  # cpr.save resumed it on its QEMU
        now = cpr.status(vm)
        update_journal(journal.set_vm(name, state="running" if now == "running" else "down (%s)" % now,
                                      error=str(exc), rolled_back=True), msg="%s: save failed: %s" % (name, exc))
        events.emit("failure", journal.load_journal().get("update_id"), name, outcome="failed",
                    detail="saving failed: %s" % exc)
        if now == "running":
            return "not_updated", "%s not updated: its save failed (%s); it runs on its old QEMU as before" % (name, exc)
        return "failed", ("%s: its save failed (%s) and it is %s; its memory %s is kept: `agent status`, then "
                          "systemctl start %s" % (name, exc, now, vm.mem_path, UNIT % name))
    rc, rec = _start(run, vm)
    if rec.get("state") == "restored":
        update_journal(journal.set_vm(name, qemu=rec.get("qemu_to")), msg="%s resumed on %s" % (name, rec.get("qemu_to")))
        return "updated", "%s resumed on %s, blackout %ss" % (name, rec.get("qemu_to"), rec.get("blackout_s"))
    if rec.get("resuming_boot_id"):  # the new QEMU was told to resume it: its state is stale, never loaded again
        return "failed", ("%s: the new QEMU was resuming it and it did not end restored (journal %s: %s): its memory "
                          "may have run past its saved state %s, which is not loaded again. If its QEMU is gone, "
                          "`agent discard-state %s`, then systemctl start %s boots it afresh" % (
                              name, rec.get("state"), rec.get("error"), vm.state_path, name, UNIT % name))
    if rec.get("state") == "held":  # its memory did not verify: resumed by no QEMU
        return "held", ("%s NOT resumed (%s): state %s and memory %s kept, the old QEMU kept as %s. Recover as "
                        "`agent status` says" % (name, (rec.get("verify") or {}).get("detail"), vm.state_path,
                                                 vm.mem_path, rec.get("qemu_kept")))
    # The new QEMU did not start or refused the state: it never ran the guest. Back to the old one.
    why = rec.get("error") or "its unit's start gave rc %s, journal state %s (journalctl -u %s)" % (
        rc, rec.get("state"), UNIT % name)
    events.emit("failure", load_journal().get("update_id"), name, outcome="failed",
                detail="the new QEMU %s did not restore it: %s; rolling back" % (rec.get("qemu_to"), why))
    update_journal(journal.set_vm(name, state="saved", argv=rec.get("rollback_argv"), new_qemu_error=why,
                                  rolled_back=True, error=None),
                   msg="%s: the new QEMU did not restore it (%s): restoring it by the old one %s" % (
                       name, why, rec.get("qemu_kept")))
    rc, rec = _start(run, vm)
    if rec.get("state") == "restored":
        update_journal(journal.set_vm(name, qemu=rec.get("qemu_kept")))
        return "rolled_back", ("%s rolled back: the new QEMU did not restore it (%s); it resumed on its old QEMU %s "
                               "(kept as %s), on verified memory" % (name, why, rec.get("qemu_from"), rec.get("qemu_kept")))
    return "failed", ("%s NOT resumed: the new QEMU did not restore it (%s) and neither did the old one (journal state "
                      "%s: %s). State %s, memory %s and the old QEMU %s are kept: journalctl -u %s, then agent verify "
                      "%s and systemctl start %s" % (name, why, rec.get("state"), rec.get("error") or (
                          rec.get("verify") or {}).get("detail"), vm.state_path, vm.mem_path, rec.get("qemu_kept"),
                          UNIT % name, name, UNIT % name))
