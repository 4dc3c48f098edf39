"""The host update's safety against stand-in QEMUs (issue 19): a disk that fills during the save, two
saves at once, a verdict from an earlier boot, a power loss during the save, corrupt journal or
manifest, and the smaller holes (migrate_cancel, monotonic deadlines, agent verify and
discard-state, guestmemfs sizes). No test reaches a real QEMU, reboot, kexec or mount."""

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    agent, cpr, events, hostupdate, journal, manifest, qmp)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.journal import next_step
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMPError

BOOT_A, BOOT_B = "boot-a", "boot-b"
MiB = 1024 * 1024


class FakeQEMU(object):
    """One stand-in QEMU: its run state and the QMP commands it was sent, in order."""

    def __init__(self, name):
        self.name = name
        self.status = "running"
        self.commands = []
        self.fail_migrate = None  # an error-desc: the migration ends "failed"
        self.on_cmd = None  # called (execute) before each command is answered

    def event(self, name, **data):
        now = time.time()
        return {"event": name, "data": data, "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}


class FakeQMP(object):
    """Stands in for qmp.QMP: answers from the FakeQEMU registered for its socket path."""
    qemus = {}

    def __init__(self, path, timeout=30.0):
        self.path = path
        self.qemu = self.qemus.get(path)
        self.events = []

    def connect(self, wait=0.0):
        if self.qemu is None or self.qemu.status is None:
            raise QMPError("cannot connect to QMP %s: [Errno 111] Connection refused" % self.path)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cmd(self, execute, **args):
        q = self.qemu
        if q.status is None:
            raise QMPError("QMP %s closed the connection" % self.path)
        q.commands.append(execute)
        if q.on_cmd:
            q.on_cmd(execute)
        if execute == "query-status":
            return {"status": q.status}
        if execute == "stop":
            q.status = "paused"
            self.events.append(q.event("STOP"))
        elif execute == "migrate":
            if q.fail_migrate:
                q.status = "paused"
                self.events.append(q.event("MIGRATION", status="failed"))
            else:
                with open(args["uri"][len("file:"):], "w") as fh:
                    fh.write("device state of %s" % q.name)
                q.status = "postmigrate"
                self.events.append(q.event("MIGRATION", status="completed"))
        elif execute == "query-migrate":
            return {"status": "failed", "error-desc": q.fail_migrate} if q.fail_migrate else {"status": "completed"}
        elif execute == "migrate-incoming":
            self.events.append(q.event("MIGRATION", status="completed"))
        elif execute == "cont":
            q.status = "running"
            self.events.append(q.event("RESUME"))
        elif execute == "quit":
            q.status = None
        return {}

    def wait_event(self, name, timeout, match=None):
        for i, ev in enumerate(self.events):
            if ev["event"] == name and (match is None or match(ev)):
                return self.events.pop(i)
        raise QMPError("QMP %s: no %s event within %ss" % (self.path, name, timeout))


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Two running VMs (stand-in QEMUs), the journal, manifest, state files and update lock under
    tmp_path; boot id BOOT_A; ``run`` records the systemctl calls."""
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(manifest, "MANIFEST_PATH", str(tmp_path / "manifest.json"))
    boot = {"id": BOOT_A}
    monkeypatch.setattr(journal, "boot_id", lambda: boot["id"])
    monkeypatch.setattr(manifest.hostinfo, "boot_id", lambda: boot["id"])
    monkeypatch.setattr(hostupdate, "started_argv", lambda vm: (["qemu-system-x86_64", "-name", vm.name], "recorded"))
    monkeypatch.setattr(hostupdate, "ARGV_DIR", str(tmp_path / "argv"))
    monkeypatch.setattr(cpr, "QMP", FakeQMP)
    # No libvirt domain here, and this machine's /proc and /run unread (test_preservability_libvirt.py).
    monkeypatch.setattr(hostupdate, "libvirt_refusals", lambda: [])
    FakeQMP.qemus = {}
    conf = tmp_path / "vms"
    conf.mkdir()
    qemus = {}
    for name in ("vm1", "vm2"):
        mem = tmp_path / (name + ".ram")
        mem.write_bytes(bytes(bytearray(range(256))) * 16 * (1 if name == "vm1" else 2))
        qmp_path = str(tmp_path / (name + ".qmp"))
        (conf / (name + ".json")).write_text(json.dumps({
            "name": name, "memory_bytes": os.path.getsize(str(mem)), "mem_path": str(mem),
            "state": str(tmp_path / "state" / (name + ".state")), "qmp": qmp_path}))
        qemus[name] = FakeQMP.qemus[qmp_path] = FakeQEMU(name)
    calls = []

    def run(argv):
        calls.append(argv)
        return 0
    return types.SimpleNamespace(dir=tmp_path, conf=str(conf), boot=boot, qemus=qemus, calls=calls, run=run)


def save(host, **kw):
    return hostupdate.save_all(host.run, conf_dir=host.conf, **kw)


def state_file(host, name):
    return str(host.dir / "state" / (name + ".state"))


# 1. The journal's or the manifest's disk fills during the save.

def test_disk_full_during_save_resumes_every_vm_and_loses_no_state(host, monkeypatch):
    real_save = manifest.save

    def full(m, path=None):
        if any("digests" in e for e in m["files"].values()):  # once a VM's content is being recorded
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_save(m, path)
    monkeypatch.setattr(manifest, "save", full)
    with pytest.raises(hostupdate.UpdateError) as exc:
        save(host)
    assert "No space left on device" in str(exc.value)
    for name, q in host.qemus.items():
        # The QEMU never quit without its digests on disk: the VM runs where it ran, its state file gone.
        assert q.status == "running" and "quit" not in q.commands, (name, q.commands)
        assert not os.path.exists(state_file(host, name))
    assert journal.load_journal()["phase"] == "rolled_back"
    # The events say it too: each VM's failure, then the rollback (docs/metrics.md).
    with open(events.EVENTS) as fh:
        evs = [json.loads(line) for line in fh]
    fails = [(e["vm"], e["outcome"]) for e in evs if e["step"] == "failure"]
    assert sorted(fails) == [("vm1", "failed"), ("vm2", "failed")], evs
    assert all("No space left on device" in e["detail"] for e in evs if e["step"] == "failure")
    assert [e["step"] for e in evs if e["vm"] is None] == ["record", "rollback"]


def test_any_exception_after_the_pause_rolls_back(host, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("sync failed")
    monkeypatch.setattr(hostupdate.os, "sync", boom)
    with pytest.raises(hostupdate.UpdateError) as exc:
        save(host)
    assert "sync failed" in str(exc.value) and "restored on this kernel" in str(exc.value)
    j = journal.load_journal()
    assert j["phase"] != "saving"
    # Both were saved: their units restore them on verified memory.
    assert sorted(c[2] for c in host.calls) == [hostupdate.UNIT % "vm1", hostupdate.UNIT % "vm2"]
    assert all(j["vms"][n]["state"] == "restoring" for n in ("vm1", "vm2"))


def test_free_space_is_checked_before_anything_pauses(host, monkeypatch):
    monkeypatch.setattr(hostupdate, "free_bytes", lambda path: 4096)
    with pytest.raises(hostupdate.UpdateError) as exc:
        save(host)
    assert "free" in str(exc.value) and "Nothing was paused" in str(exc.value)
    assert all("stop" not in q.commands for q in host.qemus.values())


def test_the_saves_time_limit_follows_the_vms_memory(host):
    small = hostupdate.save_time_limit(1 * 1024 ** 3)
    big = hostupdate.save_time_limit(512 * 1024 ** 3)
    assert small >= 300 and big > small + 2000
    assert hostupdate.save_time_limit_of(host.conf) == hostupdate.save_time_limit(4096 + 8192)
    play = open(os.path.join(os.path.dirname(__file__), "..", "..", "playbooks", "liveupdate.yml")).read()
    assert "save_time_limit" in play


# 2. Two saves at once on one host.

def test_a_second_save_while_one_runs_is_refused(host):
    with hostupdate.update_lock("a save of another update"):
        with pytest.raises(hostupdate.UpdateError) as exc:
            save(host)
        assert "another update step" in str(exc.value) and "a save of another update" in str(exc.value)
        err = hostupdate.kexec_now(host.run, conf_dir=host.conf)
        assert err and "another update step" in err
    assert all("stop" not in q.commands for q in host.qemus.values())


def test_a_save_starts_only_from_an_idle_journal(host):
    journal.update_journal(lambda j: j.update(phase="saved", update_id="other", from_boot_id=BOOT_A,
                                              vms={"vm1": {"state": "saved"}}))
    with pytest.raises(hostupdate.UpdateError) as exc:
        save(host)
    assert "update other" in str(exc.value) and "phase saved" in str(exc.value)
    assert all("stop" not in q.commands for q in host.qemus.values())
    assert journal.load_journal()["update_id"] == "other"


def test_a_rescue_restores_only_its_own_update(host, capsys, monkeypatch):
    from conftest import run_main
    from ansible_collections.guestmemfs.liveupdate.plugins.modules import vm_cpr
    journal.update_journal(lambda j: j.update(phase="saved", update_id="theirs", from_boot_id=BOOT_A,
                                              vms={"vm1": {"state": "saved"}}))
    monkeypatch.setattr(hostupdate, "rollback", lambda *a, **kw: pytest.fail("restored another update's VMs"))
    rc, out = run_main(capsys, vm_cpr, {"action": "restore", "update_id": "mine"})
    assert rc == 0 and out["changed"] is False and "theirs" in out["msg"]


# 3. A verdict belongs to its boot; `resuming` is journaled before `cont`.

def test_a_restoring_verdict_of_an_earlier_boot_is_verified_again(host, monkeypatch):
    save(host)
    hostupdate.verify_pending()  # the saving boot's verdict (as a rollback would give)
    assert journal.load_journal()["vms"]["vm1"]["state"] == "restoring"
    with open(str(host.dir / "vm1.ram"), "r+b") as fh:  # the memory changed since
        fh.write(b"\xff")
    host.boot["id"] = BOOT_B
    monkeypatch.setattr(hostupdate.os, "execvp", lambda *a: pytest.fail("restored on an unverified verdict: %r" % (a,)))
    assert hostupdate.vm_run("vm1", conf_dir=host.conf) == 4
    assert journal.load_journal()["vms"]["vm1"]["state"] == "held"


def test_resuming_is_journaled_before_cont(host):
    save(host)
    hostupdate.verify_pending()
    q = host.qemus["vm1"]
    q.status = "inmigrate"
    seen = []
    q.on_cmd = lambda execute: seen.append(journal.load_journal()["vms"]["vm1"]["state"]) if execute == "cont" else None
    assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 0
    assert seen == ["resuming"] and journal.load_journal()["vms"]["vm1"]["state"] == "restored"


def unit_main(tmp_path, agent_s):
    """The VM unit's main process as systemd runs it: the agent (this Python) for ``agent_s``
    seconds - verifying, waiting for NICs - then exec'd into another program, as vm_run becomes QEMU.
    It leaves a file just before the exec."""
    marker = tmp_path / "became-qemu"
    proc = subprocess.Popen([sys.executable, "-c", "import os, sys, time; time.sleep(float(sys.argv[1])); "
                             "open(sys.argv[2], 'w').close(); os.execvp('sleep', ['sleep', '60'])",
                             str(agent_s), str(marker)])
    return proc, marker


def test_the_restore_waits_for_the_units_own_verification(host, monkeypatch, tmp_path):
    # Molecule on the fleet, 2026-12-05: the VM unit is Type=simple, so systemd runs ExecStartPost
    # (vm_restore) as soon as ExecStart (vm_run) is forked; vm_run was still verifying the memory
    # (state "saved"), vm_restore saw no "restoring" and returned 0, and both VMs stayed in
    # -incoming defer, never resumed.
    save(host)
    q = host.qemus["vm1"]
    q.status = "inmigrate"
    monkeypatch.setattr(hostupdate, "RESTORE_WAIT_POLL_S", 0.05)
    main, _marker = unit_main(tmp_path, 60)  # the agent, verifying, for longer than this test
    monkeypatch.setenv("MAINPID", str(main.pid))  # as systemd gives ExecStartPost

    def verify_later():
        time.sleep(0.5)
        hostupdate.verify_pending(["vm1"])
        main.kill()  # here the agent execs QEMU; that the restore waits for the exec is the next test's

    t = threading.Thread(target=verify_later)
    t.start()
    try:
        assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 0
    finally:
        t.join()
        main.kill()
        main.wait()
    assert journal.load_journal()["vms"]["vm1"]["state"] == "restored"


def test_the_restore_waits_while_the_unit_is_still_the_agent_after_its_verdict(host, monkeypatch, tmp_path):
    # vm_run gives its verdict, then waits for the VM's bridge (up to NIC_WAIT_S) before it becomes
    # QEMU: the restore's minute for QEMU's QMP socket starts when the agent has become QEMU, not
    # when the verdict came (a bridge networkd made 77 s into a boot, seen in molecule).
    save(host)
    hostupdate.verify_pending(["vm1"])
    assert journal.load_journal()["vms"]["vm1"]["state"] == "restoring"
    q = host.qemus["vm1"]
    q.status = "inmigrate"
    monkeypatch.setattr(hostupdate, "RESTORE_WAIT_POLL_S", 0.05)
    main, marker = unit_main(tmp_path, 1)
    monkeypatch.setenv("MAINPID", str(main.pid))
    first = []
    q.on_cmd = lambda execute: first.append(marker.exists()) if not first else None
    try:
        assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 0
    finally:
        main.kill()
        main.wait()
    assert first == [True]  # QMP was first spoken to after the agent had become "QEMU"
    assert journal.load_journal()["vms"]["vm1"]["state"] == "restored"


def test_the_restore_reads_the_journal_again_only_when_it_changed(host, monkeypatch, tmp_path):
    # Every VM unit's restore step waits beside its agent; each read the whole journal every 0.2 s,
    # 8 ms a parse on a fleet host (2 VMs; more with more VMs): with 8 VMs verifying, eight of them
    # parsing about 40 times a second on the host's CPUs while it boots. An unchanged journal (the
    # same file, size and time) is not read again, but a read every RESTORE_REREAD_S still comes.
    save(host)
    hostupdate.verify_pending(["vm1"])
    host.qemus["vm1"].status = "inmigrate"
    monkeypatch.setattr(hostupdate, "RESTORE_WAIT_POLL_S", 0.01)
    main, _marker = unit_main(tmp_path, 1.5)  # the agent, waiting for the VM's NICs, then "QEMU"
    monkeypatch.setenv("MAINPID", str(main.pid))
    reads = []
    real = hostupdate.load_journal
    monkeypatch.setattr(hostupdate, "load_journal", lambda *a: reads.append(1) or real(*a))
    try:
        assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 0
    finally:
        main.kill()
        main.wait()
    assert journal.load_journal()["vms"]["vm1"]["state"] == "restored"
    assert len(reads) <= 6, len(reads)  # about 150 polls; a read each before


def test_the_restore_does_not_wait_for_a_verification_that_ended_without_a_verdict(host, monkeypatch):
    save(host)
    monkeypatch.setattr(hostupdate, "RESTORE_WAIT_POLL_S", 0.01)
    main_alive = hostupdate._main_alive
    monkeypatch.setattr(hostupdate, "_main_alive", lambda name: False)  # vm_run exited (refused)
    assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 3
    monkeypatch.setattr(hostupdate, "_main_alive", main_alive)
    monkeypatch.delenv("MAINPID", raising=False)  # run by hand: nothing is verifying, no wait
    assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 3
    assert journal.load_journal()["vms"]["vm1"]["state"] == "saved"  # nothing changed


def test_a_vm_not_started_on_an_earlier_boot_is_not_said_to_stand_on_this_one(host, monkeypatch, capsys):
    # Its agent on this boot died before its verdict (the journal still says not_started, of the
    # boot before): not resumed, and the message says its memory is checked again, not that an old
    # verdict stands.
    save(host)
    journal.update_journal(journal.set_vm("vm1", state="not_started", verified_boot_id=BOOT_A, error="no br0"))
    host.boot["id"] = BOOT_B
    monkeypatch.delenv("MAINPID", raising=False)
    assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 3
    err = capsys.readouterr().err
    assert "verified on boot %s, not this one" % BOOT_A in err and "stands" not in err
    assert journal.load_journal()["vms"]["vm1"]["state"] == "not_started"  # nothing changed


# 4. Power loss during the save.

def _save_cut_short(host, monkeypatch, vm):
    """The save process dies (a power cut, SIGKILL) as ``vm``'s migration starts (VMs saved in
    order, vm1 first); the journal says saving."""
    def cut(execute):
        if execute == "migrate":
            raise KeyboardInterrupt()

    host.qemus[vm].on_cmd = cut
    monkeypatch.setattr(hostupdate.threading, "Thread", _Inline)
    with pytest.raises(KeyboardInterrupt):
        save(host, names=["vm1", "vm2"])
    j = journal.load_journal()
    assert j["phase"] == "saving" and j["vms"][vm]["state"] == "saving"
    return j


def test_power_loss_during_the_save_is_finalised_at_boot(host, monkeypatch):
    # vm1 saved completely, vm2's QEMU was still saving when the power went.
    j = _save_cut_short(host, monkeypatch, "vm2")
    assert j["vms"]["vm1"]["state"] == "saved"
    host.boot["id"] = BOOT_B
    for q in host.qemus.values():
        q.status = None
    # Before the boot-time verify has run (or when it failed): an operator is told, never "wait".
    step, reason = next_step(j, BOOT_B, "7.3.4", "7.3.5")
    assert step == "blocked" and "agent verify" in reason
    hostupdate.verify_pending()  # guestmemfs-verify.service at boot
    j = journal.load_journal()
    assert j["phase"] != "saving" and j["interrupted_save"]["update_id"] == j["update_id"]
    assert j["vms"]["vm1"]["state"] == "restoring"  # saved completely, memory intact: restored by its unit
    assert j["vms"]["vm2"]["state"].startswith("down") and "systemctl start" in j["vms"]["vm2"]["state"]
    assert any("rebooted during the save" in e["msg"] for e in j["log"])
    host.qemus["vm1"].status = "inmigrate"
    assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 0
    assert journal.load_journal()["phase"] == "rolled_back"  # vm1 back, but the update did not happen
    step, reason = next_step(journal.load_journal(), BOOT_B, "7.3.4", "7.3.5")
    assert step == "start", reason


def _killed_before_any_vm_saved(host, monkeypatch):
    """vm1 paused, vm2 not yet paused, neither saved."""
    j = _save_cut_short(host, monkeypatch, "vm1")
    assert all(v["state"] == "saving" for v in j["vms"].values())
    return j


def test_power_loss_before_any_vm_was_saved_ends_the_update_at_boot(host, monkeypatch):
    update_id = _killed_before_any_vm_saved(host, monkeypatch)["update_id"]
    host.boot["id"] = BOOT_B
    for q in host.qemus.values():
        q.status = None
    hostupdate.verify_pending(content=False)  # guestmemfs-verify.service at boot
    j = journal.load_journal()
    assert all(v["state"].startswith("down") for v in j["vms"].values())
    assert j["phase"] == "rolled_back"  # not restored: no kernel was updated, nothing counts as a success
    # No VM is left to restore: the update is over (not "wait" for a restore that never comes), and
    # a controller following it learns that now, not after its time limit.
    step, reason = next_step(j, BOOT_B, "7.3.4", "7.3.5")
    assert step == "start", reason
    where, text = journal.update_progress(j, BOOT_B, update_id)
    assert where == "done", text


def test_a_save_process_killed_before_any_vm_was_saved_is_recovered_once(host, monkeypatch):
    _killed_before_any_vm_saved(host, monkeypatch)

    def dead(_pid):
        return False
    assert next_step(journal.load_journal(), BOOT_A, "7.3.4", "7.3.5", pid_alive=dead)[0] == "rollback"
    out = hostupdate.recover_interrupted_save(host.run, conf_dir=host.conf)  # vm_cpr action=restore
    assert out == {"vm1": "running", "vm2": "running"} and host.qemus["vm1"].status == "running"
    # Every VM runs where it ran: the update is closed, a re-run starts afresh (not "rollback" again).
    j = journal.load_journal()
    assert j["phase"] == "rolled_back"
    step, reason = next_step(j, BOOT_A, "7.3.4", "7.3.5", pid_alive=dead)
    assert step == "start", reason


def test_the_recovery_of_a_killed_save_cancels_its_migration_before_cont(host, monkeypatch):
    # Killed as vm1's migration started: QEMU may still be migrating. A cont while the migration
    # runs is paused again by its end: the VM would be journaled running while it is stopped.
    _killed_before_any_vm_saved(host, monkeypatch)
    hostupdate.recover_interrupted_save(host.run, conf_dir=host.conf)
    cmds = host.qemus["vm1"].commands
    assert "migrate_cancel" in cmds and cmds.index("migrate_cancel") < len(cmds) - 1 - cmds[::-1].index("cont")


def test_a_vm_resuming_when_its_boot_ended_is_held_for_good(host):
    save(host)
    hostupdate.verify_pending()
    journal.update_journal(journal.set_vm("vm1", state="resuming", resuming_boot_id=BOOT_A))
    host.boot["id"] = BOOT_B
    hostupdate.verify_pending()
    hostupdate.verify_pending(["vm1"])  # agent verify vm1 does not lift it either
    v = journal.load_journal()["vms"]["vm1"]
    assert v["state"] == "held" and "agent discard-state vm1" in v["verify"]["detail"]


class _Inline(object):
    """threading.Thread that runs its target at start(), in order (a deterministic save)."""

    def __init__(self, target, args=()):
        self.target, self.args = target, args

    def start(self):
        self.target(*self.args)

    def join(self):
        pass


# 5. Corrupt journal or manifest.

def test_a_corrupt_journal_is_a_clear_error_everywhere(host, capsys, monkeypatch):
    with open(journal.JOURNAL, "w") as fh:
        fh.write('{"phase": "sav')
    monkeypatch.setattr(hostupdate.os, "execvp", lambda *a: pytest.fail("started"))
    os.makedirs(str(host.dir / "state"))
    open(state_file(host, "vm1"), "w").close()
    load = cpr.VM.load
    monkeypatch.setattr(cpr.VM, "load", classmethod(lambda cls, name, conf_dir=None: load(name, host.conf)))
    for argv in (["verify"], ["vm-run", "vm1"], ["vm-restore", "vm1"], ["status"], ["kexec"]):
        rc = agent.main(argv)
        err = capsys.readouterr().err
        assert rc == 8 and journal.JOURNAL in err and "not valid JSON" in err and "Recover" in err, (argv, err)
    with open(journal.JOURNAL) as fh:
        assert fh.read() == '{"phase": "sav'  # kept as found
    from conftest import run_main
    from ansible_collections.guestmemfs.liveupdate.plugins.modules import update_step
    kernel = host.dir / "vmlinuz-7.3.5"
    from conftest import bzimage
    bzimage(kernel, "7.3.5 (x) #1 SMP")
    rc, out = run_main(capsys, update_step, {"kernel": str(kernel)})
    assert rc == 1 and journal.JOURNAL in out["msg"] and "Recover" in out["msg"]


def test_a_corrupt_manifest_is_a_clear_error(host, capsys):
    save(host)
    with open(manifest.MANIFEST_PATH, "w") as fh:
        fh.write("\0\0\0")
    rc = agent.main(["verify"])
    err = capsys.readouterr().err
    assert rc == 8 and manifest.MANIFEST_PATH in err and "not valid JSON" in err
    assert journal.load_journal()["vms"]["vm1"]["state"] == "saved"  # nothing judged on a broken manifest


# 8. The smaller holes.

def test_a_failed_migration_is_cancelled_before_cont(host):
    host.qemus["vm2"].fail_migrate = "No space left on device"
    with pytest.raises(hostupdate.UpdateError):
        save(host)
    cmds = host.qemus["vm2"].commands
    assert "migrate_cancel" in cmds and cmds.index("migrate_cancel") < len(cmds) - 1 - cmds[::-1].index("cont")


def test_qmp_deadlines_do_not_follow_the_wall_clock(monkeypatch):
    a, b = socket.socketpair()
    q = qmp.QMP("/stand-in", timeout=5)
    q.sock = a
    wall = {"t": 1000.0}

    def jumping():  # NTP steps the clock an hour forward at every look
        wall["t"] += 3600
        return wall["t"]
    monkeypatch.setattr(qmp, "time", types.SimpleNamespace(time=jumping, monotonic=time.monotonic, sleep=time.sleep))
    threading.Timer(0.2, lambda: b.sendall(b'{"event": "RESUME", "data": {}}\n')).start()
    try:
        assert q.wait_event("RESUME", 5)["event"] == "RESUME"
    finally:
        a.close()
        b.close()


def test_agent_verify_says_what_it_checked(host, capsys):
    rc = agent.main(["verify", "vm1"])
    out = capsys.readouterr().out
    assert rc != 0 and "vm1" in out and "not checked" in out
    assert agent.main(["verify"]) == 0 and "no saved VM to verify" in capsys.readouterr().out


def test_agent_discard_state_is_journaled(host, capsys, monkeypatch):
    monkeypatch.setattr(cpr, "CONF_DIR", host.conf)
    save(host)
    for q in host.qemus.values():
        q.status = None
    journal.update_journal(journal.set_vm("vm1", state="held", verify={"detail": "content differs"}))
    assert agent.main(["discard-state", "vm1"]) == 0
    out = capsys.readouterr().out
    j = journal.load_journal()
    assert j["vms"]["vm1"]["state"] == "discarded" and not os.path.exists(state_file(host, "vm1"))
    kept = [f for f in os.listdir(str(host.dir / "state")) if f.startswith("vm1.state.discarded")]
    assert kept and kept[0] in out and any("discarded" in e["msg"] for e in j["log"])
    # A VM whose QEMU runs is not discarded under it.
    host.qemus["vm2"].status = "running"
    assert agent.main(["discard-state", "vm2"]) == 5 and os.path.exists(state_file(host, "vm2"))


def test_a_guestmemfs_vm_of_odd_size_can_start_on_its_rounded_file(tmp_path):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend, guestmemfs
    gm = get_backend("guestmemfs")
    mem = tmp_path / "vm1.ram"
    with open(str(mem), "wb") as fh:
        fh.truncate(gm.file_size(17 * MiB))  # what vm_memory creates for 17 MiB
    vm = cpr.VM({"name": "vm1", "memory_bytes": 17 * MiB, "mem_path": str(mem), "backend": "guestmemfs"})
    assert guestmemfs.file_refusal(vm) is None


# The VM units no longer wait for guestmemfs-verify.service: whichever of the boot's agent
# processes comes first records the boot, one at a time.

def test_two_agent_processes_at_boot_record_it_once(host, monkeypatch):
    save(host, names=["vm1", "vm2"])
    assert journal.load_journal()["phase"] == "saved"
    host.boot["id"] = BOOT_B
    real_release = hostupdate._release

    def slow_release():  # between reading the journal and recording the boot: the race's window
        time.sleep(0.5)
        return real_release()
    monkeypatch.setattr(hostupdate, "_release", slow_release)
    children = []
    for _i in range(2):
        pid = os.fork()
        if pid == 0:  # the verify service and a VM unit's vm_run, at the same moment
            code = 1
            try:
                hostupdate.verify_pending(content=False)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in children)
    j = journal.load_journal()
    assert [e["msg"] for e in j["log"] if e["msg"].startswith("booted")] == [
        "booted %s (NOT the loaded kernel) after phase saved" % real_release()]
    assert j["phase"] == "booted" and j["to_boot_id"] == BOOT_B


def test_a_vm_unit_that_starts_first_finalises_a_cut_short_save_before_it_starts_its_vm(host, monkeypatch):
    _save_cut_short(host, monkeypatch, "vm2")  # vm1 saved, vm2 had no complete state
    host.boot["id"] = BOOT_B
    started = []
    monkeypatch.setattr(hostupdate, "_become_qemu", lambda vm, argv, launch, run, conf_dir: started.append(
        (vm.name, journal.load_journal()["vms"][vm.name]["state"])) or 0)
    monkeypatch.setattr(hostupdate, "record_argv", lambda name, argv, launch: None)
    monkeypatch.setattr(cpr.VM, "argv", lambda vm: ["qemu-system-x86_64", "-name", vm.name])
    monkeypatch.setattr(cpr.VM, "cold_launch", lambda vm: None)
    assert hostupdate.vm_run("vm2", conf_dir=host.conf) == 0  # before guestmemfs-verify.service ran
    # its cold start came after the journal said why it has no state to restore, not on "saving"
    assert len(started) == 1 and started[0][0] == "vm2" and started[0][1].startswith("down")
    j = journal.load_journal()
    assert j["phase"] == "booted" and j["to_boot_id"] == BOOT_B and j["interrupted_save"]["found_on_boot_id"] == BOOT_B
