# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's option strings (``-object memory-backend-file,id=m,mem-path=...``), read by the checks
of what a VM's argv opens and preserves. Stdlib only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def split_opts(text):
    """QEMU's ``a,b=c,d=e`` option string -> (first bare word or None, {key: value}). A doubled
    comma is a literal comma (QEMU's escaping)."""
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    first, opts = None, {}
    for n, part in enumerate(parts):
        if "=" in part:
            k, v = part.split("=", 1)
            opts[k] = v
        elif n == 0:
            first = part
        elif part:
            opts[part] = "on"
    return first, opts
