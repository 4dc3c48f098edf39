"""What the agent does for a confined QEMU before it starts, on real files, sockets and taps (the taps
in a network namespace of the test's own): every check before any change, then exactly what QEMU's
user must own."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine, cpr, vmdef

UID, GID = 54321, 54321
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


@pytest.fixture
def tmp_path():
    """A directory whose parents others can search (pytest's own is root's only)."""
    import pathlib
    d = tempfile.mkdtemp(prefix="glu-confine-", dir="/tmp")
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def tree(tmp_path):
    base = tmp_path / "t"
    for d in ("mem", "disks", "log", "guest"):
        (base / d).mkdir(parents=True)
    os.chmod(tmp_path, 0o711)
    os.chmod(base, 0o755)
    os.chmod(base / "mem", 0o750)  # the backend's mount as a mkfs may leave it: no search for others
    for name, mode in (("mem/vm1.ram", 0o600), ("disks/vm1.qcow2", 0o644), ("disks/seed.raw", 0o644),
                       ("guest/vmlinuz", 0o644)):
        (base / name).write_bytes(b"x")
        os.chmod(base / name, mode)
    conf = dict(vmdef.normalize({"name": "vm1", "memory": "64M", "kernel": str(base / "guest/vmlinuz"),
                                 "serial_log": str(base / "log/vm1.log"),
                                 "disks": [{"path": str(base / "disks/vm1.qcow2"), "format": "qcow2"},
                                           {"path": str(base / "disks/seed.raw"), "format": "raw",
                                            "readonly": True}]}),
                mem_path=str(base / "mem/vm1.ram"), qemu_user="guestmemfs-qemu")
    return base, vmdef.build_argv(conf, str(tmp_path))


def test_what_qemu_opens_by_path_comes_from_its_argv(tmp_path):
    base, argv = tree(tmp_path)
    assert confine.qemu_paths(argv) == [(str(base / "mem/vm1.ram"), "memory"), (str(base / "log/vm1.log"), "log"),
                                        (str(base / "disks/vm1.qcow2"), "disk"), (str(base / "disks/seed.raw"), "disk-ro"),
                                        (str(base / "guest/vmlinuz"), "read")]
    luo = ["q", "-object", "memory-backend-file,id=ram0,size=64M,mem-path=/proc/self/fd/3,share=on",
           "-drive", "file=nbd://10.0.0.1/x,format=raw,if=none,id=d9"]
    assert confine.qemu_paths(luo) == []  # handed over, or no path at all


@root_only
def test_every_check_comes_before_any_change(tmp_path):
    base, argv = tree(tmp_path)
    os.chmod(base / "guest", 0o700)
    os.chmod(base / "disks/vm1.qcow2", 0o644)
    problems = confine.access_problems(argv, UID, [GID])
    assert problems == ["read %s: directory %s (mode 700, owner 0:0) is not searchable by uid %d"
                        % (base / "guest/vmlinuz", base / "guest", UID)]
    os.chmod(base / "guest", 0o755)
    os.chmod(base / "guest/vmlinuz", 0o600)
    assert "is not readable by uid %d" % UID in confine.access_problems(argv, UID, [GID])[0]
    os.chmod(base / "guest/vmlinuz", 0o644)
    os.chmod(base / "disks/seed.raw", 0o600)
    assert "seed.raw (mode 600, owner 0:0) is not readable by uid %d" % UID in confine.access_problems(
        argv, UID, [GID])[0]
    os.chmod(base / "disks/seed.raw", 0o644)
    (base / "disks/vm1.qcow2").unlink()
    assert confine.access_problems(argv, UID, [GID]) == ["disk %s does not exist" % (base / "disks/vm1.qcow2")]


@root_only
def test_give_makes_only_what_qemu_opens_its_own(tmp_path):
    base, argv = tree(tmp_path)
    assert confine.access_problems(argv, UID, [GID]) == []
    confine.give(argv, UID, GID)

    def owner(p):
        st = os.stat(base / p)
        return st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))
    assert owner("mem/vm1.ram") == (UID, GID, "0o600")
    assert owner("disks/vm1.qcow2") == (UID, GID, "0o600")
    assert owner("disks/seed.raw") == (0, 0, "0o644")  # read-only: only read, never given away
    assert owner("log/vm1.log") == (UID, GID, "0o600")  # created
    assert owner("guest/vmlinuz") == (0, 0, "0o644")  # only read: never given away
    assert owner("mem") == (0, 0, "0o751")  # the backend's mount: searchable, not listable


@root_only
def test_a_state_file_is_the_users_for_the_migration_only(tmp_path):
    os.chmod(tmp_path, 0o711)
    path = tmp_path / "vm1.state.partial"
    back = confine.state_owner(str(path), {"user": "nobody"})
    assert os.stat(path).st_uid == 65534 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back()
    assert os.stat(path).st_uid == 0
    os.chmod(tmp_path, 0o700)
    with pytest.raises(confine.ConfineError, match="is not searchable by nobody"):
        confine.state_owner(str(tmp_path / "vm2.state"), {"user": "nobody"})
    assert not (tmp_path / "vm2.state").exists()
    assert confine.state_owner(str(tmp_path / "vm3.state"), None)() is None  # unconfined: nothing to give


def test_an_unconfined_launch_execs_the_recorded_argv_as_it_is(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(confine.os, "execvp", lambda prog, argv: calls.append(argv))
    vm = cpr.VM({"name": "vm1", "memory_bytes": 1 << 26, "mem_path": str(tmp_path / "m")})
    confine.exec_qemu(vm, ["qemu-system-x86_64", "-qmp", "unix:/x"], None)
    assert calls == [["qemu-system-x86_64", "-qmp", "unix:/x"]]


def test_a_missing_user_is_named():
    with pytest.raises(confine.ConfineError, match="user no-such-qemu-user does not exist on this host: the "
                                                   "qemu_vm role creates it"):
        confine.ids("no-such-qemu-user")


TAPS = r"""
import json, os, subprocess, sys
sys.path[:0] = json.loads(sys.argv[1])
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine
subprocess.check_call(["ip", "link", "add", "br-t", "type", "bridge"])
subprocess.check_call(["ip", "tuntap", "add", "dev", "tap-op", "mode", "tap"])
fds = confine.nic_fds({"user": "x", "nics": {"6": {"bridge": "br-t"}, "7": {"tap": "tap-op"}}})
def link(name):
    out = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True, text=True, check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None
gmq = link("gmq0")
os.close(fds[6])
print(json.dumps({"fds": sorted(fds), "master": gmq.get("master"), "up": "UP" in gmq["flags"],
                  "gone": link("gmq0") is None, "op_kept": link("tap-op") is not None}))
"""


@root_only
@pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("ip") and os.path.exists("/dev/net/tun")),
                    reason="needs unshare, ip and /dev/net/tun")
def test_a_bridged_nic_gets_a_new_tap_on_its_bridge_and_a_tap_nic_its_tap(tmp_path):
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", TAPS, json.dumps(sys.path)],
                         capture_output=True, text=True, timeout=60, check=False)
    if out.returncode and "unshare failed" in out.stderr:
        pytest.skip("no network namespace here: %s" % out.stderr.strip())
    assert out.returncode == 0, out.stderr
    # gmq0 on the bridge and up; it goes away with the last descriptor (QEMU's); the operator's tap stays.
    assert json.loads(out.stdout) == {"fds": [6, 7], "master": "br-t", "up": True, "gone": True, "op_kept": True}


def test_a_vms_nics_need_their_bridges_and_taps_from_its_launch_else_its_definition():
    launch = {"user": "x", "nics": {"7": {"tap": "tap-op"}, "6": {"bridge": "br0"}}}
    assert confine.nic_interfaces(launch) == ["br0", "tap-op"]
    conf = {"nics": [{"type": "bridge", "bridge": "br1"}, {"type": "user"}, {"type": "tap", "ifname": "t0"}]}
    assert confine.nic_interfaces(None, conf) == ["br1", "t0"]  # a QEMU started before confinement
    assert confine.nic_interfaces({"user": "x"}, {}) == []


def test_the_wait_for_interfaces_ends_once_they_exist_or_names_those_missing():
    clock = [0.0]
    seen = {"br0": 3, "tap-op": 0}  # br0 appears at the third look

    def exists(name):
        seen[name] -= 1
        return seen[name] < 0 if name == "br0" else True

    def sleep(s):
        clock[0] += s
    confine.wait_for_interfaces(["br0", "tap-op"], timeout=5, clock=lambda: clock[0], sleep=sleep, exists=exists)
    assert round(clock[0], 1) == 0.3
    with pytest.raises(confine.ConfineError, match=r"^interfaces br9, t9 do not exist after 2 s"):
        confine.wait_for_interfaces(["br9", "t9"], timeout=2, clock=lambda: clock[0], sleep=sleep,
                                    exists=lambda n: False)
    confine.wait_for_interfaces([], timeout=0, exists=lambda n: False)  # no NIC: nothing to wait for
