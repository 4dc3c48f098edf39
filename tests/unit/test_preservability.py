"""Preservability over QEMU's own answers, recorded from a real QEMU 10.0 in a fleet host
(tests/fleet/record_qemu.py), plus the argv, reopen and host checks and the module."""

import json
import os
import socket

import pytest
from conftest import FIXTURES, run_main

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import preservability as P
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import parse_meminfo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMPError
from ansible_collections.guestmemfs.liveupdate.plugins.modules import vm_preservability

Q10 = os.path.join(FIXTURES, "qemu-10.0")
Q11 = os.path.join(FIXTURES, "qemu-11.1")
SCENARIOS = ["clean", "not_shared", "plain_m", "blocker_ivshmem", "blocker_vdi_normal_only"]


def recorded(where):
    return sorted(f[:-5] for f in os.listdir(where) if f.endswith(".json") and f != "machines.json")


def rec(name, where=Q10):
    with open(os.path.join(where, name + ".json")) as fh:
        return json.load(fh)


def machines(where=Q10):
    return P.parse_machine_help(rec("machines", where)["machine_help"])


def mem_path_of(argv):
    for a in argv:
        if a.startswith("memory-backend-file,id=ram0,"):
            return P.split_opts(a)[1]["mem-path"]
    return "/mnt/pmem/vm.ram"


def conf_of(r, **kw):
    c = {"name": r["scenario"], "memory_bytes": 64 << 20, "mem_path": mem_path_of(r["argv"]), "backend": "pmem",
         "machine": "pc-q35-10.0", "qemu": r["argv"][0], "argv": r["argv"], "disks": [], "nics": []}
    c.update(kw)
    return c


class Replay(object):
    """A QMP stand-in that gives the recorded answers, in the recorded order, to the same questions."""

    def __init__(self, transcript):
        self.left = list(transcript)

    def cmd(self, execute, **arguments):
        assert self.left, "asked %s after the recording ended" % execute
        e = self.left.pop(0)
        assert (execute, arguments) == (e["execute"], e.get("arguments", {}))
        if "error" in e:
            raise QMPError(e["error"])
        return e["return"]

    def close(self):
        pass


# -- QEMU's answers -------------------------------------------------------------------------------

@pytest.mark.parametrize("where,name", [(w, n) for w in (Q10, Q11) for n in recorded(w)])
def test_ask_qemu_asks_what_was_recorded(where, name):
    r = rec(name, where)
    q = Replay(r["transcript"])
    assert P.ask_qemu(q) == r["answers"]
    assert not q.left
    # The previous mode and capabilities are put back after the question.
    sets = [e for e in r["transcript"] if e["execute"].startswith("migrate-set")]
    assert sets[-2:] == [
        {"execute": "migrate-set-parameters", "arguments": {"mode": "normal"}, "return": {}},
        {"execute": "migrate-set-capabilities", "return": {}, "arguments": {"capabilities": [
            {"capability": "events", "state": False}, {"capability": "x-ignore-shared", "state": False}]}}]


def test_recorded_qemu_is_10_0():
    assert rec("clean")["version"].startswith("QEMU emulator version 10.0.")
    assert rec("machines")["query-version"]["qemu"]["major"] == 10


def test_clean_vm_is_preservable():
    r = rec("clean")
    assert P.vm_problems(conf_of(r), r["answers"], machines(), "pmem") == []
    # QEMU agrees: the cpr-reboot save to a file completed.
    assert r["migrate"]["query-migrate"]["status"] == "completed"


def test_ram_not_shared_is_refused():
    r = rec("not_shared")
    probs = P.vm_problems(conf_of(r), r["answers"], machines(), "pmem")
    assert [(p["vm"], p["check"]) for p in probs] == [("not_shared", "memory")]
    assert "memory backend ram0 (memory-backend-file, " in probs[0]["detail"]
    assert "has share=off: its pages are private to QEMU" in probs[0]["detail"]
    # QEMU itself would have saved it: share=off is no blocker, the RAM just goes into the state file.
    assert r["answers"]["query-migrate cpr-reboot"] == {}
    assert r["migrate"]["query-migrate"]["status"] == "completed"


def test_plain_m_is_refused_once():
    r = rec("plain_m")
    # QEMU made its own backend for -m: pc.ram, anonymous RAM, set as the machine's.
    assert r["answers"]["qom-get /machine memory-backend"] == "/objects/pc.ram"
    assert P.qemu_backends(r["answers"]) == [{"id": "pc.ram", "type": "memory-backend-ram", "size": 64 << 20,
                                              "share": False}]
    probs = P.vm_problems(conf_of(r, mem_path="/mnt/pmem/plain_m.ram"), r["answers"], machines(), "pmem")
    assert len(probs) == 1 and probs[0]["check"] == "memory"
    assert probs[0]["detail"].startswith("RAM is not on a memory backend (plain -m)")
    assert "/mnt/pmem/plain_m.ram" in probs[0]["detail"]


def test_migration_blocker_from_qemus_answer():
    r = rec("blocker_ivshmem")
    reason = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
    assert r["answers"]["query-migrate cpr-reboot"] == {"blocked-reasons": [reason]}
    assert r["migrate"] == {"error": "migrate: " + reason}
    assert reason in r["only_migratable"]["stderr"]
    probs = P.vm_problems(conf_of(r), r["answers"], machines(), "pmem")
    assert {"vm": "blocker_ivshmem", "check": "migration_blocker",
            "detail": "QEMU blocks a cpr-reboot migration: " + reason} in probs
    # ivshmem's memory is a second backend, on /dev/shm: not preserved either.
    assert any(p["check"] == "memory" and "memory backend shm0 (memory-backend-file, /dev/shm/record-ivshmem) "
               "is not the VM's backend file" in p["detail"] for p in probs)


def test_blockers_depend_on_the_mode_not_on_the_capabilities():
    r = rec("blocker_vdi_normal_only")
    normal = r["answers"]["query-migrate"]["blocked-reasons"]
    assert len(normal) == 1 and normal[0].startswith("The vdi format used by node")
    assert r["answers"]["query-migrate cpr-reboot"] == {}
    b = r["blockers_by_setting"]
    assert b["caps_on_mode_cpr_reboot"] == b["caps_off_mode_cpr_reboot"] == {}
    assert b["caps_on_mode_normal"] == b["caps_off_mode_normal"] == {"blocked-reasons": normal}
    # Asked in the save's mode, the VDI disk is no blocker; QEMU saved it.
    assert P.vm_problems(conf_of(r), r["answers"], machines(), "pmem") == []
    assert r["migrate"]["query-migrate"]["status"] == "completed"


def test_qemu_not_answering_is_a_problem():
    r = rec("clean")
    probs = P.vm_problems(conf_of(r), {"error": "cannot connect to QMP /x: refused"}, machines(), "pmem")
    assert probs[0]["check"] == "qemu" and "QEMU did not answer over QMP (cannot connect" in probs[0]["detail"]


def test_machine_type_missing_in_the_target_binary():
    r = rec("clean")
    q10 = machines()
    assert "pc-q35-10.0" in q10 and "q35" in q10 and "pc-q35-2.12" in q10
    target = set(m for m in q10 if m != "pc-q35-10.0")
    probs = P.vm_problems(conf_of(r, qemu="/usr/bin/qemu-system-x86_64"), r["answers"], target, "pmem")
    assert probs == [{"vm": "clean", "check": "machine", "detail": "machine type pc-q35-10.0 is not offered by "
                      "the restoring QEMU /usr/bin/qemu-system-x86_64: it could not load the saved state"}]
    # The machine type is QEMU's (an alias resolved), not the configuration's.
    assert P.machine_type(r["answers"]) == "pc-q35-10.0"
    assert P.machines_from_query(rec("machines")["query-machines"]) == q10


def test_machine_types_10_0_offers_and_11_1_does_not():
    # QEMU 11.1 dropped the pc/q35 machine types up to 5.1 that 10.0 still offered (deprecated).
    gone = machines() - machines(Q11)
    assert "pc-q35-10.0" in machines(Q11) and "pc-q35-2.12" in gone and "pc-q35-5.1" in gone
    assert "pc-q35-5.2" not in gone
    assert rec("machines", Q11)["query-version"]["qemu"]["major"] == 11
    # A VM QEMU 10.0 runs on pc-q35-2.12 (it warns the type is deprecated, and saves it fine)...
    r = rec("old_machine")
    assert r["answers"]["qom-get /machine type"] == "pc-q35-2.12-machine"
    assert "Machine type 'pc-q35-2.12' is deprecated" in r["stderr"]
    assert r["migrate"]["query-migrate"]["status"] == "completed"
    assert P.vm_problems(conf_of(r), r["answers"], machines(), "pmem") == []
    # ...cannot be restored by 11.1, whatever its configuration says.
    probs = P.vm_problems(conf_of(r, qemu="/usr/bin/qemu-system-x86_64"), r["answers"], machines(Q11), "pmem")
    assert details(probs) == [("machine", "machine type pc-q35-2.12 is not offered by the restoring QEMU "
                                          "/usr/bin/qemu-system-x86_64: it could not load the saved state")]


# -- argv -----------------------------------------------------------------------------------------

def argv_of(*extra, **kw):
    mp = kw.get("mem_path", "/mnt/pmem/vm1.ram")
    return ["qemu-system-x86_64", "-name", "vm1", "-machine", "pc-q35-10.0,memory-backend=ram0", "-m", "1G",
            "-object", "memory-backend-file,id=ram0,size=1G,mem-path=%s,share=on" % mp] + list(extra)


def details(probs):
    return [(p["check"], p["detail"]) for p in probs]


def test_argv_clean():
    assert P.argv_problems({"name": "vm1", "mem_path": "/mnt/pmem/vm1.ram"}, argv_of(), "pmem") == []


@pytest.mark.parametrize("extra,part", [
    (["-device", "vfio-pci,host=0000:01:00.0"], "device vfio-pci is passthrough"),
    (["-device", "vhost-user-blk-pci,chardev=c0"], "device vhost-user-blk-pci is served by a vhost-user process"),
    (["-device", "vhost-vsock-pci,guest-cid=3"], "device vhost-vsock-pci is a kernel vhost device"),
    (["-netdev", "vhost-user,id=n0,chardev=c0"], "-netdev vhost-user: the network backend is another process"),
    (["--device", "usb-host,hostbus=1,hostaddr=2"], "device usb-host is passthrough"),
])
def test_argv_devices(extra, part):
    probs = P.argv_problems({"name": "vm1", "mem_path": "/mnt/pmem/vm1.ram"}, argv_of(*extra), "pmem")
    assert len(probs) == 1 and probs[0]["vm"] == "vm1" and probs[0]["check"] == "device"
    assert part in probs[0]["detail"]


def test_argv_memory():
    conf = {"name": "vm1", "mem_path": "/mnt/pmem/vm1.ram"}
    argv = ["qemu-system-x86_64", "-m", "1G", "-machine", "q35"]
    assert "RAM is not on a memory backend (plain -m)" in P.argv_problems(conf, argv, "pmem")[0]["detail"]
    shared_default = ["qemu-system-x86_64", "-machine", "q35,memory-backend=ram0",
                      "-object", "memory-backend-file,id=ram0,size=1G,mem-path=/mnt/pmem/vm1.ram"]
    assert "has share=off" in P.argv_problems(conf, shared_default, "pmem")[0]["detail"]
    other = argv_of(mem_path="/var/lib/vm1.ram")
    assert "is not the VM's backend file /mnt/pmem/vm1.ram" in P.argv_problems(conf, other, "pmem")[0]["detail"]
    legacy = ["qemu-system-x86_64", "-m", "1G", "-mem-path", "/dev/hugepages"]
    assert "-mem-path /dev/hugepages gives private (share=off) RAM" in P.argv_problems(conf, legacy, "pmem")[0]["detail"]
    ram = ["qemu-system-x86_64", "-machine", "q35,memory-backend=m0", "-object", "memory-backend-ram,id=m0,size=1G"]
    assert "memory backend m0 (memory-backend-ram) is anonymous memory: lost at kexec" in \
        P.argv_problems(conf, ram, "pmem")[0]["detail"]


def test_hugetlb_on_luo():
    conf = {"name": "vm1", "mem_path": "/run/guestmemfs-liveupdate/luo/vm1", "backend": "luo"}
    memfd = ["qemu-system-x86_64", "-machine", "q35,memory-backend=m0",
             "-object", "memory-backend-memfd,id=m0,size=1G,hugetlb=on,hugetlbsize=2M"]
    probs = P.argv_problems(conf, memfd)
    assert details(probs) == [("backend", "memory backend m0 (memory-backend-memfd) is hugetlb memory: LUO refuses "
                                          "hugetlb memfds (it preserves shmem memfds only)")]
    hfile = argv_of(mem_path="/dev/hugepages/vm1")
    probs = P.argv_problems(conf, hfile, "luo")
    assert probs[0]["check"] == "backend" and "LUO refuses hugetlb memfds" in probs[0]["detail"]
    probs = P.argv_problems(dict(conf, backend="pmem"), hfile)
    assert "the pmem backend cannot hold it" in probs[0]["detail"]
    # The same from QEMU's answers (a memfd backend says hugetlb).
    answers = {"qom-list /objects": [{"name": "m0", "type": "child<memory-backend-memfd>"}],
               "qom-get /machine memory-backend": "/objects/m0", "qom-get /objects/m0 hugetlb": True,
               "qom-get /objects/m0 share": True, "query-migrate cpr-reboot": {}, "query-status": {"status": "running"}}
    probs = P.vm_problems(dict(conf, argv=None), answers, None, "luo")
    assert details(probs) == [("backend", "memory backend m0 (memory-backend-memfd) is hugetlb memory: LUO refuses "
                                          "hugetlb memfds (it preserves shmem memfds only)")]


def test_passthrough_seen_by_qemu_without_argv():
    r = rec("clean")
    answers = dict(r["answers"])
    answers["qom-list /machine/peripheral"] = [{"name": "gpu0", "type": "child<vfio-pci>"}]
    probs = P.vm_problems(conf_of(r, argv=None), answers, machines(), "pmem")
    assert details(probs) == [("device", "device vfio-pci is passthrough: its state is in host hardware, which "
                                         "cpr-reboot does not save and the new kernel resets")]


def test_split_opts_escaped_comma():
    assert P.split_opts("file,path=/a,,b,share=on") == ("file", {"path": "/a,b", "share": "on"})


# -- disks, NICs, files -----------------------------------------------------------------------------

@pytest.fixture
def host(tmp_path):
    net = tmp_path / "sys-class-net"
    (net / "br0" / "bridge").mkdir(parents=True)
    (net / "br1" / "bridge").mkdir(parents=True)
    (net / "tap-vm1").mkdir()
    (net / "eth0").mkdir()
    etc = tmp_path / "etc-qemu"
    etc.mkdir()
    (etc / "bridge.conf").write_text("# the host's bridges\nallow br0\ninclude %s\n" % (etc / "more.conf"))
    (etc / "more.conf").write_text("allow br2\ndeny br2\n")
    disks = tmp_path / "disks"
    disks.mkdir()
    (disks / "a.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 100)
    (disks / "b.raw").write_bytes(b"\0" * 512)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"x")
    return tmp_path


def reopen(host, disks=(), nics=(), argv=None, **kw):
    conf = {"name": "vm1", "disks": list(disks), "nics": list(nics), "argv": argv or []}
    conf.update(kw)
    env = P.reopen_env(conf, sys_net=str(host / "sys-class-net"), bridge_conf=str(host / "etc-qemu" / "bridge.conf"))
    return P.reopen_problems(conf, env)


def test_reopen_all_good(host):
    d = host / "disks"
    assert reopen(host, disks=[{"path": str(d / "a.qcow2"), "format": "qcow2"},
                               {"path": str(d / "b.raw"), "format": "raw", "readonly": True}],
                  nics=[{"type": "bridge", "bridge": "br0"}, {"type": "tap", "ifname": "tap-vm1"}, {"type": "user"}],
                  argv=["qemu", "-kernel", str(host / "vmlinuz")]) == []


def test_reopen_disks(host):
    d = host / "disks"
    probs = reopen(host, disks=[
        {"path": str(d / "gone.qcow2"), "format": "qcow2"},
        {"path": str(d / "b.raw"), "format": "qcow2"},
        {"path": str(d / "a.qcow2"), "format": "raw"}])
    assert details(probs) == [
        ("disk", "disk %s is missing" % (d / "gone.qcow2")),
        ("disk", "disk %s is defined as qcow2 but the image is raw" % (d / "b.raw")),
        ("disk", "disk %s is defined as raw but the image is qcow2" % (d / "a.qcow2"))]


def test_reopen_unreadable_and_unwritable():
    conf = {"name": "vm1", "disks": [{"path": "/d/a", "format": "raw"}, {"path": "/d/b", "format": "raw"}]}
    env = {"files": {"/d/a": {"exists": True, "readable": False},
                     "/d/b": {"exists": True, "readable": True, "writable": False, "format": "raw"}}}
    assert details(P.reopen_problems(conf, env)) == [
        ("disk", "disk /d/a is not readable"),
        ("disk", "disk /d/b is not writable (the VM has it read-write)")]


def test_reopen_nics(host):
    conf_path = str(host / "etc-qemu" / "bridge.conf")
    probs = reopen(host, nics=[{"type": "bridge", "bridge": "br9"}, {"type": "bridge", "bridge": "br1"},
                               {"type": "tap", "ifname": "tap-gone"}])
    assert details(probs) == [
        ("nic", "bridge br9 does not exist (no /sys/class/net/br9/bridge)"),
        ("nic", "bridge br9 is not allowed in %s (qemu-bridge-helper would refuse it)" % conf_path),
        ("nic", "bridge br1 is not allowed in %s (qemu-bridge-helper would refuse it)" % conf_path),
        ("nic", "tap tap-gone does not exist")]


def test_bridge_conf_include_and_deny(host):
    rules = P.parse_bridge_conf(str(host / "etc-qemu" / "bridge.conf"), P._read_text)
    assert rules == [("allow", "br0"), ("allow", "br2"), ("deny", "br2")]
    assert P.bridge_allowed(rules, "br0") and not P.bridge_allowed(rules, "br2")
    assert P.bridge_allowed([("allow", "all")], "brX") and not P.bridge_allowed([("allow", "all"), ("deny", "all")], "brX")
    probs = reopen(host, nics=[{"type": "bridge", "bridge": "br0"}], bridge_conf=None)
    assert probs == []
    env = P.reopen_env({"nics": [{"type": "bridge", "bridge": "br0"}]}, sys_net=str(host / "sys-class-net"),
                       bridge_conf=str(host / "nothing.conf"))
    assert "bridge br0: %s is missing" % (host / "nothing.conf") in \
        P.reopen_problems({"name": "vm1", "nics": [{"type": "bridge", "bridge": "br0"}]}, env)[0]["detail"]


def test_reopen_kernel_files(host):
    probs = reopen(host, argv=["qemu", "-kernel", str(host / "vmlinuz"), "-initrd", str(host / "initrd.gone")])
    assert details(probs) == [("file", "-initrd file %s is missing" % (host / "initrd.gone"))]


# -- host -------------------------------------------------------------------------------------------

def meminfo(name):
    with open(os.path.join(FIXTURES, name, "proc", "meminfo")) as fh:
        return parse_meminfo(fh.read())


def test_host_cma_free_above_total_is_reported():
    # Recorded on a fleet host running the collection's KHO kernel: scratch came back as CMA.
    probs = P.host_problems({"backend": "luo", "meminfo": meminfo("luo-host"),
                             "liveupdate": {"exists": True, "holders": []}})
    assert probs == [{"vm": None, "check": "kho_cma", "blocks": False,
                      "detail": "CmaFree (1098972 kB) > CmaTotal (0 kB): the KHO scratch area came back as CMA; "
                                "long-term page pinning (VFIO, RDMA) fails with ENOMEM on this kernel"}]
    assert P.host_problems({"backend": "pmem", "meminfo": meminfo("guestmemfs-fleet-host")}) == []


def test_host_liveupdate_held():
    held = {"backend": "luo", "meminfo": {}, "liveupdate": {"exists": True, "holders": [
        {"pid": 812, "comm": "python3", "cmdline": "/usr/bin/python3 /usr/lib/guestmemfs-liveupdate/agent luo-hold"},
        {"pid": 4242, "comm": "luoctl", "cmdline": "luoctl hold"}]}}
    probs = P.host_problems(held)
    assert probs == [{"vm": None, "check": "liveupdate", "blocks": True,
                      "detail": "/dev/liveupdate is held by luoctl[4242], not by the collection's holder: LUO "
                                "allows one opener, so the VMs' memfds cannot be preserved"}]
    assert "/dev/liveupdate is missing" in P.host_problems(
        {"backend": "luo", "liveupdate": {"exists": False}})[0]["detail"]


def test_host_liveupdate_in_the_holders_fd_store_is_ours():
    # Seen in molecule's luo scenario: the holder unit keeps /dev/liveupdate in systemd's fd store
    # (FileDescriptorStorePreserve=yes), so PID 1 shows up as a second holder of the same session.
    ours = {"backend": "luo", "meminfo": {}, "liveupdate": {"exists": True, "holders": [
        {"pid": 1, "comm": "systemd", "cmdline": "/sbin/init"},
        {"pid": 812, "comm": "python3", "cmdline": "/usr/bin/python3 /usr/lib/guestmemfs-liveupdate/agent luo-hold"}]}}
    assert P.host_problems(ours) == []


def test_host_facts_reads_the_holders(tmp_path):
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "77" / "cmdline").write_bytes(b"luoctl\0hold\0")
    (proc / "meminfo").write_text("CmaTotal: 0 kB\nCmaFree: 4 kB\n")
    dev = tmp_path / "liveupdate"
    dev.write_text("")
    facts = P.host_facts("luo", proc=str(proc), device=str(dev),
                         users=lambda path, proc: [(77, "luoctl", path)], root=str(tmp_path))
    assert facts == {"backend": "luo", "meminfo": {"CmaTotal": 0, "CmaFree": 4096}, "libvirt": [],
                     "liveupdate": {"exists": True, "holders": [{"pid": 77, "comm": "luoctl", "cmdline": "luoctl hold"}]}}


# -- the module -------------------------------------------------------------------------------------

FAKE_QEMU = """#!/bin/sh
[ "$1 $2" = "-machine help" ] || exit 1
cat "%s"
"""


@pytest.fixture
def node(tmp_path, host, monkeypatch):
    """A host: VM configurations, QMP sockets answered from the recordings, a restoring binary
    printing QEMU 10.0's machine list, and /sys, /proc, bridge.conf under tmp_path."""
    confs = tmp_path / "vms"
    confs.mkdir()
    help_txt = tmp_path / "machine-help.txt"
    help_txt.write_text(rec("machines")["machine_help"])
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU % help_txt)
    qemu.chmod(0o755)
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 4096 kB\n")
    monkeypatch.setattr(vm_preservability, "SYS_NET", str(host / "sys-class-net"))
    monkeypatch.setattr(vm_preservability, "BRIDGE_CONF", str(host / "etc-qemu" / "bridge.conf"))
    monkeypatch.setattr(vm_preservability, "PROC", str(proc))
    monkeypatch.setattr(vm_preservability, "ROOT", str(tmp_path))  # no libvirt: no run/libvirt, no proc/PID
    monkeypatch.setattr(vm_preservability, "LIVEUPDATE_DEVICE", str(tmp_path / "liveupdate"))
    sockets = {}
    monkeypatch.setattr(vm_preservability, "connect_qmp", lambda path, timeout: sockets[path]())

    def add(name, scenario, running=True, **kw):
        r = rec(scenario)
        sock = str(tmp_path / (name + ".qmp"))
        conf = conf_of(r, name=name, qemu=str(qemu), qmp=sock, **kw)
        (confs / (name + ".json")).write_text(json.dumps(conf))
        if running:
            open(sock, "w").close()
            sockets[sock] = lambda: Replay(r["transcript"])
        return conf
    add.confs, add.qemu, add.tmp, add.sockets = str(confs), str(qemu), tmp_path, sockets
    return add


def test_module_all_preservable(node, capsys):
    node("vm1", "clean")
    node("vm2", "blocker_vdi_normal_only")
    node("off", "plain_m", running=False)
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "_ansible_check_mode": True})
    assert rc == 0 and out["preservable"] is True and out["changed"] is False
    assert out["vms"]["vm1"] == {"preservable": True, "running": True, "problems": [], "policy": "refuse",
                                 "qemu": node.qemu, "machine": "pc-q35-10.0"}
    assert out["vms"]["off"]["running"] is False and out["vms"]["off"]["preservable"] is True
    assert out["skip"] is False and out["shutdown_vms"] == [] and out["host"] == {"problems": [], "warnings": []}


def test_a_stopped_vm_whose_qmp_socket_was_left_behind_is_not_running(node, capsys, tmp_path):
    """Seen on the fleet: a VM unit stopped on purpose leaves its QMP socket file (the agent bound it
    for its confined QEMU); nothing listens (ECONNREFUSED) and nothing maps its memory. The whole
    host was refused ("QEMU did not answer over QMP") for a VM that has nothing to lose."""
    node("vm1", "clean")
    stopped = node("vm2", "clean", running=False, mem_path=str(tmp_path / "vm2.ram"))
    (tmp_path / "vm2.ram").write_bytes(b"\0" * 4096)
    left = socket.socket(socket.AF_UNIX)
    left.bind(stopped["qmp"])
    left.close()  # the file stays, nobody listens
    node.sockets[stopped["qmp"]] = lambda: vm_preservability.QMP(stopped["qmp"], timeout=5).connect()
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs})
    assert rc == 0 and out["preservable"] is True, out.get("msg")
    assert out["vms"]["vm2"] == {"preservable": True, "running": False, "problems": [], "policy": "refuse",
                                 "qemu": node.qemu}


def test_a_vm_whose_qemu_refuses_qmp_but_maps_its_memory_is_refused(node, capsys, tmp_path, monkeypatch):
    """The other side: something still maps the memory (a QEMU that closed its QMP listener): a kexec
    would lose it, so the host is refused, naming the VM."""
    node("vm1", "clean")
    hung = node("vm2", "clean", running=False, mem_path=str(tmp_path / "vm2.ram"))
    left = socket.socket(socket.AF_UNIX)
    left.bind(hung["qmp"])
    left.close()
    node.sockets[hung["qmp"]] = lambda: vm_preservability.QMP(hung["qmp"], timeout=5).connect()
    monkeypatch.setattr(vm_preservability, "users", lambda path, proc, mapped_only: [(4242, "qemu-system-x86", path)])
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs})
    assert rc == 1 and "vm2: QEMU did not answer over QMP" in out["msg"] and "Connection refused" in out["msg"]


def test_module_refuses_naming_each_vm(node, capsys):
    node("vm1", "clean")
    node("vm2", "not_shared")
    node("vm3", "blocker_ivshmem")
    node("vm4", "clean", disks=[{"path": str(node.tmp / "disks" / "gone.qcow2"), "format": "qcow2"}],
         nics=[{"type": "bridge", "bridge": "br1"}])
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs})
    assert rc == 1 and out["failed"] and out["preservable"] is False
    msg = out["msg"]
    assert msg.startswith("host not updated: vm2: memory backend ram0 (memory-backend-file, ")
    assert "has share=off" in msg
    assert "vm3: QEMU blocks a cpr-reboot migration: Migration is disabled when using feature 'peer mode' " \
           "in device 'ivshmem'" in msg
    assert "vm4: disk %s is missing; bridge br1 is not allowed in " % (node.tmp / "disks" / "gone.qcow2") in msg
    assert "vm1" not in msg
    assert [p["check"] for p in out["vms"]["vm3"]["problems"]] == ["migration_blocker", "memory"]


def test_module_policies(node, capsys):
    node("vm1", "clean")
    node("vm2", "not_shared")
    node("vm3", "plain_m")
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "policy": {"vm2": "shutdown", "vm3": "skip"}})
    assert rc == 0 and out["skip"] is True and out["shutdown_vms"] == ["vm2"] and out["preservable"] is False
    assert out["vms"]["vm2"]["policy"] == "shutdown" and out["vms"]["vm1"]["policy"] == "refuse"
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "default_policy": "shutdown"})
    assert rc == 0 and out["skip"] is False and out["shutdown_vms"] == ["vm2", "vm3"]
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "policy": {"vm2": "pause"}})
    assert rc == 1 and out["msg"] == "policy: vm2='pause'; use one of refuse, skip, shutdown"


def test_module_takes_each_vms_own_policy_from_its_definition(node, capsys):
    node("vm1", "clean")
    node("vm2", "not_shared", unpreservable="shutdown")
    node("vm3", "plain_m", unpreservable="skip")
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs})
    assert rc == 0 and out["shutdown_vms"] == ["vm2"] and out["skip"] is True
    # The run's policy wins over the definition's.
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "policy": {"vm2": "refuse"}})
    assert rc == 1 and out["msg"].startswith("host not updated: vm2: ")


def test_module_reads_the_argv_recorded_at_the_vms_start(node, capsys, tmp_path):
    node("vm1", "clean")
    argv_dir = tmp_path / "argv"
    argv_dir.mkdir()
    (argv_dir / "vm1.json").write_text(json.dumps({"argv": ["qemu-system-x86_64", "-device", "vfio-pci,host=0000:01:00.0"]}))
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "argv_dir": str(argv_dir)})
    assert rc == 1 and "vfio-pci" in out["msg"]


def test_module_target_binary_and_missing_vm(node, capsys, tmp_path):
    node("vm1", "clean")
    old = tmp_path / "qemu-old"
    old.write_text("#!/bin/sh\necho 'Supported machines are:'\necho 'pc-q35-9.2           Standard PC (Q35 + ICH9, 2009)'\n")
    old.chmod(0o755)
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "qemu_binary": str(old)})
    assert rc == 1 and out["msg"] == ("host not updated: vm1: machine type pc-q35-10.0 is not offered by the "
                                      "restoring QEMU %s: it could not load the saved state" % old)
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "vms": ["vm9"]})
    assert rc == 1 and out["msg"] == "no configuration for VM vm9 in %s" % node.confs


def test_module_qemu_not_answering(node, capsys, monkeypatch):
    node("vm1", "clean")

    def refuse(path, timeout):
        raise QMPError("cannot connect to QMP %s: [Errno 111] Connection refused" % path)
    monkeypatch.setattr(vm_preservability, "connect_qmp", refuse)
    # its QEMU still maps its memory: alive, not answering (gone and unmapped is "not running", above)
    monkeypatch.setattr(vm_preservability, "users", lambda path, proc, mapped_only: [(4242, "qemu-system-x86", path)])
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs, "default_policy": "skip"})
    assert rc == 0 and out["skip"] is True
    assert "QEMU did not answer over QMP (cannot connect to QMP" in out["vms"]["vm1"]["problems"][0]["detail"]


def test_module_host_liveupdate_held(node, capsys):
    node("vm1", "clean", backend="luo")
    dev = node.tmp / "liveupdate"
    dev.write_text("")
    me = "4242"
    proc = node.tmp / "proc"
    (proc / me / "fd").mkdir(parents=True)
    os.symlink(str(dev), str(proc / me / "fd" / "3"))  # what /proc shows for a process holding it
    (proc / me / "comm").write_text("luoctl\n")
    (proc / me / "cmdline").write_bytes(b"luoctl\0hold\0")
    (proc / "meminfo").write_text("CmaTotal: 0 kB\nCmaFree: 1024 kB\n")
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": node.confs})
    assert rc == 1 and out["msg"].startswith("host not updated: host: /dev/liveupdate is held by luoctl[%s], not by "
                                             "the collection's holder" % me)
    assert out["host"]["warnings"][0]["check"] == "kho_cma"
    assert "CmaFree (1024 kB) > CmaTotal (0 kB)" in out["host"]["warnings"][0]["detail"]


def test_target_machines_asks_again_after_an_empty_answer():
    help_text = rec("machines")["machine_help"]
    answers = [(0, "", ""), (0, help_text, "")]
    calls = []

    def run(argv):
        calls.append(argv)
        return answers.pop(0)
    assert "pc-q35-10.0" in P.target_machines("qemu-system-x86_64", run)
    assert calls == [["qemu-system-x86_64", "-machine", "help"]] * 2
    with pytest.raises(ValueError, match="listed no machine types .twice"):
        P.target_machines("q", lambda argv: (0, "", "oops"))


def test_host_liveupdate_held_only_by_pid1_is_not_taken_for_ours():
    # PID 1 holds it in some unit's fd store; without the collection's holder beside it, nothing shows
    # that the session is the collection's: refuse, as for any other opener.
    alone = {"backend": "luo", "meminfo": {}, "liveupdate": {"exists": True, "holders": [
        {"pid": 1, "comm": "systemd", "cmdline": "/sbin/init"}]}}
    problems = P.host_problems(alone)
    assert len(problems) == 1 and problems[0]["blocks"] and "systemd[1]" in problems[0]["detail"]
