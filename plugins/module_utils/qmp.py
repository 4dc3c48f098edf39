# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small QMP client over a UNIX socket (stdlib only: it runs on the hypervisors)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import time


class QMPError(Exception):
    """QMP said no, the socket went away, or an awaited event did not come."""


class QMP(object):
    def __init__(self, path, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self._buf = b""
        self.sock = None

    def connect(self, wait=0.0):
        """Connect (retrying for ``wait`` seconds while QEMU creates the socket) and negotiate."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(self.timeout)
                self.sock.connect(self.path)
                break
            except (IOError, OSError) as exc:
                self.sock.close()
                self.sock = None
                if time.monotonic() >= deadline:
                    raise QMPError("cannot connect to QMP %s: %s" % (self.path, exc))
                time.sleep(0.05)
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError("no QMP greeting on %s: %r" % (self.path, greeting))
        self.cmd("qmp_capabilities")
        return greeting

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, allow_timeout=False):
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if allow_timeout:
                    return None
                raise QMPError("QMP %s: no answer within %ss" % (self.path, self.timeout))
            if not chunk:
                raise QMPError("QMP %s closed the connection" % self.path)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line.decode("utf-8"))

    def cmd(self, execute, **arguments):
        msg = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode("utf-8") + b"\n")
        while True:
            resp = self._read()
            if "event" in resp:
                self.events.append(resp)
                continue
            if "error" in resp:
                raise QMPError("%s: %s" % (execute, resp["error"].get("desc", resp["error"])))
            return resp.get("return")

    def wait_event(self, name, timeout, match=None):
        """The first event ``name`` (already received or coming) for which ``match(event)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name and (match is None or match(ev)):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError("QMP %s: no %s event within %ss" % (self.path, name, timeout))
            self.sock.settimeout(min(left, self.timeout))
            try:
                msg = self._read(allow_timeout=True)
            finally:
                self.sock.settimeout(self.timeout)
            if msg is not None:
                self.events.append(msg)


def event_time(event):
    """A QMP event's timestamp (host CLOCK_REALTIME) in seconds."""
    ts = event.get("timestamp", {})
    return ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
