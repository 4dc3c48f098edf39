"""The test guest and the QMP client against a real QEMU on this machine (TCG): the counter runs
in a shared RAM file, and stop/cont over QMP freeze and release it."""

import json
import shutil
import subprocess
import time

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, hostupdate, journal, vmdef

from counter_guest import counter_guest, read_counter
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMP, QMPError

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                reason="qemu-system-x86 is installed by scripts/bootstrap")


def test_counter_guest_is_a_multiboot_image():
    img = counter_guest()
    assert len(img) == 32 + 143
    magic, flags, checksum = int.from_bytes(img[0:4], "little"), int.from_bytes(img[4:8], "little"), \
        int.from_bytes(img[8:12], "little")
    assert magic == 0x1BADB002 and (magic + flags + checksum) & 0xFFFFFFFF == 0


@pytest.fixture
def vm(tmp_path):
    kernel = tmp_path / "counter.mb"
    kernel.write_bytes(counter_guest())
    mem = tmp_path / "vm.ram"
    with open(mem, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    v = cpr.VM({"name": "t", "memory_bytes": 64 * 1024 * 1024, "mem_path": str(mem), "machine": "q35",
                "accel": "tcg", "kernel": str(kernel), "serial_log": str(tmp_path / "serial.log"),
                "qmp": str(tmp_path / "qmp.sock"), "state": str(tmp_path / "t.state")})
    proc = subprocess.Popen(v.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield v
    proc.kill()
    proc.wait()


def test_counter_runs_and_stop_freezes_it(vm):
    q = QMP(vm.qmp_path, timeout=10)
    q.connect(wait=20)
    try:
        deadline = time.time() + 30
        while read_counter(vm.mem_path) == 0 and time.time() < deadline:
            time.sleep(0.2)
        first = read_counter(vm.mem_path)
        assert first > 0, "the guest never counted"
        q.cmd("stop")
        q.wait_event("STOP", 10)
        frozen = read_counter(vm.mem_path)
        time.sleep(0.5)
        assert read_counter(vm.mem_path) == frozen
        assert q.cmd("query-status")["status"] == "paused"
        q.cmd("cont")
        q.wait_event("RESUME", 10)
        time.sleep(0.5)
        assert read_counter(vm.mem_path) != frozen
    finally:
        q.close()


def test_the_counter_counts_ticks_and_halts_between_them(vm):
    # A counting VM must not take its host's CPU from what the tests measure (a fleet host runs one
    # beside the real guest for the whole run): between the PIT's ticks it halts.
    with QMP(vm.qmp_path, timeout=10) as q:
        q.connect(wait=20)
        pid = int(next(t for t in q.cmd("query-cpus-fast")).get("thread-id"))
    deadline = time.time() + 30
    while read_counter(vm.mem_path) == 0 and time.time() < deadline:
        time.sleep(0.2)
    with open("/proc/%d/stat" % pid) as fh:
        cpu0 = sum(int(x) for x in fh.read().rsplit(")", 1)[1].split()[11:13])
    start, t0 = read_counter(vm.mem_path), time.time()
    time.sleep(3)
    with open("/proc/%d/stat" % pid) as fh:
        cpu1 = sum(int(x) for x in fh.read().rsplit(")", 1)[1].split()[11:13])
    counted, wall = read_counter(vm.mem_path) - start, time.time() - t0
    assert counted > 0, "the guest stopped counting"
    # its vCPU thread's CPU ticks (1/100 s) over the 3 s: a spinning guest takes about all of them
    assert (cpu1 - cpu0) / 100.0 < wall / 3, (cpu1 - cpu0, wall, counted)


def test_qmp_error_is_reported(vm):
    with QMP(vm.qmp_path, timeout=10) as q:
        q.connect(wait=20)
        with pytest.raises(QMPError, match="no-such-command"):
            q.cmd("no-such-command")


def test_argv_has_shared_ram_and_incoming(vm):
    argv = vmdef.incoming_argv(vm.argv())
    assert "memory-backend-file,id=ram0,size=64M,mem-path=%s,share=on" % vm.mem_path in argv
    assert argv[-2:] == ["-incoming", "defer"] and "q35,memory-backend=ram0" in argv


def test_shutdown_policy_leaves_a_guest_that_ignores_the_power_button_running(vm, tmp_path, monkeypatch):
    # The counting guest has no ACPI: the power button does nothing, and the update must say so and
    # leave the VM running rather than pause anything.
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "t.json").write_text(json.dumps(vm.conf))
    q = QMP(vm.qmp_path, timeout=10)
    q.connect(wait=20)
    q.close()
    calls = []
    with pytest.raises(hostupdate.UpdateError, match="t did not shut down within 2s after the power button"):
        hostupdate.shutdown_for_update(["t"], calls.append, conf_dir=str(conf_dir), timeout=2, poll=0.2)
    assert cpr.status(vm) == "running" and calls == []
