# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a flattened device tree (the format of the KHO handover blob, /sys/kernel/kho/dt and
/sys/firmware/kho/dt on the guestmemfs RFC's KHO v2): the header, the structure block's tokens and
the strings block, per the devicetree specification. Stdlib only; nothing is written."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9


class FdtError(ValueError):
    pass


def parse(blob):
    """``blob`` -> {"props": {name: bytes}, "children": {name: node}} for the root node."""
    if len(blob) < 40:
        raise FdtError("%d bytes: shorter than a device tree header" % len(blob))
    magic, total, off_struct, off_strings, _off_rsv, _version, _last, _boot_cpu, size_strings, size_struct = \
        struct.unpack(">10I", blob[:40])
    if magic != MAGIC:
        raise FdtError("no device tree magic (0x%08x)" % magic)
    if total > len(blob) or off_struct + size_struct > total or off_strings + size_strings > total:
        raise FdtError("cut short: the header says %d bytes, %d are here" % (total, len(blob)))
    strings = blob[off_strings:off_strings + size_strings]
    pos, end = off_struct, off_struct + size_struct
    stack = []
    root = None
    while pos < end:
        (token,) = struct.unpack(">I", blob[pos:pos + 4])
        pos += 4
        if token == FDT_BEGIN_NODE:
            stop = blob.index(b"\0", pos)
            name = blob[pos:stop].decode("ascii", "replace")
            pos = (stop + 4) & ~3
            node = {"props": {}, "children": {}}
            if stack:
                stack[-1]["children"][name] = node
            elif root is None:
                root = node
            else:
                raise FdtError("a second root node")
            stack.append(node)
        elif token == FDT_END_NODE:
            if not stack:
                raise FdtError("an end of node without a node")
            stack.pop()
        elif token == FDT_PROP:
            if not stack:
                raise FdtError("a property outside any node")
            length, name_off = struct.unpack(">II", blob[pos:pos + 8])
            pos += 8
            name = strings[name_off:strings.index(b"\0", name_off)].decode("ascii", "replace")
            stack[-1]["props"][name] = blob[pos:pos + length]
            pos = (pos + length + 3) & ~3
        elif token == FDT_NOP:
            continue
        elif token == FDT_END:
            break
        else:
            raise FdtError("unknown token %d at offset %d" % (token, pos - 4))
    if root is None or stack:
        raise FdtError("the structure block does not close its nodes")
    return root


def string(value):
    return value.split(b"\0", 1)[0].decode("ascii", "replace")


def u64s(value, order="<"):
    """64-bit values of a property. KHO v2 writes its values as the kernel's own structs (``struct
    kho_mem {addr; len}``, a u64 count) in host byte order - little-endian on x86 - not as the
    big-endian cells device trees usually hold: ``order`` is "<" for that, ">" for cells."""
    n = len(value) // 8
    return list(struct.unpack("%s%dQ" % (order, n), value[:n * 8]))


def ranges(value, order="<"):
    """A KHO ``mem`` property: pairs of u64 (address, length)."""
    vals = u64s(value, order)
    return [(vals[i], vals[i + 1]) for i in range(0, len(vals) - 1, 2)]
