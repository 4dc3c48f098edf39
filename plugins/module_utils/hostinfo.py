# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few live-host facts the host agent and the modules read, each read here and nowhere else.

Every reader takes ``root`` (default ``/``) so that unit tests point it at a recorded or an empty
tree; the paths are module constants. Stdlib only, and it imports nothing of the collection, so
that every other file (facts, journal, the backends) can use it without an import cycle.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

BOOT_ID = "/proc/sys/kernel/random/boot_id"
KEXEC_LOADED = "/sys/kernel/kexec_loaded"
# The guestmemfs RFC's KHO v2 (absent on mainline KHO): 1 while the handover is serialised.
KHO_ACTIVE = "/sys/kernel/kho/active"
MOUNTS = "/proc/self/mounts"
CMDLINE = "/proc/cmdline"


def read_file(root, path, default=None):
    """The text of ``path`` under ``root``, or ``default`` when it cannot be read."""
    try:
        with open(os.path.join(root, path.lstrip("/")), "r") as fh:
            return fh.read()
    except (IOError, OSError):
        return default


def boot_id(root="/"):
    """This boot's id, or None when it cannot be read."""
    text = read_file(root, BOOT_ID)
    return text.strip() if text is not None else None


def kexec_loaded(root="/"):
    """Whether a kernel is loaded for kexec: True, False, or None when it cannot be read."""
    text = read_file(root, KEXEC_LOADED)
    return None if text is None else text.strip() == "1"


def kho_active(root="/"):
    """The RFC's KHO activation: True (serialised), False, or None (no RFC interface)."""
    text = read_file(root, KHO_ACTIVE)
    return None if text is None else text.strip() == "1"


def parse_mounts(text):
    """/proc/self/mounts -> list of dicts (source, target, fstype, options)."""
    out = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            unesc = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in parts[:4]]
            out.append({"source": unesc[0], "target": unesc[1], "fstype": unesc[2],
                        "options": unesc[3].split(",")})
    return out


def mounts(root="/"):
    """The mounts of this host (``parse_mounts``), [] when they cannot be read."""
    return parse_mounts(read_file(root, MOUNTS, ""))


def find_mount(mounts, path):
    """The mount whose target is exactly ``path`` (the last one wins, as the kernel shows it)."""
    path = os.path.normpath(path)
    hit = None
    for m in mounts:
        if os.path.normpath(m["target"]) == path:
            hit = m
    return hit


def mount_containing(mounts, path):
    """The mount a file at ``path`` lies on: the one with the longest target that contains it (the
    last one of equal length wins, as the kernel shows them)."""
    path = os.path.normpath(path)
    hit, best = None, -1
    for m in mounts:
        target = os.path.normpath(m["target"])
        if (path == target or path.startswith(target.rstrip("/") + "/")) and len(target) >= best:
            hit, best = m, len(target)
    return hit


def pid_alive(pid):
    """Whether ``pid`` is a live Python process (the agent or a module that journals)."""
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as fh:
            return b"python" in fh.read()
    except (IOError, OSError, TypeError, ValueError):
        return False
