# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One report directory per run: a run's reports go to ``BASE/RUN/``, never over another run's;
``BASE/latest`` points at the last run that wrote, and each report's top-level name
(``BASE/blackout.txt``, ``BASE/waves/``) at the last run that wrote that report, so readers of
the top-level names keep working and an earlier run's table is never lost.

Where the filesystem has no symlinks, ``BASE/latest`` is a file holding the run's name and the
top-level names are copies."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fnmatch
import json
import os
import re
import shutil

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import replace_file

LATEST = "latest"
# Where a top-level report of the old layout (a plain file or directory) is moved, once.
BEFORE = "before-runs"


def report_json(data):
    """A JSON report's text (waves.json, sizing.json)."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def report_text(content):
    """A report file's text. ansible-core 2.17 and 2.18 turn a template's result that looks like JSON
    back into data on its way to a module: such data is written as the JSON it was rendered as."""
    if content is None:
        return ""
    if isinstance(content, (dict, list)):
        return report_json(content)
    return content


def run_name(run):
    """``run`` as a directory name: letters, digits and . _ - kept, anything else ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(run or "")).strip(".")
    if not name or name in (LATEST, BEFORE):
        raise ValueError("a run id gives a directory name: %r does not" % (run,))
    return name


def run_dir(base, run):
    return os.path.join(base, run_name(run))


def _aside(base, name):
    """Move a top-level report of the old layout out of the way (kept in BEFORE)."""
    path = os.path.join(base, name)
    if os.path.islink(path) or not os.path.lexists(path):
        return
    keep = os.path.join(base, BEFORE)
    if not os.path.isdir(keep):
        os.makedirs(keep)
    dest = os.path.join(keep, name)
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)
    elif os.path.lexists(dest):
        os.unlink(dest)
    os.rename(path, dest)


def _link(target, path):
    """``path`` becomes a symlink to ``target`` in one rename (readers never see it missing)."""
    if os.path.islink(path) and os.readlink(path) == target:
        return False
    tmp = os.path.join(os.path.dirname(path), ".%s.%d.link" % (os.path.basename(path), os.getpid()))
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, path)
    return True


def _copy(src, dest):
    if os.path.isdir(src):
        if os.path.lexists(dest) and not os.path.isdir(dest):
            os.unlink(dest)
        if not os.path.isdir(dest):
            os.makedirs(dest)
        names = set(os.listdir(src))
        for name in os.listdir(dest):  # what the run no longer has
            if name not in names and os.path.isfile(os.path.join(dest, name)):
                os.unlink(os.path.join(dest, name))
        for name in sorted(names):
            _copy(os.path.join(src, name), os.path.join(dest, name))
        return
    with open(src, "rb") as fh:
        replace_file(dest, fh.read(), 0o644)


def differs_from_latest(base, texts, subdir=None, exclusive=None):
    """The names of ``texts`` ({name: text or bytes}) whose content differs from what the top-level
    names show now (the last run that wrote them), and with ``exclusive`` (a glob) the names shown
    there that this run no longer has. A run writes its own directory every time; whether that is a
    change is whether what the operator reads changed."""
    shown = os.path.join(base, subdir) if subdir else base
    differs = []
    for name in sorted(texts):
        data = texts[name]
        if not isinstance(data, bytes):
            data = str(data if data is not None else "").encode("utf-8")
        try:
            with open(os.path.join(shown, name), "rb") as fh:
                if fh.read() == data:
                    continue
        except (IOError, OSError):
            pass
        differs.append(name)
    if exclusive and os.path.isdir(shown):
        differs += sorted(n for n in os.listdir(shown) if n not in texts and fnmatch.fnmatchcase(n, exclusive)
                          and os.path.isfile(os.path.join(shown, n)))
    return differs


def publish(base, run, names):
    """Point ``base/latest`` at run ``run`` and each top-level ``base/NAME`` of ``names`` (files or
    directories of the run) at ``base/RUN/NAME``. Returns whether a link or copy changed."""
    run = run_name(run)
    changed = False
    try:
        for name in names:
            _aside(base, name)
            changed = _link(os.path.join(run, name), os.path.join(base, name)) or changed
        _aside(base, LATEST)
        return _link(run, os.path.join(base, LATEST)) or changed
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    # No symlinks here: copies, and latest as a file naming the run.
    for name in names:
        _copy(os.path.join(base, run, name), os.path.join(base, name))
    latest = os.path.join(base, LATEST)
    if os.path.islink(latest):
        os.unlink(latest)
    if os.path.isdir(latest):
        _aside(base, LATEST)
    replace_file(latest, (run + "\n").encode("utf-8"), 0o644)
    return True
