# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd's notification socket ($NOTIFY_SOCKET, sd_notify(3)), stdlib only: what runs on a
hypervisor installs nothing beside the collection."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import os
import select
import socket

# sd_notify_barrier(3)'s own default.
BARRIER_TIMEOUT_S = 5.0


def address(environ=None):
    """The socket systemd gave this process ($NOTIFY_SOCKET, '@' for the abstract namespace), or None."""
    addr = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not addr:
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(text, fds=()):
    """Send ``text`` (``READY=1``, ``STATUS=...``; ``fds`` for the fd store); False when systemd gave
    no socket (run by hand, or by a unit of another type)."""
    addr = address()
    if not addr:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([text.encode()], anc, 0, addr)
    finally:
        s.close()
    return True


def barrier(timeout=BARRIER_TIMEOUT_S):
    """Wait until systemd has read every message this process sent before (BARRIER=1: it closes the
    pipe's end it is sent). A process other than the unit's main one that notifies and exits at once
    may otherwise be gone before systemd can tell which unit it belonged to, and its message is lost.
    True once seen, False on timeout or without a socket."""
    r, w = os.pipe()
    try:
        try:
            if not notify("BARRIER=1", [w]):
                return False
        finally:
            os.close(w)
        p = select.poll()
        p.register(r, select.POLLHUP)
        return bool(p.poll(int(timeout * 1000)))
    finally:
        os.close(r)
