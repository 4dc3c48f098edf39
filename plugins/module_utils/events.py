# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's update events: one JSON object a line, appended to ``EVENTS`` for every step of an
update (docs/metrics.md is the schema). An operator's log shipper reads them; nothing in the
collection reads them back to decide anything (the journal does that).

Writing an event never fails the step it describes and never waits for the disk: each line is one
``write(2)`` to a file opened ``O_APPEND`` and is not fsynced. Most events are written between the
first pause and the last resume, where an fsync per event would add a disk flush per VM to every
VM's blackout. They reach the disk with the save's own ``sync`` before the kexec (and the kernel's
writeback afterwards); the fsynced journal remains the record the update relies on."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import math
import os
import socket
import sys
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo

EVENTS = "/var/lib/guestmemfs-liveupdate/events.jsonl"
# Every step an event can name, in the order an update goes through them (docs/metrics.md).
STEPS = ("record", "pause", "save", "sync", "kexec-requested", "boot", "verify", "restore", "resume",
         "failure", "rollback")
OUTCOMES = ("ok", "failed")
# Every line has exactly these keys.
FIELDS = ("time", "ts", "monotonic", "boot_id", "host", "update_id", "vm", "step", "outcome", "detail", "data")

_complained = []


_boot = []


def boot_id():
    """This boot's id, read once per process: no process lives through a kexec (tests replace it,
    as they replace journal.boot_id)."""
    if not _boot:
        _boot.append(hostinfo.boot_id())
    return _boot[0]


def iso_utc(ts):
    """``ts`` (unix seconds) as ISO-8601 UTC with microseconds: ``2025-01-31T12:00:00.123456Z``,
    rounded as datetime rounds (half to even). Not by datetime: the VM unit's start writes events on
    a host still booting, and its import is CPU there once per VM."""
    frac, whole = math.modf(ts)
    us = int(round(frac * 1e6))
    if us >= 1000000:
        whole, us = whole + 1, us - 1000000
    return "%s.%06dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)), us)


def event(step, update_id=None, vm=None, outcome="ok", detail="", ts=None, **data):
    """The event as a dict with every field of FIELDS. ``ts`` is when the step happened when it is
    known better than now (QEMU's own STOP and RESUME times); ``monotonic`` is always the writer's
    CLOCK_MONOTONIC, comparable only between events of the same ``boot_id``."""
    if step not in STEPS or outcome not in OUTCOMES:
        raise ValueError("event step %r outcome %r: not one of %s / %s" % (step, outcome, STEPS, OUTCOMES))
    ts = time.time() if ts is None else float(ts)
    return {"time": iso_utc(ts), "ts": round(ts, 6), "monotonic": round(time.monotonic(), 6), "boot_id": boot_id(),
            "host": socket.gethostname(), "update_id": update_id, "vm": vm, "step": step, "outcome": outcome,
            "detail": str(detail or ""), "data": data}


def emit(step, update_id=None, vm=None, outcome="ok", detail="", ts=None, **data):
    """Append one event to EVENTS. Never raises: a full disk or a missing directory is said once
    on stderr (the unit's log) and the update carries on."""
    try:
        line = json.dumps(event(step, update_id, vm, outcome, detail, ts, **data), sort_keys=True, default=str)
        fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    except Exception as exc:  # an event is never worth a failed update
        complain("events", "the event %s of update %s was not written to %s" % (step, update_id, EVENTS), exc)


def complain(kind, what, exc):
    """Say on stderr, once per process and ``kind``, that an operator's view was not written."""
    if kind in _complained:
        return
    _complained.append(kind)
    try:
        sys.stderr.write("guestmemfs-liveupdate: %s (%s: %s); the update carries on\n" % (what, type(exc).__name__, exc))
    except Exception:
        pass
