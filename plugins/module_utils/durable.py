# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root-only JSON files that survive a crash or a kexec: written to a temporary file, fsynced,
renamed over the old one, and the directory fsynced."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import fcntl
import json
import os


def write_json(path, data):
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d, 0o700)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, sort_keys=True, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def replace_file(path, data, mode):
    """Write ``data`` (bytes) to ``path`` by a rename from a temporary file beside it: a reader sees
    the old file or the new one, never half of one. Not fsynced (reports, not state)."""
    import tempfile  # here: the VM unit's start writes no report, and tempfile imports shutil, bz2, lzma
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".%s." % os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CorruptFile(ValueError):
    """A state file exists but is not JSON: the message names the file and the recovery."""


def read_json(path, default=None, recover=None):
    """The JSON in ``path``, ``default`` when it cannot be read; CorruptFile (never a traceback)
    when it is not JSON, naming the file and ``recover`` (what the operator does about it)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (IOError, OSError):
        return default
    except ValueError as exc:
        raise CorruptFile("%s is not valid JSON (%s); it was left as found. %s" % (
            path, exc, recover or "Recover: repair it or restore it from a copy"))


@contextlib.contextmanager
def locked(path):
    """An exclusive lock beside ``path`` for a read-modify-write by several processes."""
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d, 0o700)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
