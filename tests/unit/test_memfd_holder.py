"""The luo backend's memfd holder on this (stock) kernel: real memfds, a real notify socket
standing in for systemd's, the real control socket. /dev/liveupdate does not exist here, so a
preserve is refused and changes nothing; the LUO round trip itself runs on a LUO kernel
(tests/integration/test_luo_roundtrip.py, the fleet)."""

import array
import json
import os
import socket
import threading

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostupdate, memfd_holder
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import journal as journal_mod
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.memfd_holder import Holder, HolderError

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")


@pytest.fixture
def journal(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "JOURNAL", str(tmp_path / "journal.json"))
    return tmp_path / "journal.json"


@pytest.fixture
def holder(tmp_path, journal):
    h = Holder(dev_path=str(tmp_path / "no-liveupdate"), link_dir=str(tmp_path / "luo"), store=False)
    yield h
    for fd in h.vms.values():
        os.close(fd)


def test_ensure_makes_an_exact_memfd_reachable_through_its_link(holder, tmp_path):
    r = holder.ensure("vm1", 8 << 20)
    assert r["changed"]
    link = tmp_path / "luo" / "vm1"
    assert os.readlink(str(link)) == "/proc/%d/fd/%d" % (os.getpid(), holder.vms["vm1"])
    with open(str(link), "r+b") as fh:  # what QEMU and the manifest do: open the link
        fh.seek(4096)
        fh.write(b"pattern")
    assert os.fstat(holder.vms["vm1"]).st_size == 8 << 20
    assert os.pread(holder.vms["vm1"], 7, 4096) == b"pattern"
    assert holder.ensure("vm1", 8 << 20)["changed"] is False


def test_bad_requests_change_nothing(holder, tmp_path):
    holder.ensure("vm1", 4 << 20)
    with pytest.raises(HolderError, match="already has a 4194304-byte memfd"):
        holder.ensure("vm1", 8 << 20)
    with pytest.raises(HolderError, match="VM name"):
        holder.ensure("vm:1", 4096)
    with pytest.raises(HolderError, match="multiple of 4096"):
        holder.ensure("vm2", 1000)
    assert sorted(holder.vms) == ["vm1"] and sorted(os.listdir(str(tmp_path / "luo"))) == ["vm1"]


def test_preserve_without_liveupdate_is_refused_and_leaves_everything(holder, journal):
    holder.ensure("vm1", 4 << 20)
    with pytest.raises(HolderError) as exc:
        holder.handle({"op": "preserve", "names": ["vm1"]})
    assert "does not exist" in str(exc.value) and "kho=on liveupdate=on" in str(exc.value)
    assert holder.session is None and holder.tokens == {}
    assert "luo" not in hostupdate.load_journal()
    with pytest.raises(HolderError, match="no memfd for vm9"):
        holder.preserve(["vm9"])


def test_kexec_refused_without_a_preserved_session(holder):
    holder.ensure("vm1", 4 << 20)
    with pytest.raises(HolderError, match="no preserved session"):
        holder.kexec()


def test_drop_refuses_memory_in_use(holder, tmp_path):
    holder.ensure("vm1", 4 << 20)
    with pytest.raises(HolderError, match="in use by qemu"):
        holder.drop("vm1", ["qemu-system-x86[42]"])
    assert holder.drop("vm1", [])["changed"] and not os.path.lexists(str(tmp_path / "luo" / "vm1"))


def test_fd_store_round_trip_through_a_notify_socket(tmp_path, monkeypatch):
    """What systemd receives: each fd with its FDNAME, FDPOLL=0; and how it hands them back."""
    path = str(tmp_path / "notify")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    fd = os.memfd_create("x", 0)
    os.ftruncate(fd, 4096)
    os.pwrite(fd, b"kept", 0)
    assert memfd_holder.store_fd("vm.vm1", fd)
    msg, anc, _flags, _addr = srv.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
    assert msg.decode().split("\n") == ["FDSTORE=1", "FDNAME=vm.vm1", "FDPOLL=0"]
    got = array.array("i")
    got.frombytes(anc[0][2][:4])
    assert os.pread(got[0], 4, 0) == b"kept"  # the same file, through the passed fd
    os.close(got[0])
    os.close(fd)
    srv.close()
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "3", "LISTEN_FDNAMES": "device:vm.vm1:session.out"}
    assert memfd_holder.inherited_fds(env) == {"device": 3, "vm.vm1": 4, "session.out": 5}
    assert memfd_holder.inherited_fds(dict(env, LISTEN_PID="1")) == {}


def test_control_socket_answers_and_reports_errors(holder, tmp_path):
    sock = str(tmp_path / "luo.sock")
    t = threading.Thread(target=memfd_holder.serve, args=(holder, sock), daemon=True)
    t.start()
    for _i in range(100):
        if os.path.exists(sock):
            break
        threading.Event().wait(0.05)
    r = memfd_holder.request("ensure", path=sock, name="vm1", size=1 << 20)
    assert r["changed"] and r["size"] == 1 << 20
    st = memfd_holder.request("status", path=sock)
    assert st["vms"]["vm1"]["size"] == 1 << 20 and st["session"] is None
    with pytest.raises(HolderError, match="no preserved session"):
        memfd_holder.request("kexec", path=sock)
    with pytest.raises(HolderError, match="unknown request"):
        memfd_holder.request("explode", path=sock)
    with pytest.raises(HolderError, match="not running"):
        memfd_holder.request("status", path=str(tmp_path / "absent.sock"))
    assert json.dumps(st)


def test_a_cold_started_holder_makes_memfds_only_for_vms_without_saved_state(holder, tmp_path, monkeypatch):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr
    monkeypatch.setattr(memfd_holder, "LINK_DIR", holder.link_dir)
    conf = tmp_path / "vms"
    conf.mkdir()
    for name in ("vm1", "vm2"):
        (conf / (name + ".json")).write_text(json.dumps({
            "name": name, "memory_bytes": 2 << 20, "mem_path": os.path.join(holder.link_dir, name),
            "state": str(tmp_path / (name + ".state"))}))
    (tmp_path / "vm2.state").write_text("saved device state")
    made, skipped = holder.ensure_configured(str(conf))
    assert made == ["vm1"] and skipped == ["vm2"]
    assert sorted(holder.vms) == ["vm1"] and os.fstat(holder.vms["vm1"]).st_size == 2 << 20
    assert "none for vm2" in hostupdate.load_journal()["log"][-1]["msg"]
    assert cpr.LUO_LINK_DIR == "/run/guestmemfs-liveupdate/luo"
