"""The host-side update (issue 20) end to end against real QEMUs on this machine (TCG, the counting
guest): one process saves every VM, records the manifest, syncs and kexecs - the kexec itself is
the only stand-in (reboot(2) raises Kexec here, and a "new boot" is a new boot id) - then the
boot-time verify and each VM's unit restore them, and the guest counts on from where it stopped.
The VM units are stand-ins for systemd that run the agent's own vm-run and the step it forks in this
process, with QEMU started instead of exec'd; start_real_unit runs them as systemd does, in processes
of their own, QEMU exec'd. No test reaches a real reboot, kexec or mount.

This machine's QEMU (7.2) predates cpr-reboot and file: migration (QEMU 9): Older translates those
two, and only those, into what 7.2 has - the same stop, x-ignore-shared migration of the device
state, quit, -incoming defer and cont - so the VMs really stop, save, quit and resume on their
memory files; a QEMU 9 or newer is driven as it is."""

import array
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    agent, cpr, durable, events, hostupdate, journal, luo, manifest, qmp, vmdef)

from counter_guest import counter_guest, read_counter
from unit_stand_in import UnitSteps

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                reason="qemu-system-x86 is installed by scripts/bootstrap")

MiB = 1024 * 1024


def qemu_major():
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"version (\d+)", out).group(1))


class Older(qmp.QMP):
    """QMP to a QEMU older than 9: no cpr-reboot mode (its default mode migrates the same device
    state with x-ignore-shared), no file: URI (exec:cat into the file; the state counts as written
    once cat is done, as file: counts it once QEMU wrote it)."""

    def cmd(self, execute, **args):
        if execute == "migrate-set-parameters" and args.get("mode") == "cpr-reboot":
            return {}
        uri = args.get("uri", "")
        if execute == "migrate" and uri.startswith("file:"):
            path = uri[len("file:"):]
            self.writing = path
            args["uri"] = "exec:cat > %s.older && mv %s.older %s" % (path, path, path)
        if execute == "migrate-incoming" and uri.startswith("file:"):
            args["uri"] = "exec:cat %s" % uri[len("file:"):]
        return qmp.QMP.cmd(self, execute, **args)

    def wait_event(self, name, timeout, match=None):
        ev = qmp.QMP.wait_event(self, name, timeout, match)
        path = getattr(self, "writing", None)
        if name == "MIGRATION" and ev.get("data", {}).get("status") == "completed" and path:
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
        return ev


class Kexec(BaseException):
    """The stand-in for reboot(LINUX_REBOOT_CMD_KEXEC): like the real one, nothing after it runs."""


class Exec(BaseException):
    """The stand-in for os.execvp in a VM unit: QEMU was started, the unit's ExecStart is done."""


@pytest.fixture
def host(tmp_path, monkeypatch, request):
    """Two VMs running the counting guest in real QEMUs (TCG), on memory files under tmp_path; the
    journal, manifest, state files, recorded argvs and the kernel's kexec_loaded in tmp_path too.
    Parametrised indirectly, its value is added to vm2's definition (e.g. a NIC)."""
    vm2_extra = getattr(request, "param", None) or {}
    if qemu_major() < 9:
        monkeypatch.setattr(cpr, "QMP", Older)
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(manifest, "MANIFEST_PATH", str(tmp_path / "manifest.json"))
    monkeypatch.setattr(hostupdate, "ARGV_DIR", str(tmp_path / "argv"))
    boot = {"id": "boot-a"}
    monkeypatch.setattr(journal, "boot_id", lambda: boot["id"])
    monkeypatch.setattr(events, "boot_id", lambda: boot["id"])
    monkeypatch.setattr(manifest.hostinfo, "boot_id", lambda: boot["id"])
    root = tmp_path / "root"
    (root / "sys" / "kernel").mkdir(parents=True)
    (root / "sys" / "kernel" / "kexec_loaded").write_text("1\n")
    monkeypatch.setattr(hostupdate, "ROOT", str(root))
    kexecs = []

    def reboot(cmd):
        kexecs.append(cmd)
        raise Kexec()
    monkeypatch.setattr(luo, "reboot", reboot)
    kernel = tmp_path / "counter.mb"
    kernel.write_bytes(counter_guest())
    conf = tmp_path / "conf"
    conf.mkdir()
    procs = []

    def reap():  # also when the setup below fails half-way: no QEMU outlives its test
        for p in procs:
            p.kill()
            p.wait()
    request.addfinalizer(reap)

    def spawn(prog, argv):
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        raise Exec()
    monkeypatch.setattr(hostupdate.os, "execvp", spawn)
    steps = UnitSteps(procs)  # the unit's step forked beside its agent, run here once QEMU started
    monkeypatch.setattr(hostupdate, "fork_unit_step", steps.fork)

    # CPU quotas as systemd keeps them: the unit file's (its drop-in's CPUQuota=), overridden until
    # the next boot by set-property --runtime (quota[name]); start_quota: each start's, as it began.
    quota, start_quota = {}, {}

    def effective_quota(name):
        if name in quota:
            return quota[name]
        dropin = vmdef.units_dropin(json.loads((conf / (name + ".json")).read_text()))
        found = re.search(r"^CPUQuota=(.*)$", dropin, re.M)
        return found.group(1) if found else None

    def unit(name):
        """systemctl start guestmemfs-vm@NAME: ExecStart (vm-run), then ExecStartPost (vm-restore)."""
        start_quota.setdefault(name, []).append(effective_quota(name))
        try:
            rc = hostupdate.vm_run(name, conf_dir=str(conf), run=run)
        except Exec:
            rc = 0
        return rc or steps.run_step()
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[:3] == ["systemctl", "set-property", "--runtime"]:
            name = argv[3][len("guestmemfs-vm@"):-len(".service")]
            assert argv[3] == "guestmemfs-vm@%s.service" % name and argv[4].startswith("CPUQuota="), argv
            quota[name] = argv[4][len("CPUQuota="):] or None
            calls[-1] = argv + [time.time()]
            return 0
        assert argv[:2] == ["systemctl", "start"] and argv[2].startswith("guestmemfs-vm@"), argv
        return unit(argv[2][len("guestmemfs-vm@"):-len(".service")])
    names = ("vm1", "vm2")
    for name in names:
        mem = tmp_path / (name + ".ram")
        with open(mem, "wb") as fh:  # written out, as the backend's files are (no hole to fill later)
            fh.write(bytes(64 * MiB))
            os.fsync(fh.fileno())
        c = {"name": name, "memory_bytes": 64 * MiB, "mem_path": str(mem), "machine": "q35", "accel": "tcg",
             "kernel": str(kernel), "serial_log": str(tmp_path / (name + ".log")),
             "qmp": str(tmp_path / (name + ".qmp")), "state": str(tmp_path / "state" / (name + ".state"))}
        c.update(vm2_extra if name == "vm2" else {})
        (conf / (name + ".json")).write_text(json.dumps(c))
        assert unit(name) == 0  # a cold start, as the unit does it
    vms = [cpr.VM.load(n, str(conf)) for n in names]
    for vm in vms:
        deadline = time.monotonic() + 60
        while (cpr.status(vm) != "running" or read_counter(vm.mem_path) == 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert read_counter(vm.mem_path) > 0, "%s never counted" % vm.name
    h = type("Host", (), {})()
    h.dir, h.conf, h.boot, h.vms, h.run, h.calls, h.kexecs, h.root = tmp_path, str(conf), boot, vms, run, calls, kexecs, root
    h.quota, h.start_quota = quota, start_quota
    return h


def counting(vm, after):
    """Whether ``vm``'s guest counts past ``after`` within 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if read_counter(vm.mem_path) > after and cpr.status(vm) == "running":
            return True
        time.sleep(0.2)
    return False


def test_one_process_saves_records_syncs_and_kexecs_then_the_new_boot_restores(host):
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u1")
    assert host.kexecs == [luo.LINUX_REBOOT_CMD_KEXEC] and host.calls == []  # no systemd on the way
    j = journal.load_journal()
    assert (j["phase"], j["update_id"], j["autonomous"], j["kexec_via"]) == (
        "kexec", "u1", True, "reboot(LINUX_REBOOT_CMD_KEXEC)")
    saved = dict((vm.name, read_counter(vm.mem_path)) for vm in host.vms)
    for vm in host.vms:
        assert cpr.status(vm) is None and os.path.exists(vm.state_path)  # QEMU quit after its save
        assert j["vms"][vm.name]["state"] == "saved"
    m = manifest.load()
    assert set(m["files"]) == {"vm1", "vm2"} and all(
        e["mode"] == "sampled" and e["algo"] == "crc32" and e["digests"] for e in m["files"].values())
    # What a controller asks meanwhile: the update is kexecing, not done, not failed.
    assert journal.update_progress(j, "boot-a", "u1", pid_alive=lambda pid: True)[0] == "kexec"
    # The new boot: the verify service records it (no hashing), then each VM's unit verifies its own
    # memory and restores it at once.
    host.boot["id"] = "boot-b"
    assert journal.update_progress(j, "boot-b", "u1")[0] == "restoring"
    assert agent.main(["verify", "--boot"]) == 0
    j = journal.load_journal()
    assert j["phase"] == "booted" and all(v["state"] == "saved" for v in j["vms"].values())
    for vm in host.vms:
        assert host.run(["systemctl", "start", "guestmemfs-vm@%s.service" % vm.name]) == 0
        assert cpr.status(vm) == "running"  # before the next VM's memory is even looked at
        if vm is host.vms[0]:  # vm2 not yet verified: the update is not
            assert "verified" not in journal.load_journal()["phases"]
    for vm in host.vms:
        assert counting(vm, saved[vm.name]), "%s does not count on from %d" % (vm.name, saved[vm.name])
    j = journal.load_journal()
    assert j["phase"] == "restored" and all(v["state"] == "restored" and v["blackout_s"] > 0 for v in j["vms"].values())
    # Every phase, as molecule's verifier reads them (seen there: no "verified" once each unit
    # verified its own VM), and on the boot each belongs to.
    assert [(p, j["phases"][p]["boot_id"]) for p in ("booted", "verified", "restored")] == [
        ("booted", "boot-b"), ("verified", "boot-b"), ("restored", "boot-b")]
    assert j["phases"]["booted"]["ts"] <= j["phases"]["verified"]["ts"] <= j["phases"]["restored"]["ts"]
    assert [(v["verify"]["status"], v["verify"]["mode"], v["verify"]["algo"]) for v in j["vms"].values()] == [
        ("ok", "sampled", "crc32")] * 2
    assert journal.update_progress(j, "boot-b", "u1")[0] == "done"


QUOTA = {"cpu_quota": "20%"}


@pytest.mark.parametrize("host", [QUOTA], indirect=True)
def test_a_vm_with_a_cpu_quota_is_saved_and_restored_without_it_and_runs_with_it(host):
    # Its cold start: the quota from the start's own end on (vm1 has none: nothing is set for it).
    assert host.quota == {"vm2": "20%"} and host.start_quota == {"vm1": [None], "vm2": [None]}
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u5")
    # Lifted once paused, not before: a paused guest takes no CPU; its QEMU saves at full speed.
    lifts = [c for c in host.calls if c[:2] == ["systemctl", "set-property"] and c[4] == "CPUQuota="]
    assert [c[3] for c in lifts] == ["guestmemfs-vm@vm2.service"] and host.quota == {"vm2": None}
    assert lifts[0][5] >= journal.load_journal()["vms"]["vm2"]["stop_ts"]
    saved = read_counter(host.vms[1].mem_path)
    host.boot["id"] = "boot-b"
    host.quota.clear()  # --runtime properties live in /run: gone with the kexec
    assert agent.main(["verify", "--boot"]) == 0
    for vm in host.vms:
        assert host.run(["systemctl", "start", "guestmemfs-vm@%s.service" % vm.name]) == 0
    # The restore ran without the quota (the agent's verification, the new QEMU's load), and the
    # guest has it back once it runs.
    assert host.start_quota == {"vm1": [None, None], "vm2": [None, None]}
    assert host.quota == {"vm2": "20%"} and counting(host.vms[1], saved)
    assert journal.load_journal()["vms"]["vm2"]["state"] == "restored"


@pytest.mark.parametrize("host", [QUOTA], indirect=True)
def test_a_vm_whose_save_fails_after_its_pause_runs_on_with_its_cpu_quota(host, monkeypatch):
    def broken(m):
        raise OSError("no space left for the digests")
    monkeypatch.setattr(manifest, "add_content", broken)
    with pytest.raises(hostupdate.UpdateError, match="saving failed"):
        hostupdate.update_host(host.run, conf_dir=host.conf, update_id="u6")
    quotas = [c[4] for c in host.calls if c[:2] == ["systemctl", "set-property"]]
    assert quotas == ["CPUQuota=20%", "CPUQuota=", "CPUQuota=20%"]  # cold start, pause, resume
    assert host.quota == {"vm2": "20%"} and host.kexecs == []
    assert cpr.status(host.vms[1]) == "running"


@pytest.mark.parametrize("host", [QUOTA], indirect=True)
def test_a_vm_restored_on_this_kernel_after_a_refused_kexec_gets_its_cpu_quota_back(host):
    (host.root / "sys" / "kernel" / "kexec_loaded").write_text("0\n")
    with pytest.raises(hostupdate.UpdateError, match="vm1 restored, vm2 restored"):
        hostupdate.update_host(host.run, conf_dir=host.conf, update_id="u7")
    assert host.start_quota["vm2"] == [None, None]  # its restore, on this kernel, without the quota
    assert host.quota == {"vm2": "20%"}


def test_a_kexec_that_is_refused_restores_every_vm_on_this_kernel(host):
    (host.root / "sys" / "kernel" / "kexec_loaded").write_text("0\n")
    before = dict((vm.name, read_counter(vm.mem_path)) for vm in host.vms)
    with pytest.raises(hostupdate.UpdateError, match="no kernel is loaded for kexec.*restored on this kernel: "
                                                     "vm1 restored, vm2 restored") as exc:
        hostupdate.update_host(host.run, conf_dir=host.conf, update_id="u2")
    assert exc.value.update_id == "u2" and host.kexecs == []
    for vm in host.vms:  # running again, on verified memory, from where they stopped
        assert counting(vm, before[vm.name])
        assert not os.path.exists(vm.state_path) and os.path.exists(vm.state_path + ".restored")
    j = journal.load_journal()
    assert j["phase"] == "rolled_back" and all(v["state"] == "restored" for v in j["vms"].values())
    where, text = journal.update_progress(j, "boot-a", "u2", pid_alive=lambda pid: False)
    assert where == "stopped" and "rolled_back" in text
    # The next update starts from this idle journal.
    assert journal.next_step(j, "boot-a")[0] == "start"


def test_the_agent_runs_the_same_update(host, monkeypatch):
    monkeypatch.setattr(cpr, "CONF_DIR", host.conf)
    with pytest.raises(Kexec):
        agent.main(["update", "--mode", "extents", "--update-id", "u3"])
    j = journal.load_journal()
    assert (j["phase"], j["update_id"], j["manifest_mode"]) == ("kexec", "u3", "extents")


def loaded(host, monkeypatch, old="6.12.117+deb13-amd64", new="7.3.4+deb13-amd64"):
    """The kernel ``new`` loaded on ``old`` as the kexec module notes it; returns the "kexec": the
    boot after it runs ``new`` with the loaded cmdline."""
    (host.root / "proc").mkdir(exist_ok=True)
    (host.root / "proc" / "cmdline").write_text("root=/dev/vda1 memmap=1G!4G\n")
    release = {"now": old}
    monkeypatch.setattr(hostupdate, "_release", lambda: release["now"])
    journal.update_journal(lambda j: j.update(kexec_target={"release": new, "from_release": old,
                                                            "cmdline": "root=/dev/vda1 memmap=1G!4G"}))

    def kexec(boot="boot-b"):
        host.boot["id"], release["now"] = boot, new
    return kexec


def test_a_full_check_passed_on_every_vm_proves_the_kernel_pair_in_the_hosts_journal(host, monkeypatch):
    kexec = loaded(host, monkeypatch)
    journal.update_journal(lambda j: j.update(proofs={"6.1.0 -> 6.12.117+deb13-amd64": {"result": "proven"}}))
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="full", update_id="u5")
    kexec()
    assert agent.main(["verify", "--boot"]) == 0
    for vm in host.vms:
        assert host.run(["systemctl", "start", "guestmemfs-vm@%s.service" % vm.name]) == 0
    j = journal.load_journal()
    assert j["phase"] == "restored"
    proof = j["proofs"]["6.12.117+deb13-amd64 -> 7.3.4+deb13-amd64"]
    assert (proof["result"], proof["update_id"], proof["vms"], proof["modes"]) == ("proven", "u5", 2, ["full"])
    assert "6.1.0 -> 6.12.117+deb13-amd64" in j["proofs"]  # another pair's proof is kept
    assert "kernel pair 6.12.117+deb13-amd64 -> 7.3.4+deb13-amd64: proven (full check passed on 2 VMs)" in [
        n["msg"] for n in j["log"]]


def test_a_sampled_check_that_passed_proves_nothing_new_and_a_cold_boot_proves_nothing(host, monkeypatch):
    kexec = loaded(host, monkeypatch)
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u6")
    kexec()
    (host.root / "proc" / "cmdline").write_text("root=/dev/vda1\n")  # GRUB's default, not the loaded one
    assert agent.main(["verify", "--boot"]) == 0
    for vm in host.vms:
        assert host.run(["systemctl", "start", "guestmemfs-vm@%s.service" % vm.name]) == 0
    j = journal.load_journal()
    assert (j["phase"], j["booted_as_loaded"], j.get("proofs")) == ("restored", False, None)


def test_a_corrupted_region_is_caught_by_the_sampled_check_and_the_vm_held(host, monkeypatch):
    kexec = loaded(host, monkeypatch)
    journal.update_journal(lambda j: j.update(proofs={"6.12.117+deb13-amd64 -> 7.3.4+deb13-amd64": {
        "result": "proven", "update_id": "u0"}}))
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u4")
    kexec()
    vm1 = host.vms[0]
    with open(vm1.mem_path, "r+b") as fh:  # a quarter of vm1's memory changed across the "kexec"
        fh.seek(32 * MiB)
        fh.write(b"\xa5" * (16 * MiB))
    assert host.run(["systemctl", "start", "guestmemfs-vm@vm1.service"]) == 4  # held: QEMU never starts
    assert host.run(["systemctl", "start", "guestmemfs-vm@vm2.service"]) == 0
    vms = journal.load_journal()["vms"]
    assert (vms["vm1"]["state"], vms["vm1"]["verify"]["status"], vms["vm2"]["state"]) == (
        "held", "content_changed", "restored")
    assert cpr.status(vm1) is None and os.path.exists(vm1.state_path)
    # The pair's proof is taken back on this host: every later wave and run checks it in full.
    proof = journal.load_journal()["proofs"]["6.12.117+deb13-amd64 -> 7.3.4+deb13-amd64"]
    assert (proof["result"], proof["update_id"], proof["modes"]) == ("failed", "u4", ["sampled"])
    assert proof["detail"].startswith("vm1 content_changed: ")


def test_a_held_vm_is_not_kept_waiting_for_its_bridge(host, monkeypatch, capsys):
    # Its verdict first, its NICs then: a VM that will not be resumed waits for no interface (before,
    # a held VM whose bridge was also missing waited NIC_WAIT_S, then said "NOT started" with exit 9).
    kexec = loaded(host, monkeypatch)
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u7")
    kexec()
    vm1 = host.vms[0]
    with open(vm1.mem_path, "r+b") as fh:
        fh.seek(32 * MiB)
        fh.write(b"\xa5" * (16 * MiB))
    journal.update_journal(journal.set_vm("vm1", launch={"nics": {"6": {"bridge": "br-gone"}}}))
    monkeypatch.setattr(hostupdate.confine, "_interface_exists", lambda name: False)
    monkeypatch.setattr(hostupdate.confine, "NIC_WAIT_S", 1)
    assert host.run(["systemctl", "start", "guestmemfs-vm@vm1.service"]) == 4
    err = capsys.readouterr().err
    assert "vm1 NOT resumed: " in err and "br-gone" not in err
    assert journal.load_journal()["vms"]["vm1"]["state"] == "held" and os.path.exists(vm1.state_path)


def test_a_vm_its_agent_did_not_start_stays_verified_and_starts_with_its_unit(host, monkeypatch, capsys):
    # systemd runs the unit's restore (ExecStartPost) beside vm_run. When vm_run ends without becoming
    # QEMU (its bridge never came: exit 9), the restore tried QMP for its minute and then called the VM
    # restore_failed, though nothing ever ran on its memory, verified on this boot: the recovery had to
    # verify it again. Now the restore knows the agent refused (by the agent's own record), changes
    # nothing and says so; the unit's next start restores the VM.
    kexec = loaded(host, monkeypatch)
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u8")
    kexec()
    saved = read_counter(host.vms[0].mem_path)
    journal.update_journal(journal.set_vm("vm1", launch={"nics": {"6": {"bridge": "br-late"}}}))
    monkeypatch.setattr(hostupdate.confine, "_interface_exists", lambda name: False)
    monkeypatch.setattr(hostupdate.confine, "NIC_WAIT_S", 1)
    monkeypatch.setattr(hostupdate, "RESTORE_WAIT_POLL_S", 0.05)
    pid = os.fork()
    if pid == 0:  # the unit's main process: vm_run
        try:
            rc = hostupdate.vm_run("vm1", conf_dir=host.conf)
        except BaseException:
            rc = 99
        os._exit(rc)
    monkeypatch.setenv("MAINPID", str(pid))  # as systemd gives ExecStartPost
    status = []
    reaper = threading.Thread(target=lambda: status.append(os.waitpid(pid, 0)[1]))  # systemd reaps its main
    reaper.start()
    qmp_tried = []
    real_restore = hostupdate.cpr.restore
    monkeypatch.setattr(hostupdate.cpr, "restore", lambda *a, **kw: qmp_tried.append(1) or real_restore(*a, **kw))
    try:
        rc = hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf)
    finally:
        reaper.join()
    assert os.WEXITSTATUS(status[0]) == 9  # the agent's own refusal
    assert rc == 9 and qmp_tried == []
    err = capsys.readouterr().err
    assert "vm1 NOT started: " in err and "br-late" in err and "systemctl start guestmemfs-vm@vm1.service" in err
    rec = journal.load_journal()["vms"]["vm1"]
    # Recorded in the journal, final for this update (a controller waiting on it learns now, not at its
    # restore timeout), its verdict for this boot kept.
    assert rec["state"] == "not_started" and rec["verified_boot_id"] == "boot-b" and "br-late" in rec["error"]
    assert os.path.exists(host.vms[0].state_path)
    monkeypatch.delenv("MAINPID")
    assert host.run(["systemctl", "start", "guestmemfs-vm@vm2.service"]) == 0
    j = journal.load_journal()
    assert journal.update_progress(j, "boot-b", "u8")[0] == "done" and j["phase"] == "held"
    step, why = journal.next_step(j, "boot-b")
    assert step == "blocked" and "vm1 (not_started)" in why
    # the bridge came: the unit's start is the whole recovery, on this boot's verdict
    monkeypatch.setattr(hostupdate.confine, "_interface_exists", lambda name: True)
    verified = []
    monkeypatch.setattr(hostupdate.manifest, "verify_file", lambda entry: verified.append(entry) or {})
    assert host.run(["systemctl", "start", "guestmemfs-vm@vm1.service"]) == 0
    j = journal.load_journal()
    assert j["vms"]["vm1"]["state"] == "restored" and j["phase"] == "restored" and verified == []
    assert counting(host.vms[0], saved)


# -- the VM unit as systemd runs it (Type=notify): the agent forks the rest of the start, execs QEMU --

REAL_EXECVP = os.execvp  # before any fixture stands in for it
REAL_FORK_UNIT_STEP = hostupdate.fork_unit_step


def start_real_unit(host, monkeypatch, request, name, timeout=180):
    """systemd starting guestmemfs-vm@NAME (Type=notify, NotifyAccess=all), but for systemd itself:
    the agent's vm_run in a process of its own with $NOTIFY_SOCKET, really forking its step and
    really exec'ing QEMU; the socket read as systemd reads it (each BARRIER's fd closed at once).
    -> (main pid, its wait status or None while it runs, [(sender pid, text, the VM's journal state
    when it came)] up to READY=1 or the main process's end, the unit's output file)."""
    path = str(host.dir / "notify")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    request.addfinalizer(sock.close)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setattr(hostupdate, "fork_unit_step", REAL_FORK_UNIT_STEP)
    log = host.dir / ("%s.unit.log" % name)
    pid = os.fork()
    if pid == 0:
        rc = 99
        try:
            fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1)
            os.execvp = REAL_EXECVP
            rc = hostupdate.vm_run(name, conf_dir=host.conf, run=host.run)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(rc)

    def reap():
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass
    request.addfinalizer(reap)
    messages, status = [], None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
            sender = None
            for level, kind, payload in anc:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    for fd in array.array("i", payload[:len(payload) - len(payload) % 4]):
                        os.close(fd)  # BARRIER=1: systemd has read what came before
                elif (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    sender = struct.unpack("3i", payload[:12])[0]
            state = journal.load_journal().get("vms", {}).get(name, {}).get("state")
            messages.append((sender, data.decode(), state))
            if "READY=1" in data.decode():
                break
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    return pid, status, messages, log


def exe(pid):
    return os.path.basename(os.readlink("/proc/%d/exe" % pid))


def after_update(host, monkeypatch, update_id):
    """Saved and "kexec'd" onto boot-b; -> what vm1's guest had counted when it was saved."""
    kexec = loaded(host, monkeypatch)
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id=update_id)
    kexec()
    return read_counter(host.vms[0].mem_path)


def no_resume_seen(monkeypatch):
    """QMP whose RESUME event never comes (after cont was sent); -> the QMP class it stands in for."""
    base = cpr.QMP

    class NoResumeSeen(base):
        def wait_event(self, name, timeout, match=None):
            if name == "RESUME":
                raise qmp.QMPError("no RESUME event within %ss (injected)" % timeout)
            return base.wait_event(self, name, timeout, match)
    monkeypatch.setattr(cpr, "QMP", NoResumeSeen)
    return base


def test_the_units_agent_becomes_qemu_and_its_forked_step_restores_the_vm_then_says_ready(host, monkeypatch, request):
    # One agent process per VM unit: its main process verifies, forks the rest of the start and
    # becomes QEMU (no ExecStartPost: a second agent start on a booting host, per VM). systemctl
    # start returns at READY=1, which comes once the VM runs again, from the forked step.
    saved = after_update(host, monkeypatch, "u20")
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    assert status is None, log.read_text()
    assert [m[1].split("\n")[0] for m in messages] == ["READY=1"], (messages, log.read_text())
    sender, text, state = messages[0]
    assert state == "restored" and "STATUS=vm1 restored" in text  # READY only once it runs
    assert sender not in (None, pid) and exe(pid).startswith("qemu-system")  # the main process is QEMU
    assert counting(host.vms[0], saved)
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["blackout_s"] > 0 and not os.path.exists(host.vms[0].state_path)


def test_a_restored_vm_says_where_its_start_went(host, monkeypatch, request):
    # A host's blackout is its slowest VM's: the journal and the restore event say, per VM, when its
    # agent started (since the kernel's start) and how long each part of its unit's start took.
    after_update(host, monkeypatch, "u20p")
    began = time.time()
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    took = time.time() - began
    assert status is None and messages, log.read_text()
    phases = journal.load_journal()["vms"]["vm1"]["phases"]
    assert sorted(phases) == ["agent_started_at_s", "imports_s", "load_s", "nic_wait_s", "qemu_up_s", "resume_s",
                              "verify_s"]
    assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
    with open("/proc/uptime") as fh:
        assert phases["agent_started_at_s"] <= float(fh.read().split()[0])
    assert phases["qemu_up_s"] > 0 and phases["verify_s"] > 0  # a QEMU's start; a sampled check of 128 MiB
    assert sum(v for k, v in phases.items() if k != "agent_started_at_s") <= took
    restores = [json.loads(line) for line in open(events.EVENTS) if '"restore"' in line]
    assert [e["data"]["phases"] for e in restores if e["vm"] == "vm1"][-1:] == [phases]


def test_a_restore_that_fails_before_cont_stops_the_units_qemu_and_keeps_state_and_memory(host, monkeypatch, request):
    # As an ExecStartPost that failed made the unit fail: its QEMU, paused and never resumed, ends
    # (at once, not at the start's timeout: it exits on a failed load, or the step stops it);
    # nothing ran on the memory; no READY.
    saved = after_update(host, monkeypatch, "u21")
    state = host.vms[0].state_path
    with open(state, "wb") as fh:
        fh.write(b"not a migration stream")
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    assert status is not None, log.read_text()
    assert not any("READY=1" in m[1] for m in messages)
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "restore_failed" and "resuming_boot_id" not in rec
    assert open(state, "rb").read() == b"not a migration stream" and read_counter(host.vms[0].mem_path) == saved
    assert "vm1: restore failed: " in log.read_text()


def test_a_restore_step_that_fails_before_the_load_stops_the_paused_qemu_itself(host, monkeypatch, request):
    # A QEMU that is not told to load anything waits, paused, for ever: the step stops it (SIGTERM
    # through its pidfd), the unit ends now rather than at its start's timeout.
    saved = after_update(host, monkeypatch, "u24")

    def refused(q):
        raise qmp.QMPError("migrate-set-capabilities refused (injected)")
    monkeypatch.setattr(cpr, "_prepare_migration", refused)
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    # QEMU ends on SIGTERM with exit 0: before READY=1, systemd fails the unit all the same
    assert status is not None and "terminating on signal 15" in log.read_text(), log.read_text()
    assert not any("READY=1" in m[1] for m in messages)
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "restore_failed" and "injected" in rec["error"] and "resuming_boot_id" not in rec
    assert os.path.exists(host.vms[0].state_path) and read_counter(host.vms[0].mem_path) == saved


def test_a_restore_that_fails_after_cont_never_stops_the_guest_it_may_have_resumed(host, monkeypatch, request):
    # cont was sent and its RESUME event never seen: the guest may run, past its saved state. The old
    # ExecStartPost failed and systemd stopped the unit, QEMU with it; the step says READY instead.
    saved = after_update(host, monkeypatch, "u22")
    base = no_resume_seen(monkeypatch)
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    assert status is None and any("READY=1" in m[1] for m in messages), log.read_text()
    assert "its restore step failed" in messages[-1][1]
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "held" and rec["resuming_boot_id"] == "boot-b" and "injected" in rec["error"]
    assert rec["verify"]["status"] == hostupdate.RESUMED_PAST_STATE  # its state is never loaded again
    assert exe(pid).startswith("qemu-system") and counting(host.vms[0], saved)
    assert "left running, not stopped" in log.read_text()


def test_a_vm_whose_restore_failed_after_cont_is_never_verified_or_restored_again(host, monkeypatch, capsys):
    # Its guest may have run past its saved state: that state must never be loaded again. It was
    # journaled restore_failed, which `agent verify` verifies again (the memory passes: a sample,
    # or the guest only just ran) and the unit's next start restored the stale state over it.
    after_update(host, monkeypatch, "u26")
    base = no_resume_seen(monkeypatch)
    assert host.run(["systemctl", "start", "guestmemfs-vm@vm1.service"]) == 1
    monkeypatch.setattr(cpr, "QMP", base)
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "held" and rec["verify"]["status"] == hostupdate.RESUMED_PAST_STATE
    assert rec["resuming_boot_id"] == "boot-b" and "injected" in rec["error"]
    assert "agent discard-state vm1" in rec["verify"]["detail"]
    assert agent.main(["verify", "vm1"]) != 0 or journal.load_journal()["vms"]["vm1"]["state"] == "held"
    assert journal.load_journal()["vms"]["vm1"]["state"] == "held"
    capsys.readouterr()
    assert hostupdate.vm_run("vm1", conf_dir=host.conf, run=host.run) == 4  # held: never -incoming again
    assert "agent discard-state vm1" in capsys.readouterr().err
    assert os.path.exists(host.vms[0].state_path)  # kept, as every held VM's


def test_an_agent_that_cannot_become_qemu_tells_its_forked_step_which_then_does_nothing(host, monkeypatch, request):
    # The refusal reaches the step through the close-on-exec pipe: it neither waits QMP's minute nor
    # journals a restore_failed over the agent's not_started (this boot's verdict kept).
    after_update(host, monkeypatch, "u23")

    def refuse(vm, argv, launch):
        raise hostupdate.confine.ConfineError("user qemu-vm1 does not exist (injected)")
    monkeypatch.setattr(hostupdate.confine, "exec_qemu", refuse)
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 9, log.read_text()
    assert messages == []
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "not_started" and "injected" in rec["error"] and rec["verified_boot_id"] == "boot-b"
    assert os.path.exists(host.vms[0].state_path)


def test_a_restore_step_that_cannot_be_forked_leaves_the_vm_not_started_and_verified(host, monkeypatch, request):
    # Nothing would restore the VM or end the unit's start (it would wait out its timeout, then kill
    # the QEMU): the agent does not become QEMU; the VM is not_started, its verdict kept.
    after_update(host, monkeypatch, "u25")
    real_fork, forks = os.fork, [0]

    def fork():  # this test's own, the agent's, then the agent's child's: the last one fails
        forks[0] += 1
        if forks[0] == 3:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
        return real_fork()
    monkeypatch.setattr(os, "fork", fork)
    pid, status, messages, log = start_real_unit(host, monkeypatch, request, "vm1")
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 9, log.read_text()
    assert messages == []
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "not_started" and "could not fork the unit's restore step" in rec["error"]
    assert rec["verified_boot_id"] == "boot-b" and os.path.exists(host.vms[0].state_path)


def test_a_unit_whose_qemu_came_and_went_is_restore_failed_not_left_verified(host, monkeypatch):
    # The other side of the agent's own refusal (above): a main process that exited without the
    # agent's record for it - QEMU started and died - may have run on the memory, so the VM is
    # restore_failed (verified again before any start), even beside a stale refusal of an earlier
    # start of the unit; and nothing waits QEMU's minute for a socket no process serves.
    kexec = loaded(host, monkeypatch)
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u9")
    kexec()
    hostupdate.verify_pending(["vm1"])
    assert journal.load_journal()["vms"]["vm1"]["state"] == "restoring"
    main, stale = (subprocess.Popen([sys.executable, "-c", "pass"]) for _i in range(2))
    main.wait()  # reaped, as systemd reaps its main process
    stale.wait()
    durable.write_json(hostupdate._not_started_path("vm1"), {"pid": stale.pid, "boot_id": "boot-b",
                                                             "why": "an earlier start's"})
    monkeypatch.setenv("MAINPID", str(main.pid))
    assert hostupdate.vm_restore("vm1", host.run, conf_dir=host.conf) == 1
    rec = journal.load_journal()["vms"]["vm1"]
    assert rec["state"] == "restore_failed"
    assert rec["error"].startswith("its QEMU (the unit's main process %d) exited before its restore: " % main.pid)


@pytest.mark.parametrize("phase, boot, alive, want", [
    ("saving", "boot-a", True, "saving"),
    ("saved", "boot-a", True, "kexec"),
    ("kexec", "boot-a", True, "kexec"),
    ("saving", "boot-a", False, "stopped"),  # the process died half-way: a re-run rolls back
    ("kexec", "boot-a", False, "stopped"),   # it ended without a kexec: a re-run kexecs or restores
    ("rolled_back", "boot-a", False, "stopped"),
    ("kexec", "boot-b", False, "restoring"),
    ("verified", "boot-b", False, "restoring"),
])
def test_where_a_host_side_update_stands_by_its_journal(phase, boot, alive, want):
    j = {"update_id": "u1", "phase": phase, "from_boot_id": "boot-a", "saver_pid": 42, "autonomous": True,
         "vms": {"vm1": {"state": "saved"}}}
    assert journal.update_progress(j, boot, "u1", pid_alive=lambda pid: alive)[0] == want
    assert journal.update_progress(j, boot, "u0", pid_alive=lambda pid: alive)[0] == "starting"


def test_a_rerun_waits_for_a_live_host_side_update_and_never_kexecs_it_again():
    j = {"update_id": "u1", "phase": "saved", "from_boot_id": "boot-a", "saver_pid": 42, "autonomous": True,
         "vms": {"vm1": {"state": "saved"}}}
    assert journal.next_step(j, "boot-a", pid_alive=lambda pid: True)[0] == "wait"
    assert journal.next_step(j, "boot-a", pid_alive=lambda pid: False)[0] == "kexec"
    assert journal.next_step(dict(j, phase="saving"), "boot-a", pid_alive=lambda pid: True)[0] == "wait"
    assert journal.next_step(dict(j, phase="saving"), "boot-a", pid_alive=lambda pid: False)[0] == "rollback"


def test_the_module_follows_the_update_and_fails_at_once_when_it_stopped(tmp_path, monkeypatch, capsys):
    from conftest import run_main
    from ansible_collections.guestmemfs.liveupdate.plugins.modules import vm_cpr
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(journal, "boot_id", lambda: "boot-a")
    rc, out = run_main(capsys, vm_cpr, {"action": "update"})
    assert rc == 1 and "update_id" in out["msg"]  # the caller names the update it follows
    rc, out = run_main(capsys, vm_cpr, {"action": "wait", "update_id": "u1", "poll": 1})
    assert rc == 0 and (out["done"], out["progress"]) == (False, "starting")
    journal.update_journal(lambda j: j.update(update_id="u1", phase="rolled_back", from_boot_id="boot-a",
                                              vms={"vm1": {"state": "restored"}}), msg="the kexec did not happen: x")
    rc, out = run_main(capsys, vm_cpr, {"action": "wait", "update_id": "u1", "poll": 1})
    assert rc == 1 and out["progress"] == "stopped" and "the kexec did not happen: x" in out["msg"]
