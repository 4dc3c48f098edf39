# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which processes use a file or a directory tree: a VM's RAM file is mapped by its QEMU."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os


def _under(path, prefix):
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _processes(proc):
    """(pid, comm, /proc/<pid>) of every process that can be read."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        base = os.path.join(proc, pid)
        try:
            with open(os.path.join(base, "comm")) as fh:
                comm = fh.read().strip()
        except (IOError, OSError):
            continue
        yield int(pid), comm, base


def users(prefix, proc="/proc"):
    """[(pid, comm, path)] of processes that map or hold open a file at or under ``prefix``."""
    prefix = os.path.realpath(prefix)
    out = []
    for pid, comm, base in _processes(proc):
        seen = set()
        try:
            with open(os.path.join(base, "maps")) as fh:
                for line in fh:
                    parts = line.split(None, 5)
                    if len(parts) == 6:
                        path = parts[5].strip().replace(" (deleted)", "")
                        if _under(path, prefix):
                            seen.add(path)
        except (IOError, OSError):
            pass
        try:
            for fd in os.listdir(os.path.join(base, "fd")):
                try:
                    path = os.readlink(os.path.join(base, "fd", fd))
                except OSError:
                    continue
                if _under(path, prefix):
                    seen.add(path)
        except OSError:
            pass
        for path in sorted(seen):
            out.append((pid, comm, path))
    return out


def qemu_processes(proc="/proc"):
    """[(pid, comm)] of running QEMU system emulators."""
    return [(pid, comm) for pid, comm, _base in _processes(proc)
            if comm.startswith("qemu-system") or comm in ("qemu-kvm", "kvm")]
