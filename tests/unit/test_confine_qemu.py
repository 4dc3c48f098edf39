"""A confined QEMU on this machine, for real: the VM unit's own vm-run and vm-restore start the
counting guest as an unprivileged user (nobody) under -sandbox on,obsolete=deny,
elevateprivileges=deny,spawn=deny,resourcecontrol=deny, with its QMP socket handed over as a
descriptor; the live update saves it (cpr-reboot, device state only) and restores it, confined
again, and the guest counts on. A VM started before confinement (recorded argv without -sandbox)
restores as it ran, as root, and is confined at its next cold start.

What stands in: the exec of the unit's process (QEMU is spawned, and the real privilege drop runs
in the child); the kexec (refused: no kernel loaded, so the update restores on this kernel). This
machine's QEMU (7.2) has no file: migration URI and the sandbox forbids exec:, so for a QEMU older
than 9 the test's QMP client hands the state file to QEMU as a descriptor (getfd + fd:), opened by
root as the agent would; QEMU 9 and newer are driven as they are (file:, the path given to the
user by the agent)."""

import array
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    confine, cpr, hostupdate, journal, luo, manifest, qmp, vmdef)

from counter_guest import counter_guest, read_counter
from test_host_update import Exec, Kexec, qemu_major
from unit_stand_in import UnitSteps

MiB = 1024 * 1024
USER = "nobody"

pytestmark = [
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86 is installed by scripts/bootstrap"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting QEMU as another user needs root"),
]


class FdState(qmp.QMP):
    """QMP to a QEMU older than 9: no cpr-reboot mode (its default mode migrates the same device
    state with x-ignore-shared), no file: URI - the state file goes over as a descriptor."""

    def _send_fd(self, fd, name):
        msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
        self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        while True:
            resp = self._read()
            if "event" in resp:
                self.events.append(resp)
                continue
            assert "return" in resp, resp
            return

    def cmd(self, execute, **args):
        if execute == "migrate-set-parameters" and args.get("mode") == "cpr-reboot":
            return {}
        uri = args.get("uri", "")
        if execute in ("migrate", "migrate-incoming") and uri.startswith("file:"):
            path = uri[len("file:"):]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC if execute == "migrate" else os.O_RDONLY, 0o600)
            try:
                self._send_fd(fd, "state")
            finally:
                os.close(fd)
            args["uri"] = "fd:state"
        return qmp.QMP.cmd(self, execute, **args)


def proc_status(pid):
    with open("/proc/%d/status" % pid) as fh:
        return dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)


@pytest.fixture
def host(monkeypatch):
    """One VM, the counting guest, configured as vm_definition writes it, under a directory tree
    QEMU's user can search (pytest's own temporary directory is root's only)."""
    if qemu_major() < 9:
        monkeypatch.setattr(cpr, "QMP", FdState)
    base = tempfile.mkdtemp(prefix="glu-confine-", dir="/tmp")
    os.chmod(base, 0o711)
    monkeypatch.setattr(journal, "JOURNAL", os.path.join(base, "journal.json"))
    monkeypatch.setattr(manifest, "MANIFEST_PATH", os.path.join(base, "manifest.json"))
    monkeypatch.setattr(hostupdate, "ARGV_DIR", os.path.join(base, "argv"))
    boot = {"id": "boot-a"}
    monkeypatch.setattr(journal, "boot_id", lambda: boot["id"])
    monkeypatch.setattr(manifest.hostinfo, "boot_id", lambda: boot["id"])
    root = os.path.join(base, "root", "sys", "kernel")
    os.makedirs(root)
    with open(os.path.join(root, "kexec_loaded"), "w") as fh:
        fh.write("0\n")  # the kexec is refused: the update restores on this kernel
    monkeypatch.setattr(hostupdate, "ROOT", os.path.join(base, "root"))

    def reboot(cmd):
        raise Kexec()
    monkeypatch.setattr(luo, "reboot", reboot)
    procs, pending = [], {}
    real_become = confine.become

    def become(fds, uid, gid, groups):  # in the child QEMU becomes; here only noted
        pending["drop"] = (fds, uid, gid, groups)

    def spawn(prog, argv):
        fds, uid, gid, groups = pending.pop("drop", ({}, None, None, None))
        kw = {}
        if uid is not None:
            kw = {"pass_fds": sorted(fds), "preexec_fn": lambda: real_become(fds, uid, gid, groups)}
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw))
        for fd in fds.values():
            os.close(fd)
        raise Exec()
    monkeypatch.setattr(confine, "become", become)
    monkeypatch.setattr(hostupdate.os, "execvp", spawn)
    steps = UnitSteps(procs)  # the unit's step forked beside its agent, run here once QEMU started
    monkeypatch.setattr(hostupdate, "fork_unit_step", steps.fork)
    conf_dir = os.path.join(base, "conf")
    os.makedirs(conf_dir, 0o700)
    run_dir = os.path.join(base, "run")
    os.makedirs(run_dir, 0o700)  # QEMU never sees it: its QMP socket is handed over
    for d in ("mem", "log", "guest"):
        os.makedirs(os.path.join(base, d), 0o755)
    kernel = os.path.join(base, "guest", "counter.mb")
    with open(kernel, "wb") as fh:
        fh.write(counter_guest())
    os.chmod(kernel, 0o644)
    mem = os.path.join(base, "mem", "vm1.ram")
    with open(mem, "wb") as fh:
        fh.write(bytes(64 * MiB))
    os.chmod(mem, 0o600)

    def unit(name):
        try:
            rc = hostupdate.vm_run(name, conf_dir=conf_dir, run=run)
        except Exec:
            rc = 0
        return rc or steps.run_step()

    def run(argv):
        assert argv[:2] == ["systemctl", "start"], argv
        return unit(argv[2][len("guestmemfs-vm@"):-len(".service")])

    def configure(user):
        conf = {"name": "vm1", "memory_bytes": 64 * MiB, "mem_path": mem, "machine": "q35", "accel": "tcg",
                "kernel": kernel, "serial_log": os.path.join(base, "log", "vm1.serial.log"),
                "qmp": os.path.join(run_dir, "vm1.qmp"), "state": os.path.join(base, "state", "vm1.state")}
        if user:
            conf["qemu_user"] = user
        with open(os.path.join(conf_dir, "vm1.json"), "w") as fh:
            json.dump(conf, fh)
        return cpr.VM.load("vm1", conf_dir)

    h = type("Host", (), {})()
    h.base, h.conf, h.boot, h.run, h.unit, h.procs, h.configure = base, conf_dir, boot, run, unit, procs, configure
    yield h
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(base, ignore_errors=True)


def wait_counting(vm, after=0, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cpr.status(vm) == "running" and read_counter(vm.mem_path) > after:
            return True
        time.sleep(0.2)
    return False


def live(procs):
    return [p for p in procs if p.poll() is None]


def test_a_confined_vm_runs_unprivileged_sandboxed_and_survives_a_save_and_restore(host):
    vm = host.configure(USER)
    nobody = pwd.getpwnam(USER)
    assert host.unit("vm1") == 0
    assert wait_counting(vm), "the confined guest never counted"
    (qemu,) = live(host.procs)
    st = proc_status(qemu.pid)
    assert st["Uid"].split() == [str(nobody.pw_uid)] * 4 and st["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert st["Groups"].split() == [str(nobody.pw_gid)] and st["Seccomp"].strip() == "2"  # its group, the filter
    assert st["CapEff"].strip() == "0000000000000000"
    # What it opens by path is its own; its QMP socket stays root's, in a directory it cannot enter.
    for path in (vm.mem_path, vm.conf["serial_log"]):
        assert (os.stat(path).st_uid, oct(os.stat(path).st_mode & 0o777)) == (nobody.pw_uid, "0o600")
    assert os.stat(vm.qmp_path).st_uid == 0
    rec = vmdef.load_record("vm1", hostupdate.ARGV_DIR)
    assert rec["launch"] == {"user": USER, "nics": {}} and "-sandbox" in rec["argv"]
    before = read_counter(vm.mem_path)
    with pytest.raises(hostupdate.UpdateError, match="no kernel is loaded for kexec.*vm1 restored"):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="c1")
    assert qemu.wait(30) == 0  # quit after its save
    assert wait_counting(vm, before), "the restored guest does not count on from %d" % before
    (restored,) = live(host.procs)
    st = proc_status(restored.pid)
    assert st["Uid"].split()[0] == str(nobody.pw_uid) and st["Seccomp"].strip() == "2"
    j = journal.load_journal()
    assert j["phase"] == "rolled_back" and j["vms"]["vm1"]["state"] == "restored"
    assert j["vms"]["vm1"]["launch"] == {"user": USER, "nics": {}}
    # The saved state went back to root once QEMU had written it, and stays root's.
    assert os.stat(vm.state_path + ".restored").st_uid == 0


def test_a_vm_started_before_confinement_restores_as_it_ran_then_is_confined_at_its_next_cold_start(host):
    vm = host.configure(None)  # the configuration and the argv of an agent before confinement
    assert host.unit("vm1") == 0
    assert wait_counting(vm)
    (old,) = live(host.procs)
    assert proc_status(old.pid)["Uid"].split()[0] == "0"
    record = vmdef.argv_record_path("vm1", hostupdate.ARGV_DIR)
    with open(record) as fh:
        rec = json.load(fh)
    del rec["launch"]  # exactly what an older agent recorded
    with open(record, "w") as fh:
        json.dump(rec, fh)
    legacy = rec["argv"]
    assert "-sandbox" not in legacy and "-qmp" in legacy
    vm = host.configure(USER)  # the role rewrote its configuration: confined from its next cold start
    before = read_counter(vm.mem_path)
    with pytest.raises(hostupdate.UpdateError, match="vm1 restored"):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="c2")
    assert wait_counting(vm, before)
    (restored,) = live(host.procs)
    assert proc_status(restored.pid)["Uid"].split()[0] == "0"  # as it ran: its argv is the recorded one
    assert vmdef.load_argv("vm1", hostupdate.ARGV_DIR) == legacy
    assert journal.load_journal()["vms"]["vm1"]["argv"] == legacy
    # Its next cold start is confined.
    restored.kill()  # stopped (the counting guest ignores ACPI)
    restored.wait()
    assert host.unit("vm1") == 0
    assert wait_counting(vm)
    (confined,) = live(host.procs)
    assert proc_status(confined.pid)["Uid"].split()[0] == str(pwd.getpwnam(USER).pw_uid)


def test_a_path_the_user_cannot_reach_refuses_the_start_and_changes_nothing(host):
    vm = host.configure(USER)
    os.chmod(os.path.join(host.base, "guest"), 0o700)  # the kernel's directory: root's only
    mem_owner = os.stat(vm.mem_path).st_uid
    assert host.unit("vm1") == 9
    assert live(host.procs) == [] and os.stat(vm.mem_path).st_uid == mem_owner == 0
    assert not os.path.exists(vm.qmp_path)


def test_a_confined_vm_on_a_memfd_maps_the_descriptor_the_agent_hands_over(host):
    """The luo backend's case: the memfd is reachable only through its holder's /proc link (here
    this test process holds it), which QEMU's user cannot follow: the agent opens it and QEMU maps
    /proc/self/fd/3."""
    memfd = os.memfd_create("vm1", 0)
    os.ftruncate(memfd, 64 * MiB)
    link = os.path.join(host.base, "run", "vm1.memfd")
    os.symlink("/proc/%d/fd/%d" % (os.getpid(), memfd), link)
    vm = host.configure(USER)
    conf = dict(vm.conf, mem_path=link, mem_fd=True)
    with open(os.path.join(host.conf, "vm1.json"), "w") as fh:
        json.dump(conf, fh)
    vm = cpr.VM.load("vm1", host.conf)
    try:
        assert host.unit("vm1") == 0
        assert wait_counting(vm), "the guest never counted on the handed memfd"
        (qemu,) = live(host.procs)
        assert proc_status(qemu.pid)["Uid"].split()[0] == str(pwd.getpwnam(USER).pw_uid)
        assert "mem-path=/proc/self/fd/3" in " ".join(vmdef.load_argv("vm1", hostupdate.ARGV_DIR))
        with open("/proc/%d/maps" % qemu.pid) as fh:  # the memfd itself, shared
            assert any("/memfd:vm1" in line and line.split()[1].startswith("rw-s") for line in fh)
        before = read_counter(vm.mem_path)
        with pytest.raises(hostupdate.UpdateError, match="vm1 restored"):
            hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="c3")
        assert wait_counting(vm, before)
    finally:
        os.close(memfd)


@pytest.fixture
def private_net():
    """This thread (and the QEMUs it starts) in a network namespace of the test's own, with a bridge
    br-t; back in the machine's afterwards."""
    if not (hasattr(os, "unshare") and shutil.which("ip") and os.path.exists("/dev/net/tun")):
        pytest.skip("needs os.unshare (Python 3.12), ip and /dev/net/tun")
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        os.unshare(os.CLONE_NEWNET)
    except OSError as exc:
        os.close(back)
        pytest.skip("no network namespace here: %s" % exc)
    try:
        subprocess.check_call(["ip", "link", "add", "br-t", "type", "bridge"])
        subprocess.check_call(["ip", "link", "set", "br-t", "up"])
        yield
    finally:
        os.setns(back, os.CLONE_NEWNET)
        os.close(back)


def bridge_ports(bridge):
    out = subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True, check=True)
    return sorted((link["ifname"], "UP" in link["flags"]) for link in json.loads(out.stdout or "[]"))


def bridged(host, bridge):
    vm = host.configure(USER)
    with open(os.path.join(host.conf, "vm1.json"), "w") as fh:
        json.dump(dict(vm.conf, nics=[{"type": "bridge", "bridge": bridge, "mac": "52:54:00:00:00:01",
                                       "model": "virtio-net-pci"}]), fh)
    return cpr.VM.load("vm1", host.conf)


def test_a_vm_whose_bridge_comes_after_its_unit_started_waits_for_it_and_joins_it(host, private_net):
    # The VM unit is no longer ordered after the bridge's udev device (issue 20): the agent waits
    # for the kernel's interface. Before, a VM started before its bridge existed failed at once (exit 9).
    vm = bridged(host, "br-late")
    later = subprocess.Popen(["sh", "-c", "sleep 1; ip link add br-late type bridge && ip link set br-late up"])
    try:
        assert host.unit("vm1") == 0
    finally:
        assert later.wait(timeout=60) == 0
    assert wait_counting(vm)
    assert bridge_ports("br-late") == [("gmq0", True)]


def test_a_vm_whose_bridge_never_comes_is_not_started_saying_which(host, private_net, monkeypatch, capsys):
    monkeypatch.setattr(confine, "NIC_WAIT_S", 1)
    bridged(host, "br-none")
    assert host.unit("vm1") == 9
    assert live(host.procs) == []
    assert ("vm1 NOT started: interface br-none does not exist after 1 s (a bridge or tap its NICs use)"
            in capsys.readouterr().err)


def test_a_confined_vm_with_a_bridged_nic_gets_its_tap_on_the_bridge_again_after_a_restore(host, private_net):
    vm = host.configure(USER)
    conf = dict(vm.conf, nics=[{"type": "bridge", "bridge": "br-t", "mac": "52:54:00:00:00:01",
                                "model": "virtio-net-pci"}])
    with open(os.path.join(host.conf, "vm1.json"), "w") as fh:
        json.dump(conf, fh)
    vm = cpr.VM.load("vm1", host.conf)
    assert host.unit("vm1") == 0
    assert wait_counting(vm)
    (qemu,) = live(host.procs)
    assert "tap,id=net0,fd=6" in vmdef.load_argv("vm1", hostupdate.ARGV_DIR)
    assert os.readlink("/proc/%d/fd/6" % qemu.pid) == "/dev/net/tun"
    assert bridge_ports("br-t") == [("gmq0", True)]
    before = read_counter(vm.mem_path)
    with pytest.raises(hostupdate.UpdateError, match="vm1 restored"):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="c4")
    assert wait_counting(vm, before)
    # The saved QEMU's tap went with it; the restored one has its own, on the same bridge.
    assert len(live(host.procs)) == 1 and bridge_ports("br-t") == [("gmq0", True)]
    assert journal.load_journal()["vms"]["vm1"]["launch"] == {"user": USER, "nics": {"6": {"bridge": "br-t"}}}
