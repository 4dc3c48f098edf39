# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which processes use a file or a directory tree: a VM's RAM file is mapped by its QEMU."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat


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


def _file_id(path):
    """(dev, ino) of a regular file, None for a directory or what cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISDIR(st.st_mode) else (st.st_dev, st.st_ino)


def users(prefix, proc="/proc", mapped_only=False):
    """[(pid, comm, path)] of processes that map or hold open a file at or under ``prefix``.

    A file is matched by identity too (device and inode), not only by name: a memfd reached
    through a link to ``/proc/<pid>/fd/<n>`` is named ``/memfd:NAME (deleted)`` in every
    process, and a memfd retrieved after a live update has an empty name. ``mapped_only``: only
    processes that map it (QEMU), not those that merely hold it open (the luo backend's holder)."""
    ident = _file_id(prefix)
    prefix = os.path.realpath(prefix)
    if ident is not None and not os.path.lexists(prefix):
        prefix = None  # no name in the filesystem (a memfd): by identity only
    out = []
    for pid, comm, base in _processes(proc):
        seen = set()
        try:
            with open(os.path.join(base, "maps")) as fh:
                for line in fh:
                    parts = line.split(None, 5)
                    if len(parts) != 6:
                        continue
                    path = parts[5].strip().replace(" (deleted)", "")
                    if prefix and _under(path, prefix):
                        seen.add(path)
                    elif ident is not None and parts[4] == str(ident[1]) and _dev(parts[3]) == ident[0]:
                        seen.add(path)
        except (IOError, OSError):
            pass
        try:
            for fd in ([] if mapped_only else os.listdir(os.path.join(base, "fd"))):
                link = os.path.join(base, "fd", fd)
                try:
                    path = os.readlink(link).replace(" (deleted)", "")
                except OSError:
                    continue
                if prefix and _under(path, prefix):
                    seen.add(path)
                elif ident is not None and not path.startswith(("socket:", "pipe:", "anon_inode:")) \
                        and _file_id(link) == ident:
                    seen.add(path)
        except OSError:
            pass
        for path in sorted(seen):
            out.append((pid, comm, path))
    return out


def _dev(text):
    """The st_dev of a maps line's ``major:minor`` (hex)."""
    try:
        major, minor = text.split(":")
        return os.makedev(int(major, 16), int(minor, 16))
    except ValueError:
        return None


def qemu_processes(proc="/proc"):
    """[(pid, comm)] of running QEMU system emulators."""
    return [(pid, comm) for pid, comm, _base in _processes(proc)
            if comm.startswith("qemu-system") or comm in ("qemu-kvm", "kvm")]
