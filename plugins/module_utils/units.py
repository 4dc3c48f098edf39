# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory sizes as the kernel's memparse() reads them: binary K, M, G, T, P suffixes."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

KiB, MiB, GiB, TiB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4
_SUFFIX = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1024 ** 5}
_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.I)


_PARSED = {}  # text -> bytes: a fleet repeats a few sizes many times


def parse_size(value, what="size"):
    """'10G', '512M', '1.5G', '0x40000000', 1073741824 -> bytes (int). Raises ValueError."""
    if value.__class__ is str:
        size = _PARSED.get(value)
        if size is not None:
            return size
        size = _parse_size(value, what)
        if len(_PARSED) < 65536:
            _PARSED[value] = size
        return size
    return _parse_size(value, what)


def _parse_size(value, what):
    if isinstance(value, bool):
        raise ValueError("%s: %r is not a size" % (what, value))
    if isinstance(value, int):
        if value < 0:
            raise ValueError("%s: %r is negative" % (what, value))
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError("%s: %r is not a size (use bytes or K/M/G/T, e.g. 10G)" % (what, value))
    num, suffix = m.group(1), m.group(2).upper()
    base = int(num, 16) if num.lower().startswith("0x") else float(num)
    size = base * _SUFFIX[suffix]
    if size != int(size):
        raise ValueError("%s: %r is not a whole number of bytes" % (what, value))
    return int(size)


_FORMATTED = {}


def format_size(size):
    """bytes -> the largest exact kernel suffix: 1073741824 -> '1G', 3221225472 -> '3G'."""
    text = _FORMATTED.get(size)
    if text is None:
        text = _format_size(size)
        if len(_FORMATTED) < 65536:
            _FORMATTED[size] = text
    return text


def _format_size(size):
    for suffix in ("P", "T", "G", "M", "K"):
        unit = _SUFFIX[suffix]
        if size and size % unit == 0:
            return "%d%s" % (size // unit, suffix)
    return str(size)


def human(size):
    """bytes -> short text for tables: '1.5 GiB'."""
    for suffix, unit in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(size) >= unit:
            return "%.1f %s" % (size / unit, suffix)
    return "%d B" % size


def align_down(value, align):
    return value - value % align


def align_up(value, align):
    return value + (-value) % align
