# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The in-guest health gate: each VM's qemu-guest-agent, asked over its channel (the VM
definition's ``guest_agent``, a virtio-serial or ISA serial port: a socket at <run_dir>/<vm>.qga,
vmdef.qga_path, either way).

The agent's protocol is JSON lines. A client that connects may find half a command of an earlier
client in the guest's parser, so it first sends 0xFF (the agent resets its parser) and
``guest-sync-delimited`` with a fresh id: the answer is preceded by 0xFF, and anything before it is
stale. Then ``guest-ping``, and, when asked, ``guest-exec`` and ``guest-exec-status`` for a command.
Host-side and stdlib-only; it runs only before a wave and after a host's VMs resumed, never while a
VM is paused."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import random
import socket
import threading
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import vmdef

DELIMITER = b"\xff"


class QGAError(Exception):
    pass


class QGA(object):
    """One connection to a guest agent's socket; every call bounded by ``deadline`` (monotonic)."""

    def __init__(self, path, deadline):
        self.path = path
        self.deadline = deadline
        self.buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(self._left())
            self.sock.connect(path)
        except (OSError, socket.error) as exc:
            self.sock.close()
            raise QGAError("cannot connect to %s: %s" % (path, exc))

    def close(self):
        self.sock.close()

    def _left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise QGAError("no answer from the guest agent in time")
        return left

    def _send(self, data):
        self.sock.settimeout(self._left())
        self.sock.sendall(data)

    def _fill(self):
        self.sock.settimeout(self._left())
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise QGAError("no answer from the guest agent in time")
        if not chunk:
            raise QGAError("the guest agent's channel closed")
        self.buf += chunk

    def _line(self):
        while b"\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.strip()

    def sync(self):
        """Reset the guest's parser and skip whatever an earlier client left in the channel."""
        ident = random.randint(1, 2 ** 31 - 1)
        self._send(DELIMITER + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": ident}}).encode() + b"\n")
        while True:
            while DELIMITER not in self.buf:
                self.buf = b""
                self._fill()
            self.buf = self.buf.split(DELIMITER, 1)[1]
            try:
                answer = json.loads(self._line().decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("return") == ident:
                return ident

    def cmd(self, execute, **arguments):
        msg = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self._send(json.dumps(msg).encode() + b"\n")
        while True:
            line = self._line().lstrip(DELIMITER)
            if not line:
                continue
            try:
                answer = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                raise QGAError("%s: the guest agent answered something that is not JSON: %r" % (execute, line[:200]))
            if "error" in answer:
                err = answer["error"]
                raise QGAError("%s: %s" % (execute, err.get("desc", err) if isinstance(err, dict) else err))
            if "return" in answer:
                return answer["return"]


def _exec(agent, argv, poll=0.2):
    pid = agent.cmd("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
    while True:
        status = agent.cmd("guest-exec-status", pid=pid)
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode("utf-8", "replace")
            err = base64.b64decode(status.get("err-data", "")).decode("utf-8", "replace")
            return status.get("exitcode", status.get("signal", -1)), out, err
        agent._left()
        time.sleep(poll)


def check_vm(path, command=None, timeout=30.0, retry=1.0, clock=time.monotonic):
    """Ask one VM's agent: sync, ping, then (optionally) run ``command`` (argv) and want exit 0.
    Retries until ``timeout`` (an agent may come up late) -> {ok, detail, seconds, exitcode, stdout}."""
    start = clock()
    deadline = start + timeout
    last = "no attempt"
    while True:
        result = {"ok": False, "seconds": None, "exitcode": None, "stdout": None}
        try:
            agent = QGA(path, deadline)
            try:
                agent.sync()
                agent.cmd("guest-ping")
                detail = "guest-ping answered"
                if command:
                    rc, out, err = _exec(agent, command)
                    result.update(exitcode=rc, stdout=out[-2000:])
                    if rc != 0:
                        raise QGAError("%s exited %s in the guest: %s" % (" ".join(command), rc, (err or out).strip()[-500:]))
                    detail += "; %s exited 0" % " ".join(command)
            finally:
                agent.close()
            result.update(ok=True, detail=detail, seconds=round(clock() - start, 3))
            return result
        except (QGAError, OSError, ValueError, KeyError, TypeError) as exc:
            last = str(exc)
            if result["exitcode"] not in (None, 0):  # the guest answered: its command failed, no retry
                result.update(detail=last, seconds=round(clock() - start, 3))
                return result
        if clock() + retry >= deadline:
            result.update(detail="%s (after %.0f s)" % (last, clock() - start), seconds=round(clock() - start, 3))
            return result
        time.sleep(retry)


def check_host(confs, run_dir, command=None, timeout=30.0, vms=None):
    """Every VM of the host whose definition has the agent channel -> {vm: result}; a VM without it
    is reported as not checked (``ok`` None) rather than failed."""
    out, threads = {}, []
    for conf in confs:
        name = conf["name"]
        if vms and name not in vms:
            continue
        if not conf.get("guest_agent"):
            out[name] = {"ok": None, "detail": "no guest agent channel (guest_agent is false): not checked",
                         "seconds": None, "exitcode": None, "stdout": None}
            continue
        path = vmdef.qga_path(conf, run_dir)
        if not os.path.exists(path):
            out[name] = {"ok": False, "detail": "%s does not exist (is the VM running?)" % path, "seconds": None,
                         "exitcode": None, "stdout": None}
            continue
        # in parallel: one VM that does not answer must not take the others' time
        t = threading.Thread(target=lambda n=name, p=path: out.__setitem__(n, check_vm(p, command=command, timeout=timeout)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return dict(sorted(out.items()))
