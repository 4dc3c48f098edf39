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

import os
import re
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import journal, memfd_holder
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import Backend, BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cmdline import flag
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import (
    GiB, KiB, MiB, align_up, human, parse_size)

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
    takes_kho_scratch = True
    build_implies_kho = True
    luo_preserved = True
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

    # The link is the holder's /proc/<pid>/fd/<n>: only root (with ptrace access to the holder)
    # follows it, so the agent opens it and hands the memfd to a confined QEMU (confine.MEM_FD).
    hands_memory_fd = True

    def vm_mem_path(self, name, mem_dir=None):
        """The holder's memfd, reached through the link it publishes (no file on a mount)."""
        return memfd_holder.mem_path(name)

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

    # The memfd holder; each VM's memfd is made in it (vm_memory) once it runs.
    units = ("guestmemfs-luo.service",)
    vm_unit_wants = units
    verify_unit_wants = units
    memory_from_service = True

    checks_target_kernel = True

    def target_problems(self, running_kho, release, config, places, next_args, load_cmd):
        """Why a kexec into the target (its ``release`` and ``config``, looked for in ``places``) with
        ``next_args`` by ``load_cmd`` would lose the memfds this backend preserves: [] when none. Pure."""
        problems = []
        if not running_kho.get("liveupdate_device"):
            problems.append("the running kernel has no /dev/liveupdate (it needs KEXEC_HANDOVER, LIVEUPDATE and "
                            "LIVEUPDATE_MEMFD built in and kho=on liveupdate=on on its cmdline): it cannot preserve "
                            "the VMs' memfds")
        if not release:
            problems.append("cannot read the target kernel's release from its image, so not its config either")
        elif config is None:
            problems.append("no config for the target kernel %s (looked for %s): cannot check it has KHO and LUO"
                            % (release, " and ".join(dict.fromkeys(places))))
        else:
            lacking = [alts[0] for alts in self.required_kernel_options if not any(config.get(a) == "y" for a in alts)]
            if lacking:
                problems.append("the target kernel %s lacks %s (built in): it cannot take the preserved memfds over"
                                % (release, ", ".join(lacking)))
        kho_default = bool(config) and config.get("CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT") == "y"
        off = [a for a, on in (("kho=on", flag(next_args, "kho", kho_default)),
                               ("liveupdate=on", flag(next_args, "liveupdate"))) if not on]
        if off:
            problems.append("the next cmdline would boot the target without %s: the preserved memory would be "
                            "stranded" % " and ".join(off))
        if "-s" not in load_cmd[1:] or "-c" in load_cmd[1:] or "--kexec-syscall" in load_cmd[1:]:
            problems.append("the KHO handover rides only on kexec_file_load (kexec -s); %s would lose it"
                            % " ".join(load_cmd[:3]))
        return problems

    def plan_scratch(self, host, policy):
        """The policy's explicit sizes; what the running kernel shows, when it booted with the same
        kho_scratch= as the policy asks; else the kernel's rule over an estimate of its reservations."""
        wanted = policy.get("kho_scratch") or None
        measured = host.get("kho_scratch_bytes")
        kind = parse_kho_scratch(wanted)[0] if wanted else "scale"
        if kind != "sizes" and measured and (host.get("kho_scratch") or None) == wanted:
            return int(measured), "running kernel"
        kernel_reserved = parse_size(policy.get("kernel_reserved", DEFAULT_KERNEL_RESERVED), "kernel_reserved")
        areas = self.scratch(host.get("memory_bytes"), host.get("firmware_ram_ranges") or None,
                             host.get("numa_nodes") or 1, wanted, kernel_reserved)
        return areas["total"], {"sizes": "kho_scratch", "scale": "estimate"}[kind]

    # -- vm_memory: each VM's memfd is made by the holder
    def service_memory(self):
        try:
            have = memfd_holder.request("status")["vms"]
        except (memfd_holder.HolderError, OSError, ValueError) as exc:
            raise BackendError("cannot reach the memfd holder: %s" % exc)
        return dict((name, (v or {}).get("size")) for name, v in have.items() if (v or {}).get("size") is not None)

    def make_service_memory(self, name, size):
        try:
            memfd_holder.request("ensure", name=name, size=size)
        except (memfd_holder.HolderError, OSError, ValueError) as exc:
            raise BackendError(str(exc))

    def resize_refusal(self, name, have, want):
        return ("VM %s: its memfd is %s, not %s; a VM's memory is not resized in place: stop the VM, then "
                "`agent luo drop %s`" % (name, human(have), human(want), name))

    # -- the host agent: the memfd holder (module_utils/memfd_holder) owns the session and every
    # VM's memfd, so each step is a request to it.
    # The holder holds the session: it must be the one to kexec.
    kexec_order = 0

    def before_pause(self, vms, update_id):
        if not vms:
            return {}
        try:
            return memfd_holder.request("preserve", names=[vm.name for vm in vms], update_id=update_id)["tokens"]
        except Exception as exc:
            raise BackendError("preserving the VMs' memfds failed: %s. Nothing was paused; every VM is still running"
                               % exc)

    def abort(self, j):
        if (j.get("luo") or {}).get("boot_id") != journal.boot_id():
            return
        try:
            memfd_holder.request("unpreserve")
        except Exception as exc:
            journal.update_journal(lambda jj: None, msg="luo: session left open: %s (agent luo unpreserve)" % exc)

    @staticmethod
    def _preserved(j):
        held = j.get("luo") or {}
        return held if held.get("boot_id") == journal.boot_id() and held.get("tokens") else None

    def kexec_problems(self, vms, j, root="/"):
        names = set(vm.name for vm in vms)
        in_update = sorted(n for n in (j.get("vms") or {}) if n in names)
        if not in_update:
            return []
        held = self._preserved(j)
        if held is None:
            return ["VMs on the luo backend but no session preserved on this boot (journal luo: %s)" % (
                j.get("luo") or "none")]
        unpreserved = [n for n in in_update if n not in set(held["tokens"])]
        if unpreserved:
            return ["memfds of %s are not preserved" % ", ".join(unpreserved)]
        return []

    def kexec(self, vms, j, run, root="/"):
        journal.set_phase("kexec", kexec_ts=time.time())
        os.sync()
        # A holder that died is restarted by systemd with every fd from its store: wait for it.
        deadline = time.monotonic() + 90
        while True:
            try:
                memfd_holder.request("kexec")
                return None
            except (memfd_holder.HolderError, OSError) as exc:
                retry = isinstance(exc, OSError) or "not running" in str(exc)
                if not retry or time.monotonic() > deadline:
                    return "the memfd holder did not kexec: %s" % exc
            time.sleep(2)

    def after_update(self, j):
        if (j.get("luo") or {}).get("retrieved_boot_id") == journal.boot_id() and not j["luo"].get("finished_ts"):
            try:  # the holder decides: it keeps the session while a token did not come back
                memfd_holder.request("finish")
            except Exception as exc:
                journal.update_journal(lambda jj: None, msg="luo: session not finished yet: %s" % exc)
