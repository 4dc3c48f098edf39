"""The QEMU update (issue 24) against real QEMUs on this machine (TCG, the counting guest), with the
host fixture of test_host_update: the VM units are stand-ins for systemd that run the agent's own
vm-run and vm-restore, QEMU started instead of exec'd.

This machine's QEMU is 7.2, without cpr-reboot: the "new QEMU" is a stand-in script that answers
``--version`` as a QEMU with cpr-reboot would and otherwise runs the real 7.2 (Older translates the
save and restore, as in test_host_update). Variants of it leave out machine types or a device, to
make the real QEMU refuse the state. The real 7.2 itself is probed as it is."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import types

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    agent, cpr, hostupdate, journal, manifest, procs, qemu_update, virtio_queues, vmdef)

from counter_guest import read_counter
from test_host_update import MiB, QUOTA, counting, host  # noqa: F401  pylint: disable=unused-import

REAL = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(not REAL, reason="qemu-system-x86 is installed by scripts/bootstrap")

STAND_IN = """#!%(python)s
# A QEMU with cpr-reboot, for tests: answers --version as one, runs this machine's QEMU otherwise.
import os, subprocess, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("QEMU emulator version 10.0.2 (stand-in over %(real)s)")
    sys.exit(0)
if args == ["-machine", "help"]:
    out = subprocess.run(["%(real)s"] + args, stdout=subprocess.PIPE, universal_newlines=True).stdout
    sys.stdout.write("".join(l for l in out.splitlines(True) if l.split(" ", 1)[0] not in %(hide)r))
    sys.exit(0)
drop = %(drop)r
keep, skip = [], 0
for a in args:
    if skip:
        skip -= 1
    elif a in drop:
        skip = drop[a]
    else:
        keep.append(a)
os.execv("%(real)s", ["%(real)s"] + keep + %(add)r)
"""


def run_out(argv):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return p.returncode, p.stdout, p.stderr


def stand_in(tmp_path, name="qemu-system-x86_64", hide=(), drop=None, add=()):
    """The path of a new-QEMU stand-in: ``hide`` machine types from its list, ``drop`` arguments
    (name -> how many values follow) from the VM's argv, ``add`` arguments to every start."""
    d = tmp_path / ("new-" + str(len(list(tmp_path.glob("new-*")))))
    d.mkdir()
    path = d / name
    path.write_text(STAND_IN % {"python": sys.executable, "real": REAL, "hide": list(hide), "drop": drop or {},
                                "add": list(add)})
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def qhost(host, monkeypatch):
    """The host fixture, with systemctl stop (kills what maps the VM's memory, as the unit's stop
    does) and each exec'd argv recorded."""
    execs = []
    spawn = hostupdate.os.execvp

    def recording(prog, argv):
        execs.append(list(argv))
        return spawn(prog, argv)
    monkeypatch.setattr(hostupdate.os, "execvp", recording)

    def run(argv):
        if argv[:2] == ["systemctl", "stop"]:
            name = argv[2][len("guestmemfs-vm@"):-len(".service")]
            vm = cpr.VM.load(name, host.conf)
            host.calls.append(argv)
            for pid, _c, _f in procs.users(vm.mem_path, mapped_only=True):
                os.kill(pid, signal.SIGKILL)
            hostupdate.wait_unmapped([vm], 10)
            return 0
        return host.run(argv)
    host.qrun, host.execs, host.kept = run, execs, str(host.dir / "kept")
    return host


def started(qhost):
    return [c[1:] for c in qhost.calls]


def test_the_probe_refuses_this_machines_qemu_and_a_missing_machine_type():
    problems, facts = qemu_update.probe(REAL, ["pc-q35-10.0"], run_out)
    assert facts["version"].startswith("7.")
    assert any("lacks cpr-reboot" in p for p in problems), problems
    assert any("does not offer machine type pc-q35-10.0" in p for p in problems), problems
    problems, _f = qemu_update.probe("/nonexistent/qemu-system-x86_64", ["q35"], run_out)
    assert problems == ["the new QEMU /nonexistent/qemu-system-x86_64 does not exist or is not executable"]
    assert qemu_update.probe("qemu-system-x86_64", ["q35"], run_out)[0] == [
        "the new QEMU 'qemu-system-x86_64' is not an absolute path"]


def test_a_new_qemu_without_the_machine_type_is_refused_before_any_pause(qhost, tmp_path):
    new = stand_in(tmp_path, hide=("q35",))
    before = dict((vm.name, read_counter(vm.mem_path)) for vm in qhost.vms)
    with pytest.raises(qemu_update.QemuUpdateError, match="does not offer machine type q35.*Nothing was paused"):
        qemu_update.update_qemu(qhost.qrun, run_out, new, conf_dir=qhost.conf, kept_dir=qhost.kept)
    assert qhost.calls == [] and qhost.execs == []
    assert journal.load_journal().get("phase") is None  # nothing journaled
    for vm in qhost.vms:
        assert not os.path.exists(vm.state_path) and counting(vm, before[vm.name])
    assert not os.path.exists(qhost.kept)


# A NIC whose first ring holds 512 entries (rx_queue_size takes 256 to 1024).
NIC = {"nics": [{"type": "user"}], "extra_args": ["-global", "virtio-net-pci.rx_queue_size=512"]}


@pytest.mark.parametrize("host", [NIC], indirect=True)
def test_a_vm_whose_rings_the_new_qemu_would_refuse_is_refused_before_any_pause(qhost, tmp_path):
    """As Debian's 10.0.13 and 11.1.3 (docs/qemu-update.md): the running QEMU's first virtio-net ring
    holds 512 entries, the new QEMU allocates 256 (here: the stand-in drops the VM's -global)."""
    new = stand_in(tmp_path, drop={"-global": 1})
    before = dict((vm.name, read_counter(vm.mem_path)) for vm in qhost.vms)
    with pytest.raises(qemu_update.QemuUpdateError) as err:
        qemu_update.update_qemu(qhost.qrun, run_out, new, conf_dir=qhost.conf, kept_dir=qhost.kept)
    assert ("vm2: the new QEMU would refuse its device state: net0-dev (virtio-net): 1 ring larger than the new "
            "QEMU allocates (queue 0: 512 > 256)"
            in str(err.value)), str(err.value)
    assert "Nothing was paused" in str(err.value) and "vm1" not in str(err.value)
    assert qhost.calls == [] and qhost.execs == []
    assert journal.load_journal().get("phase") is None
    for vm in qhost.vms:
        assert not os.path.exists(vm.state_path) and counting(vm, before[vm.name])
    # The same rings on both sides: nothing to refuse.
    assert sorted(qemu_update.check(run_out, stand_in(tmp_path), conf_dir=qhost.conf)["vms"]) == ["vm1", "vm2"]


@pytest.mark.parametrize("host", [NIC], indirect=True)
def test_rings_that_cannot_be_compared_refuse_the_vm_before_any_pause(qhost, tmp_path):
    """A new QEMU whose scratch instance does not start (here: an option it lacks) cannot show that
    it takes vm2's rings: vm2 would pause for a restore that may fail, so nothing pauses."""
    new = stand_in(tmp_path, add=["-no-such-option"])
    with pytest.raises(qemu_update.QemuUpdateError) as err:
        qemu_update.update_qemu(qhost.qrun, run_out, new, conf_dir=qhost.conf, kept_dir=qhost.kept)
    assert "vm2: cannot check that the new QEMU can load its virtio rings: the scratch %s did not start" % new \
        in str(err.value), str(err.value)
    assert "-no-such-option" in str(err.value) and "Nothing was paused" in str(err.value)
    assert qhost.calls == [] and qhost.execs == []


@pytest.mark.parametrize("host", [NIC], indirect=True)
def test_the_rings_of_a_running_vm_and_of_a_scratch_qemu(qhost):
    vm2 = qhost.vms[1]
    argv = hostupdate.started_argv(vm2)[0]
    running = virtio_queues.running_queues(vm2.qmp_path)
    assert running == {"net0-dev": ("virtio-net", [512, 256, 64])}
    assert virtio_queues.allocated_queues(subprocess.Popen, REAL, "q35", argv) == running
    assert virtio_queues.scratch_args(argv) == ["-smp", "1", "-device", "virtio-net-pci,id=net0-dev", "-global",
                                                "virtio-net-pci.rx_queue_size=512"]
    assert virtio_queues.scratch_args(["-device", "virtio-blk-pci,drive=disk0,id=disk0-dev,serial=s1", "-global",
                                       "virtio-blk-pci.queue-size=512", "-device", "e1000,netdev=n0"]) == [
        "-blockdev", "driver=null-co,node-name=probe-drive0", "-device",
        "virtio-blk-pci,drive=probe-drive0,id=disk0-dev,serial=s1", "-global", "virtio-blk-pci.queue-size=512"]
    assert virtio_queues.allocated_queues(subprocess.Popen, REAL, "q35", ["-device", "virtio-blk-pci,drive=d0,queue-size=512"]) == {
        "virtio-blk#0": ("virtio-blk", [512])}
    assert virtio_queues.too_large(running, {"net0-dev": ("virtio-net", [256, 256])}) == [
        ("net0-dev", "virtio-net", 0, 512, 256), ("net0-dev", "virtio-net", 2, 64, 0)]
    # As many queues as the VM's vCPUs (virtio-blk's num-queues default), as in the fleet's 2-vCPU VM.
    assert virtio_queues.allocated_queues(subprocess.Popen, REAL, "q35", ["-smp", "2", "-device", "virtio-blk-pci,drive=d0"]) == {
        "virtio-blk#0": ("virtio-blk", [256, 256])}
    assert virtio_queues.describe(virtio_queues.too_large(
        {"d": ("virtio-blk", [1024, 1024]), "n": ("virtio-net", [256, 256, 64])},
        {"d": ("virtio-blk", [256, 256]), "n": ("virtio-net", [256, 256, 64])})) == (
        "d (virtio-blk): 2 rings larger than the new QEMU allocates (queue 0: 1024 > 256)")
    with pytest.raises(virtio_queues.QueueProbeError, match="did not start"):
        virtio_queues.allocated_queues(subprocess.Popen, REAL, "no-such-machine", argv)
    # vm1 has no virtio device (x-query-virtio answers an error there): nothing to compare.
    assert virtio_queues.running_queues(qhost.vms[0].qmp_path) == {}
    # A device that needs a backend the scratch instance cannot have is not probed, nor compared.
    fs = ["-device", "virtio-9p-pci,fsdev=fs0,mount_tag=t,id=fs0-dev", "-device", "virtio-net-pci,id=net0-dev"]
    assert virtio_queues.scratch_args(fs) == ["-device", "virtio-net-pci,id=net0-dev"]
    alloc = virtio_queues.allocated_queues(subprocess.Popen, REAL, "q35", fs)
    both = dict(running, **{"fs0-dev": ("virtio-9p", [128])})
    assert virtio_queues.unprobed(both, alloc) == ["fs0-dev"]
    assert virtio_queues.too_large(both, alloc) == [("net0-dev", "virtio-net", 0, 512, 256)]


def test_a_guest_without_virtio_devices_has_no_rings_to_compare_and_is_not_refused(tmp_path):
    """The guest that goes from Debian's 10.0.13 to 11.1.3 (docs/qemu-update.md): an e1000 NIC, disks
    on AHCI, the agent on an ISA serial port. Its running QEMU shows no ring, no scratch QEMU is
    started for it, and the ring check passes it."""
    run_dir = tempfile.mkdtemp(prefix="gmfs-nv-")  # short: a socket path holds at most 108 bytes
    disk, ram = tmp_path / "vm1.raw", tmp_path / "vm1.ram"
    disk.write_bytes(b"\0" * MiB)
    ram.write_bytes(b"\0" * 64 * MiB)
    definition = {"name": "vm1", "memory": "64M", "accel": "tcg", "cpu": "max",
                  "disks": [{"path": str(disk), "format": "raw", "interface": "sata"}],
                  "nics": [{"type": "user", "model": "e1000"}], "guest_agent": True, "guest_agent_port": "isa-serial",
                  "serial_log": str(tmp_path / "vm1.log")}
    # machine: this machine's QEMU may predate pc-q35-10.0
    c = dict(vmdef.normalize(definition), mem_path=str(ram), machine="q35")
    argv = [REAL] + vmdef.build_argv(c, run_dir)[1:] + ["-S"]
    assert virtio_queues.scratch_args(argv) == ["-smp", "1"]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        vm = types.SimpleNamespace(name="vm1", conf=c, qmp_path=vmdef.qmp_path(c, run_dir))
        for _tick in range(200):
            if os.path.exists(vm.qmp_path) or p.poll() is not None:
                break
            time.sleep(0.05)
        assert virtio_queues.running_queues(vm.qmp_path) == {}, p.stderr.read() if p.poll() is not None else ""

        def no_scratch(*_a, **_k):
            raise AssertionError("no scratch QEMU for a VM without virtio devices")
        assert virtio_queues.allocated_queues(no_scratch, "/nonexistent/qemu", "q35", argv) == {}
        facts = {}
        assert qemu_update.ring_problems("/nonexistent/qemu", [(vm, argv)], facts) == [] and facts == {}
    finally:
        p.kill()
        p.wait()
        p.stderr.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_named_vm_that_is_not_configured_is_refused(qhost, tmp_path):
    with pytest.raises(qemu_update.QemuUpdateError, match="no VM vm9 on this host"):
        qemu_update.update_qemu(qhost.qrun, run_out, stand_in(tmp_path), names=["vm9"], conf_dir=qhost.conf)


def test_a_qemu_replaced_on_disk_without_a_kept_copy_is_refused_before_any_pause(qhost, tmp_path):
    # vm1 was started from a file that now holds another program (a package replaced it in place).
    rec = vmdef.load_record("vm1", hostupdate.ARGV_DIR)
    replaced = stand_in(tmp_path)
    hostupdate.record_argv("vm1", [replaced] + rec["argv"][1:], rec["launch"])
    with pytest.raises(qemu_update.QemuUpdateError, match="vm1: its QEMU .* was replaced on disk .*no copy of it "
                                                          "was kept.*Nothing was paused"):
        qemu_update.update_qemu(qhost.qrun, run_out, stand_in(tmp_path), conf_dir=qhost.conf, kept_dir=qhost.kept)
    assert qhost.calls == [] and journal.load_journal().get("phase") is None
    assert all(cpr.status(vm) == "running" for vm in qhost.vms)
    # Kept before the package replaced it, it would have been taken back by its copy.
    hostupdate.record_argv("vm1", rec["argv"], rec["launch"])
    kept = qemu_update.keep_all(run_out, ["vm1"], qhost.conf, qhost.kept)
    hostupdate.record_argv("vm1", [replaced] + rec["argv"][1:], rec["launch"])
    assert qemu_update._rollback_source(qhost.vms[0], replaced, qhost.kept)[2:] == (kept["vm1"], None, None)


def test_every_vm_moves_to_the_new_qemu_with_its_own_argv_and_counts_on(qhost, tmp_path):
    new = stand_in(tmp_path)
    old = dict((vm.name, vmdef.load_argv(vm.name, hostupdate.ARGV_DIR)) for vm in qhost.vms)
    before = dict((vm.name, read_counter(vm.mem_path)) for vm in qhost.vms)
    r = qemu_update.update_qemu(qhost.qrun, run_out, new, parallel=2, conf_dir=qhost.conf, kept_dir=qhost.kept,
                                update_id="q1")
    assert r["outcomes"] == {"vm1": "updated", "vm2": "updated"}
    # The new binary, the VM's own argv, -incoming defer: nothing else differs.
    assert sorted(qhost.execs) == sorted([new] + old[n][1:] + ["-incoming", "defer"] for n in old)
    assert sorted(started(qhost)) == sorted(
        [op, "guestmemfs-vm@%s.service" % n] for n in old for op in ("stop", "start"))
    for vm in qhost.vms:
        assert counting(vm, before[vm.name]), "%s does not count on" % vm.name
        assert vmdef.load_argv(vm.name, hostupdate.ARGV_DIR)[0] == new  # the next update starts from it
        assert os.path.exists(vm.state_path + ".restored")
    j = journal.load_journal()
    assert (j["phase"], j["update_id"], j["qemu_to"], j["manifest_mode"]) == ("restored", "q1", new, "sampled")
    for name, v in j["vms"].items():
        assert (v["state"], v["qemu"], v["qemu_from"], v["verify"]["status"], v["verify"]["mode"]) == (
            "restored", new, old[name][0], "ok", "sampled")
        assert v["blackout_s"] > 0 and not v.get("rolled_back")
        # the old QEMU, kept: the executable that ran the VM
        assert v["qemu_kept"].startswith(qhost.kept) and os.access(v["qemu_kept"], os.X_OK)
        assert qemu_update.file_sha256(v["qemu_kept"]) == qemu_update.file_sha256(REAL)
    assert journal.next_step(j, "boot-a")[0] == "start"  # the next update may begin
    assert set(manifest.load()["files"]) == {"vm1", "vm2"}


@pytest.mark.parametrize("host", [QUOTA], indirect=True)
def test_a_vm_with_a_cpu_quota_moves_without_it_and_runs_on_with_it(qhost, tmp_path):
    """The new QEMU starts and loads the state at full speed (docs/vms.md: at 20% this took 62.8 s
    where the VM without a quota took 14.4 s), and the guest has its quota back once it runs."""
    new = stand_in(tmp_path)
    before = read_counter(qhost.vms[1].mem_path)
    r = qemu_update.update_qemu(qhost.qrun, run_out, new, conf_dir=qhost.conf, kept_dir=qhost.kept, update_id="q9")
    assert r["outcomes"] == {"vm1": "updated", "vm2": "updated"}
    # its cold start (the fixture's), then the new QEMU's start: neither under the quota
    assert qhost.start_quota == {"vm1": [None, None], "vm2": [None, None]}
    assert qhost.quota == {"vm2": "20%"} and counting(qhost.vms[1], before)


def test_a_new_qemu_that_refuses_the_state_is_rolled_back_to_the_old_one(qhost, tmp_path):
    # Without the serial port, the real QEMU meets a device state it has no device for: it refuses.
    new = stand_in(tmp_path, drop={"-serial": 1})
    old = vmdef.load_argv("vm1", hostupdate.ARGV_DIR)
    vm1 = qhost.vms[0]
    before = read_counter(vm1.mem_path)
    with pytest.raises(qemu_update.QemuUpdateError, match="vm1 rolled back: the new QEMU did not restore it") as exc:
        qemu_update.update_qemu(qhost.qrun, run_out, new, names=["vm1"], conf_dir=qhost.conf, kept_dir=qhost.kept,
                                update_id="q2")
    assert exc.value.result["outcomes"] == {"vm1": "rolled_back"}
    j = journal.load_journal()
    v = j["vms"]["vm1"]
    kept = v["qemu_kept"]
    # First the new binary, then the old one (kept), each with the VM's own argv and -incoming defer.
    assert qhost.execs == [[new] + old[1:] + ["-incoming", "defer"], [kept] + old[1:] + ["-incoming", "defer"]]
    assert started(qhost) == [["stop", "guestmemfs-vm@vm1.service"], ["start", "guestmemfs-vm@vm1.service"]] * 2
    assert (j["phase"], v["state"], v["qemu"], v["rolled_back"], v["verify"]["status"]) == (
        "rolled_back", "restored", kept, True, "ok")
    assert v["new_qemu_error"] and "resuming_boot_id" in v  # resumed once: by the old QEMU
    assert counting(vm1, before)
    assert cpr.status(qhost.vms[1]) == "running" and "vm2" not in j["vms"]  # not named: untouched
    log = [e["msg"] for e in j["log"]]
    assert any("restoring it by the old one" in m for m in log), log


def test_a_new_qemu_that_does_not_start_is_rolled_back_to_the_old_one(qhost, tmp_path, monkeypatch):
    # It exits at once on the restore's argv (a missing library, an option it no longer knows).
    new = stand_in(tmp_path)
    path = os.path.join(os.path.dirname(new), "qemu-system-x86_64")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("drop = ", "if '-incoming' in args:\n    sys.exit('cannot start')\ndrop = "))
    monkeypatch.setattr(hostupdate, "RESTORE_CONNECT_WAIT_S", 3)
    vm2 = qhost.vms[1]
    before = read_counter(vm2.mem_path)
    with pytest.raises(qemu_update.QemuUpdateError, match="vm2 rolled back: the new QEMU did not restore it"):
        qemu_update.update_qemu(qhost.qrun, run_out, new, names=["vm2"], conf_dir=qhost.conf, kept_dir=qhost.kept)
    v = journal.load_journal()["vms"]["vm2"]
    assert (v["state"], v["qemu"], v["rolled_back"]) == ("restored", v["qemu_kept"], True)
    assert "cannot connect to QMP" in v["new_qemu_error"]
    assert [a[0] for a in qhost.execs] == [new, v["qemu_kept"]]
    assert counting(vm2, before)


def test_memory_that_does_not_verify_is_held_never_resumed_by_either_qemu(qhost, tmp_path):
    new = stand_in(tmp_path)
    vm1 = qhost.vms[0]

    def corrupting(argv):
        if argv[:2] == ["systemctl", "start"]:
            with open(vm1.mem_path, "r+b") as fh:  # something wrote into the memory while it was saved
                fh.seek(8 * MiB)
                fh.write(b"\xa5" * MiB)
        return qhost.qrun(argv)
    with pytest.raises(qemu_update.QemuUpdateError, match="vm1 NOT resumed"):
        qemu_update.update_qemu(corrupting, run_out, new, names=["vm1"], mode="full", conf_dir=qhost.conf,
                                kept_dir=qhost.kept)
    j = journal.load_journal()
    assert (j["phase"], j["vms"]["vm1"]["state"], j["vms"]["vm1"]["verify"]["status"]) == (
        "held", "held", "content_changed")
    assert qhost.execs == [] and cpr.status(vm1) is None and os.path.exists(vm1.state_path)
    assert journal.next_step(j, "boot-a")[0] == "blocked"


def test_a_new_qemu_that_crashes_after_the_resume_is_never_restored_again(qhost, tmp_path):
    """docs/qemu-update.md's row "the new QEMU crashes after the resume": the guest ran past its
    saved state, so its unit's next start boots it afresh; the state is never loaded again, the
    update's journal keeps what happened."""
    new = stand_in(tmp_path)
    vm2 = qhost.vms[1]
    r = qemu_update.update_qemu(qhost.qrun, run_out, new, names=["vm2"], conf_dir=qhost.conf, kept_dir=qhost.kept,
                                update_id="q5")
    assert r["outcomes"] == {"vm2": "updated"}
    assert counting(vm2, read_counter(vm2.mem_path))
    for pid, _comm, _path in procs.users(vm2.mem_path, mapped_only=True):
        os.kill(pid, signal.SIGSEGV)  # the new QEMU crashes
    hostupdate.wait_unmapped([vm2], 10)
    assert cpr.status(vm2) is None and not os.path.exists(vm2.state_path)
    # The recovery the row gives: start its unit.
    del qhost.execs[:]
    assert qhost.run(["systemctl", "start", "guestmemfs-vm@vm2.service"]) == 0
    assert len(qhost.execs) == 1 and "-incoming" not in qhost.execs[0], qhost.execs  # a cold start
    deadline = time.monotonic() + 60
    while cpr.status(vm2) != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cpr.status(vm2) == "running"
    j = journal.load_journal()
    assert (j["update_id"], j["phase"], j["vms"]["vm2"]["state"]) == ("q5", "restored", "restored")
    assert journal.next_step(j, "boot-a")[0] == "start"  # nothing left to restore: the next update may begin


def test_a_qemu_update_in_flight_keeps_its_vms_open_and_a_dead_one_rolls_back():
    j = {"update_id": "q1", "phase": journal.QEMU_UPDATE_PHASE, "from_boot_id": "boot-a", "saver_pid": 42,
         "vms": {"vm1": {"state": "saved"}, "vm2": {"state": "running"}}}
    assert journal.next_step(j, "boot-a", pid_alive=lambda pid: True)[0] == "wait_save"
    assert journal.next_step(j, "boot-a", pid_alive=lambda pid: False)[0] == "rollback"
    assert journal.next_step(j, "boot-b", pid_alive=lambda pid: False)[0] == "blocked"


def test_the_agent_command(qhost, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cpr, "CONF_DIR", qhost.conf)
    monkeypatch.setattr(qemu_update, "KEPT_DIR", qhost.kept)
    assert agent.main(["qemu-update", "--binary", "/nonexistent/qemu"]) == 5
    assert "does not exist" in capsys.readouterr().err
    assert agent.main(["qemu-update"]) == 2
    assert agent.main(["qemu-update", "--keep-only", "vm2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vm2: its running QEMU is kept as %s/" % qhost.kept)
    kept = out.split(" kept as ")[1].strip()
    assert qemu_update.file_sha256(kept) == qemu_update.file_sha256(REAL) and cpr.status(qhost.vms[1]) == "running"
    a = agent.parser().parse_args(["qemu-update", "--binary", "/usr/bin/q", "--parallel", "2", "--mode", "full",
                                   "vm1", "vm2"])
    assert (a.binary, a.parallel, a.mode, a.names) == ("/usr/bin/q", 2, "full", ["vm1", "vm2"])
    with pytest.raises(SystemExit):
        agent.parser().parse_args(["qemu-update", "--binary", "/usr/bin/q", "--parallel", "0"])


def test_the_module_in_check_mode_probes_and_changes_nothing(qhost, tmp_path, monkeypatch, capsys):
    from conftest import run_main
    from ansible_collections.guestmemfs.liveupdate.plugins.modules import qemu_update as module
    monkeypatch.setattr(cpr, "CONF_DIR", qhost.conf)
    monkeypatch.setattr(qemu_update, "KEPT_DIR", qhost.kept)
    rc, out = run_main(capsys, module, {"binary": REAL, "_ansible_check_mode": True})
    assert rc == 1 and "lacks cpr-reboot" in out["msg"] and "Nothing was paused" in out["msg"]
    new = stand_in(tmp_path)
    rc, out = run_main(capsys, module, {"binary": new, "vms": ["vm1"], "_ansible_check_mode": True})
    assert rc == 0 and out["changed"] and out["vms"] == {"vm1": "qemu-system-x86_64"}
    assert out["probe"]["version"] == "10.0" and out["probe"]["already"] == []
    assert qhost.calls == [] and not os.path.exists(qhost.kept) and journal.load_journal().get("phase") is None
    rc, out = run_main(capsys, module, {"state": "updated"})
    assert rc == 1 and "binary" in out["msg"]
    rc, out = run_main(capsys, module, {"binary": new, "vms": ["VM 1"]})
    assert rc == 1 and "VM names" in out["msg"]
