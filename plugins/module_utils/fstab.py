# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""/etc/fstab entries for the backend's mount. Pure text editing; comments and order are kept."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os


def _fields(line):
    s = line.strip()
    if not s or s.startswith("#"):
        return None
    parts = s.split()
    return parts if len(parts) >= 3 else None


def entry_line(source, target, fstype, options, comment=None):
    line = "%s %s %s %s 0 0\n" % (source, os.path.normpath(target).replace(" ", "\\040"), fstype, options)
    return ("# %s\n" % comment if comment else "") + line


def find(text, target):
    """The fields of the entry mounting ``target``, or None."""
    target = os.path.normpath(target)
    for line in text.splitlines():
        f = _fields(line)
        if f and os.path.normpath(f[1].replace("\\040", " ")) == target:
            return f
    return None


def set_entry(text, source, target, fstype, options, comment=None):
    """Text with exactly one entry for ``target`` carrying these fields (replaced in place)."""
    want = entry_line(source, target, fstype, options)
    out, done = [], False
    norm = os.path.normpath(target)
    for line in text.splitlines(True):
        f = _fields(line)
        if f and os.path.normpath(f[1].replace("\\040", " ")) == norm:
            if not done:
                out.append(want)
                done = True
            continue
        out.append(line)
    if not done:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(entry_line(source, target, fstype, options, comment))
    return "".join(out)


def remove_entry(text, target):
    norm = os.path.normpath(target)
    return "".join(line for line in text.splitlines(True)
                   if not ((_fields(line) or [None, None])[1] and
                           os.path.normpath(_fields(line)[1].replace("\\040", " ")) == norm))
