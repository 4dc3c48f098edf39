# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LUO memfd (mainline KHO + Live Update Orchestrator, Linux 6.19+): each VM's RAM is one memfd,
held by the host agent, which preserves it through ``/dev/liveupdate`` before a kexec_file_load
kexec and retrieves it after. Nothing is carved out and there is no filesystem: the memory is
ordinary shmem. What the kernel needs is KHO and LUO built in and both switched on at boot
(``kho=on liveupdate=on``, both default off), on the running kernel and on every kexec target:
a target booted without them leaves the preserved pages stranded.

KHO keeps *scratch areas* (movable-only CMA) free of preserved memory: the next kernel boots in
them. Their sizes are decided once, on the cold boot (``kho_scratch=``, else a multiple of the
memory the kernel has reserved by then), and handed down every kexec after it. Preserved memfd
pages are pinned, which moves them out of CMA, so VM memory never sits in scratch: a host needs
physical RAM for the VMs, the scratch areas and its own reserve side by side. The rules below are
the ones of ``kernel/liveupdate/kexec_handover.c`` (``kho_parse_scratch_size``,
``scratch_size_update``, ``scratch_size_node``, ``kho_reserve_scratch``) in Linux 7.3.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import Backend, BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import (
    GiB, KiB, MiB, align_up, human)

PAGE = 4 * KiB
# SCRATCH_ALIGNMENT_BYTES = PAGE_SIZE * MAX_ORDER_NR_PAGES (MAX_PAGE_ORDER 10 on x86_64): every
# area is rounded up to it, because scratch is released to the buddy allocator as CMA.
SCRATCH_ALIGN = 4 * MiB
# scratch_scale: percent of the memory the kernel has reserved (memblock, RSRV_KERN, less
# boot-time HugeTLB pages) when KHO sizes its areas.
DEFAULT_SCALE = 200
# ARCH_LOW_ADDRESS_LIMIT on x86_64: the lowmem area must lie below it.
LOW_LIMIT = 4 * GiB
# By then the kernel has reserved its struct pages (64 bytes per 4 KiB page, allocated per
# present 128 MiB section) and a part that does not grow with RAM: image (43 MiB for the
# collection's 7.3 build, _text.._end in System.map), initramfs, page tables, per-CPU areas,
# crashkernel= if any. 64 MiB for that part reproduces the 312 MiB of scratch measured on a
# 1 GiB VM with the default scale; a host with crashkernel= or a large initramfs sets more.
STRUCT_PAGE = 64
SECTION = 128 * MiB
DEFAULT_KERNEL_RESERVED = 64 * MiB
# Per preserved 4 KiB folio: a 16-byte record (pfn+flags, index) that stays preserved until the
# next kernel retrieves the file, and an 8-byte folio pointer while PRESERVE_FD runs
# (mm/memfd_luo.c, memfd_luo_preserve_folios).
FOLIO_RECORD = 16
FOLIO_POINTER = 8
# memfd_luo_preserve refuses (EFBIG) a file of more than UINT_MAX pages.
MAX_PAGES = 2 ** 32 - 1

_MEMPARSE = re.compile(r"^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([KMGTPEkmgtpe]?)")


def kstrtobool(value):
    """The kernel's reading of a boolean parameter: True, False, or None when it would refuse the
    value (and keep its default)."""
    if not isinstance(value, str) or not value:
        return None
    c = value[0].lower()
    if c in "eyt1":
        return True
    if c in "dnf0":
        return False
    if c == "o" and len(value) > 1:
        return {"n": True, "f": False}.get(value[1].lower())
    return None


def flag(args, name, default=False):
    """Whether boolean early parameter ``name`` ends up on: each valid occurrence overrides the
    previous one; a bare ``name`` or a value the kernel refuses leaves it as it was."""
    state = default
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == name and sep:
            b = kstrtobool(value)
            if b is not None:
                state = b
    return state


def memparse(text):
    """One size as the kernel's memparse() reads it -> (bytes, rest of the text)."""
    m = _MEMPARSE.match(text)
    if not m:
        raise ValueError("%r does not start with a size" % text)
    num = m.group(1)
    base = 16 if num[:2].lower() == "0x" else (8 if num.startswith("0") and len(num) > 1 else 10)
    shift = "KMGTPE".find(m.group(2).upper()) + 1 if m.group(2) else 0
    return int(num, base) << (10 * shift), text[m.end():]


def parse_kho_scratch(value):
    """``kho_scratch=`` -> ("scale", percent) or ("sizes", (lowmem, global, per_node)).

    ValueError for what the kernel rejects (it then keeps the default, which is never what the
    operator meant), and for a 0% scale, which sizes every area to nothing."""
    text = str(value).strip()
    if text.endswith("%"):
        if not re.match(r"^\d{1,10}$", text[:-1]) or int(text[:-1]) > 2 ** 32 - 1:
            raise ValueError("kho_scratch=%s: a scale is a whole percentage such as 200%%" % text)
        if int(text[:-1]) == 0:
            raise ValueError("kho_scratch=%s: a 0%% scale leaves no scratch area" % text)
        return "scale", int(text[:-1])
    sizes, rest = [], text
    try:
        for i in range(3):
            if i:
                if not rest.startswith(","):
                    raise ValueError("expected ','")
                rest = rest[1:]
            size, rest = memparse(rest)
            sizes.append(size)
    except ValueError:
        rest = None
    if rest != "" or not any(sizes):
        raise ValueError("kho_scratch=%s: use N%% or three sizes lowmem,global,per-node (e.g. 64M,512M,256M), "
                         "not all zero" % text)
    return "sizes", tuple(sizes)


def scratch_areas(spec, reserved=0, reserved_low=0, node_reserved=(0,)):
    """The scratch areas the kernel reserves at a cold boot, as ``kho_reserve_scratch`` does:
    {lowmem, global, nodes: [...], total}. ``spec`` is parse_kho_scratch's answer (None: the
    default scale); ``reserved`` the kernel's reserved memory, ``reserved_low`` the part of it
    below 4 GiB and ``node_reserved`` its share on each node with memory (scale only)."""
    kind, value = spec or ("scale", DEFAULT_SCALE)
    if kind == "scale":
        lowmem = reserved_low * value // 100
        glob = reserved * value // 100 - lowmem
        nodes = [n * value // 100 for n in node_reserved]
    else:
        lowmem, glob = value[0], value[1]
        nodes = [value[2]] * len(node_reserved)
    out = {"lowmem": align_up(lowmem, SCRATCH_ALIGN), "global": align_up(glob, SCRATCH_ALIGN),
           "nodes": [align_up(n, SCRATCH_ALIGN) for n in nodes]}
    out["total"] = out["lowmem"] + out["global"] + sum(out["nodes"])
    return out


def estimate_reserved(memory_bytes, firmware_ram_ranges=None, nodes=1, kernel_reserved=DEFAULT_KERNEL_RESERVED):
    """What the kernel will have reserved when KHO sizes its scratch: (total, below 4 GiB, per
    node). Struct pages for every present section, spread over the nodes; the fixed part on node
    0 and below 4 GiB, where boot loaders put the kernel and its initramfs. Only the split's
    rounding depends on that guess: the areas' sum is twice the scale of the total."""
    if firmware_ram_ranges:
        # the sections any range touches, counted over the merged runs of section numbers
        count, last = 0, -1
        for first, end in sorted((start // SECTION, end // SECTION) for start, end in firmware_ram_ranges):
            first = max(first, last + 1)
            if end >= first:
                count += end - first + 1
                last = end
        memmap = count * (SECTION // PAGE) * STRUCT_PAGE
    else:
        memmap = align_up(memory_bytes, SECTION) // PAGE * STRUCT_PAGE
    nodes = max(int(nodes or 1), 1)
    per = [memmap // nodes] * nodes
    per[0] += memmap - sum(per) + kernel_reserved
    return memmap + kernel_reserved, kernel_reserved, per


class LuoBackend(Backend):
    name = "luo"
    # KEXEC_HANDOVER selects KEXEC_FILE; listed so a target is checked for what the next update
    # needs as well.
    required_kernel_options = (("CONFIG_KEXEC_HANDOVER",), ("CONFIG_LIVEUPDATE",), ("CONFIG_LIVEUPDATE_MEMFD",),
                               ("CONFIG_KEXEC_FILE",))
    # memfds are page-granular: memfd_luo pins and records PAGE_ALIGN(size) / PAGE_SIZE pages.
    size_align = PAGE
    max_file_bytes = MAX_PAGES * PAGE
    has_filesystem = False
    carves_out = False
    fstype = None
    cmdline_names = ("kho", "liveupdate", "kho_scratch")
    FLAGS = ("kho=on", "liveupdate=on")

    def overhead_bytes(self, size):
        # Worst case, one 4 KiB folio per page (shmem without huge pages).
        return align_up(size, PAGE) // PAGE * (FOLIO_RECORD + FOLIO_POINTER)

    def cmdline_args(self, size, firmware_ram_ranges=None, kho_scratch=None):
        """``kho=on liveupdate=on`` (+ ``kho_scratch=``). ``size`` is the VMs' memory; nothing is
        carved out, so it only has to make sense."""
        if size is None or size < 0:
            raise BackendError("the luo backend needs the VMs' memory in bytes, not %r" % (size,))
        args = list(self.FLAGS)
        if kho_scratch not in (None, ""):
            try:
                parse_kho_scratch(kho_scratch)
            except ValueError as exc:
                raise BackendError(str(exc))
            args.append("kho_scratch=%s" % kho_scratch)
        return args

    def next_kernel_args(self, running_args):
        # The flags stay: a target booted without kho=on and liveupdate=on strands the preserved
        # memory. kho_scratch= stays too, harmlessly: a KHO boot takes the areas from the
        # handover and only a later cold boot reads it again.
        return list(running_args)

    def mount_spec(self, mount_point, device=None):
        raise BackendError("the luo backend has no filesystem to mount: each VM's memory is a memfd "
                           "held by the host agent")

    def scratch(self, memory_bytes, firmware_ram_ranges=None, nodes=1, kho_scratch=None,
                kernel_reserved=DEFAULT_KERNEL_RESERVED):
        """The scratch areas a cold boot of this host will reserve (see ``scratch_areas``)."""
        spec = parse_kho_scratch(kho_scratch) if kho_scratch not in (None, "") else None
        reserved, low, per_node = estimate_reserved(memory_bytes, firmware_ram_ranges, nodes, kernel_reserved)
        areas = scratch_areas(spec, reserved, low, per_node)
        if firmware_ram_ranges:
            low_ram = sum(min(e + 1, LOW_LIMIT) - s for s, e in firmware_ram_ranges if s < LOW_LIMIT)
            if areas["lowmem"] > low_ram:
                raise BackendError("the KHO lowmem scratch area (%s) does not fit in the %s of RAM below 4 GiB: "
                                   "the kernel would switch KHO off" % (human(areas["lowmem"]), human(low_ram)))
        return areas
