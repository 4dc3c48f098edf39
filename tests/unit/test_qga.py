"""The in-guest gate's client (module_utils/qga.py) against real guest agents on a unix socket, as
QEMU's chardev (server=on) gives it: the fleet guest's own responder (tests/fleet/guest/qga.c,
compiled here) behind a listening socket, and Debian's qemu-ga (its unix-listen method) when it
is installed. No VM: the agents run as local processes."""

import os
import select
import shutil
import socket
import subprocess
import termios
import threading
import time

import pytest

import conftest
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import qga

QGA_C = os.path.join(conftest.ROOT, "tests", "fleet", "guest", "qga.c")
QEMU_GA = shutil.which("qemu-ga") or ("/usr/bin/qemu-ga" if os.path.exists("/usr/bin/qemu-ga") else None)


@pytest.fixture(scope="module")
def responder(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the fleet guest's agent")
    out = str(tmp_path_factory.mktemp("qga") / "qga")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", out, QGA_C], check=True)
    return out


class Channel(object):
    """A listening socket like QEMU's qga chardev; each client that connects is served by a fresh
    responder process on the accepted socket (stdin and stdout), as the guest's port would be."""

    def __init__(self, path, binary, stale=b""):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.binary, self.stale, self.procs = binary, stale, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            if self.stale:  # what an earlier client's half-read answer leaves in the channel
                conn.sendall(self.stale)
            self.procs.append(subprocess.Popen([self.binary, "-"], stdin=conn.fileno(), stdout=conn.fileno()))
            conn.close()

    def close(self):
        self.sock.close()
        for p in self.procs:
            p.kill()
            p.wait()


def test_ping_and_a_command_through_the_fleet_responder(tmp_path, responder):
    ch = Channel(str(tmp_path / "vm1.qga"), responder, stale=b'{"return": 7}\n{"return": {}}\n')
    try:
        ok = qga.check_vm(str(tmp_path / "vm1.qga"), timeout=10)
        assert ok["ok"] is True and ok["detail"] == "guest-ping answered" and ok["seconds"] < 10
        ran = qga.check_vm(str(tmp_path / "vm1.qga"), command=["/bin/sh", "-c", "exit 0"], timeout=10)
        assert ran["ok"] is True and ran["exitcode"] == 0 and "/bin/sh -c exit 0 exited 0" in ran["detail"]
        bad = qga.check_vm(str(tmp_path / "vm1.qga"), command=["/bin/sh", "-c", "exit 3"], timeout=10)
        assert bad["ok"] is False and bad["exitcode"] == 3 and "exited 3 in the guest" in bad["detail"]
    finally:
        ch.close()


def test_the_raw_protocol_of_the_fleet_responder(responder):
    msgs = (b'\xff{"execute": "guest-sync-delimited", "arguments": {"id": 12345}}'
            b'{"execute":"guest-sync","arguments":{"id":9}}\n{"execute": "guest-info"}'
            b'{"execute": "guest-ping"}{"execute": "guest-shutdown"}')
    out = subprocess.run([responder, "-"], input=msgs, capture_output=True, timeout=10, check=True).stdout
    lines = out.split(b"\n")
    assert lines[0] == b'\xff{"return": 12345}' and lines[1] == b'{"return": 9}'
    assert b'"version": "gmfs-qga 1"' in lines[2] and b'"guest-ping"' in lines[2]
    assert lines[3] == b'{"return": {}}' and b"CommandNotFound" in lines[4]


def test_the_fleet_responder_on_a_serial_port_named_by_gmfs_qga(responder):
    """A guest without virtio devices: /init hands the agent GMFS_QGA=/dev/ttyS1 (gmfs.qga= on the
    kernel's cmdline). Here the port is a pty: the responder must make it raw (no echo, no line
    buffering, no CR before LF, 0xFF passed) at 115200, or the host's client would read garbage."""
    master, slave = os.openpty()
    agent = subprocess.Popen([responder], env={"GMFS_QGA": os.ttyname(slave)}, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave)[3] & termios.ECHO:  # until the responder set raw mode
            assert time.monotonic() < deadline and agent.poll() is None, "the responder did not set raw mode"
            time.sleep(0.02)
        attrs = termios.tcgetattr(slave)
        assert (attrs[4], attrs[5]) == (termios.B115200, termios.B115200)
        os.write(master, b'\xff{"execute": "guest-sync-delimited", "arguments": {"id": 77}}{"execute": "guest-ping"}')
        out, want = b"", b'\xff{"return": 77}\n{"return": {}}\n'
        while len(out) < len(want) and select.select([master], [], [], 10)[0]:
            out += os.read(master, 4096)
        assert out == want
    finally:
        agent.kill()
        agent.wait()
        os.close(master)
        os.close(slave)


def test_an_agent_that_never_answers_fails_within_its_timeout(tmp_path):
    # the channel exists (QEMU listens) but nothing in the guest reads it: the counting guest
    path = str(tmp_path / "vm2.qga")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    try:
        t0 = time.monotonic()
        out = qga.check_vm(path, timeout=2, retry=0.5)
        assert out["ok"] is False and "no answer from the guest agent in time" in out["detail"]
        assert 1.5 < time.monotonic() - t0 < 6
    finally:
        sock.close()


def test_a_missing_socket_and_a_vm_without_the_channel(tmp_path, responder):
    ch = Channel(str(tmp_path / "web.qga"), responder)
    try:
        confs = [{"name": "web", "guest_agent": True}, {"name": "db", "guest_agent": True},
                 {"name": "counter", "guest_agent": False}]
        out = qga.check_host(confs, str(tmp_path), timeout=3)
    finally:
        ch.close()
    assert list(out) == ["counter", "db", "web"]
    assert out["web"]["ok"] is True
    assert out["db"]["ok"] is False and "db.qga does not exist" in out["db"]["detail"]
    assert out["counter"]["ok"] is None and "not checked" in out["counter"]["detail"]
    assert list(qga.check_host(confs, str(tmp_path), timeout=1, vms=["counter"])) == ["counter"]


@pytest.mark.skipif(not QEMU_GA, reason="qemu-ga (Debian's qemu-guest-agent) is not installed")
def test_the_real_qemu_guest_agent(tmp_path):
    path = str(tmp_path / "vm1.qga")
    agent = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", path, "-t", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _tick in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        out = qga.check_vm(path, timeout=10)
        assert out["ok"] is True, out
        ran = qga.check_vm(path, command=["/bin/sh", "-c", "echo healthy; exit 0"], timeout=10)
        assert ran["ok"] is True and ran["stdout"] == "healthy\n"
        bad = qga.check_vm(path, command=["/bin/false"], timeout=10)
        assert bad["ok"] is False and bad["exitcode"] == 1
    finally:
        agent.kill()
        agent.wait()
