# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""This boot's kexec handover (KHO) and the guestmemfs region it carries or reserves, read from
/proc, /sys and the kernel log. Read by the host facts and by the guestmemfs backend (which must not
depend on the facts, which ask every backend). Every reader takes ``root``. Stdlib only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import bootproof, fdt
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cmdline import flag, parse_cmdline
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.hostinfo import CMDLINE, KHO_ACTIVE, parse_meminfo, read_file
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.luo import kho_boot_evidence
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import parse_size

GUESTMEMFS_ALLOC_FAILED = re.compile(r"Failed to alloc (\d+) bytes for guestmemfs")


def scratch_len(root):
    """The KHO scratch areas' total size from debugfs (one hex size per area), None if unreadable."""
    text = read_file(root, "/sys/kernel/debug/kho/out/scratch_len")
    if text is None:
        return None
    try:
        return sum(int(line, 16) for line in text.split())
    except ValueError:
        return None


def handover_summary(root, path):
    """What a KHO v2 handover blob (``path``: /sys/kernel/kho/dt once active, /sys/firmware/kho/dt
    after the kexec) carries for guestmemfs: its region (the address's low bits are KHO flags, bit 0
    NOINIT) and the number of inodes; {"error": ...} for a blob that does not parse."""
    full = os.path.join(root, path.lstrip("/"))
    try:
        with open(full, "rb") as fh:
            blob = fh.read()
        tree = fdt.parse(blob)
    except (IOError, OSError, fdt.FdtError) as exc:
        return {"path": path, "error": str(exc)}
    out = {"path": path, "bytes": len(blob), "compatible": fdt.string(tree["props"].get("compatible", b"")),
           "nodes": sorted(tree["children"])}
    gm = tree["children"].get("guestmemfs")
    if gm is not None:
        region = fdt.ranges(gm["children"].get("fs_mem", {}).get("props", {}).get("mem", b""))
        inodes = fdt.u64s(gm["children"].get("mappings_to_inode", {}).get("props", {}).get("num_inodes", b""))
        out["guestmemfs"] = {
            "regions": [{"base": addr & ~0xFFF, "bytes": length, "flags": addr & 0xFFF} for addr, length in region],
            "num_inodes": inodes[0] if inodes else None}
    return out


def iomem_ram_bytes(root):
    """RAM as /proc/iomem's top-level "System RAM" entries list it (the e820 map: a carve-out stays
    in it), or None when unreadable or hidden (an unprivileged reader sees zero addresses)."""
    total, seen = 0, False
    for line in (read_file(root, "/proc/iomem", "") or "").splitlines():
        m = re.match(r"^([0-9a-fA-F]+)-([0-9a-fA-F]+) : System RAM$", line.rstrip())
        if m:
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            seen = True
            total += end - start + 1 if end > start else 0
    return total if seen and total else None


def kernel_log(root):
    """The kernel's log messages as text (/dev/kmsg, root only; bootproof reads it), or None when it
    cannot be opened."""
    path = os.path.join(root, "dev/kmsg")
    if not os.access(path, os.R_OK):
        return None
    return "\n".join(bootproof.kernel_log(path))


def guestmemfs_region(root, args, total_bytes, kho=None, log=None):
    """Whether guestmemfs has memory of its own on this boot. The RFC's filesystem mounts even when
    its region was never reserved (base 0): a file then maps physical memory from address 0, and the
    first VM that writes to it corrupts the kernel. So nothing may use guestmemfs unless:
    ``reserved``: a cold boot with guestmemfs=SIZE whose log has no "Failed to alloc" and whose
    MemTotal lacks SIZE (reserved memory is not counted in it); or ``handed_over``: a KHO boot whose
    handover carries the region (the mount reclaims it). Else ``missing`` or ``none``."""
    sizes = [a.split("=", 1)[1] for a in args if a.startswith("guestmemfs=")]
    out = {"state": "none", "bytes": None, "evidence": "no guestmemfs= on the cmdline and no handover carries a region"}
    if sizes:
        try:
            size = parse_size(sizes[-1], "guestmemfs=")
        except ValueError as exc:
            return dict(out, state="missing", evidence="guestmemfs=%s: %s" % (sizes[-1], exc))
        out["bytes"] = size
        log = kernel_log(root) if log is None else log
        failed = GUESTMEMFS_ALLOC_FAILED.search(log or "")
        if failed:
            return dict(out, state="missing", evidence="the kernel log says: %s" % failed.group(0))
        ram = iomem_ram_bytes(root)
        if ram and total_bytes and total_bytes + size > ram:
            return dict(out, state="missing", evidence="MemTotal (%d bytes) still counts the %d bytes of guestmemfs= "
                        "(RAM in /proc/iomem: %d bytes): the region was not reserved" % (total_bytes, size, ram))
        return dict(out, state="reserved", evidence="guestmemfs=%s on the cmdline; MemTotal lacks it%s" % (
            sizes[-1], "" if log is not None else " (the kernel log was not readable)"))
    regions = (((kho or {}).get("incoming_handover") or {}).get("guestmemfs") or {}).get("regions") or []
    if regions:
        return dict(out, state="handed_over", bytes=sum(r["bytes"] for r in regions),
                    evidence="the KHO handover (/sys/firmware/kho/dt) carries the region")
    return out


def guestmemfs_region_refusal(root="/"):
    """None when this boot's guestmemfs has a region of its own, else the reason nothing may create,
    map or start a VM on it (see guestmemfs_region)."""
    args = parse_cmdline(read_file(root, CMDLINE, "") or "")
    total = parse_meminfo(read_file(root, "/proc/meminfo", "")).get("MemTotal", 0)
    region = guestmemfs_region(root, args, total, kho_state(root, args))
    if region["state"] in ("reserved", "handed_over"):
        return None
    return ("guestmemfs has no region of its own on this boot (%s: %s): its files would map physical memory "
            "from address 0 and a VM writing to them would corrupt the kernel. Boot with guestmemfs=SIZE "
            "kho_scratch=SIZE (playbooks/prepare.yml) and check the kernel log for \"Failed to alloc\""
            % (region["state"], region["evidence"]))


def kho_state(root, args=None, config=None):
    """Which KHO interface this kernel has, whether it is on, and whether this boot came from a
    KHO kexec.

    ``rfc``: the guestmemfs RFC's KHO v2 (/sys/kernel/kho/active, write 1 to serialise; a handover
    shows as /sys/firmware/kho/dt).
    ``mainline``: CONFIG_KEXEC_HANDOVER (6.16+). On when ``kho=`` says so (kstrtobool; default
    CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT); LUO when ``liveupdate=`` also does, and only then
    /dev/liveupdate exists. debugfs ``kho/`` exists only while KHO runs (with
    KEXEC_HANDOVER_DEBUGFS, debugfs mounted), with ``out/scratch_len``. A KHO kexec shows without
    debugfs on x86: kexec_file_load adds a setup_data entry of type SETUP_KEXEC_KHO to the new
    kernel's boot_params, listed under /sys/kernel/boot_params/setup_data; else debugfs ``kho/in``.
    """
    if args is None:
        args = parse_cmdline(read_file(root, CMDLINE, ""))
    config = config or {}
    scratch_arg = [a.split("=", 1)[1] for a in args if a.startswith("kho_scratch=")]
    out = {"interface": None, "active": None, "enabled": None, "incoming": False, "incoming_evidence": None,
           "liveupdate_device": os.path.exists(os.path.join(root, "dev/liveupdate")),
           "kho_flag": flag(args, "kho", config.get("CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT") == "y"),
           "liveupdate_flag": flag(args, "liveupdate"),
           "kho_scratch": scratch_arg[-1] if scratch_arg else None, "scratch_bytes": None}
    active = read_file(root, KHO_ACTIVE)
    debugfs_kho = os.path.isdir(os.path.join(root, "sys/kernel/debug/kho"))
    if active is not None:
        out["interface"] = "rfc"
        out["active"] = active.strip() == "1"
        out["scratch_len"] = (read_file(root, "/sys/kernel/kho/scratch_len", "") or "").strip() or None
        if os.path.exists(os.path.join(root, "sys/firmware/kho/dt")):
            out["incoming"], out["incoming_evidence"] = True, "/sys/firmware/kho/dt"
            out["incoming_handover"] = handover_summary(root, "/sys/firmware/kho/dt")
        if out["active"]:
            out["handover"] = handover_summary(root, "/sys/kernel/kho/dt")
        return out
    if not (config.get("CONFIG_KEXEC_HANDOVER") == "y" or debugfs_kho or out["liveupdate_device"]):
        return out
    out["interface"] = "mainline"
    if debugfs_kho or out["liveupdate_device"]:
        out["enabled"] = True
    elif config:
        out["enabled"] = out["kho_flag"]
    out["scratch_bytes"] = scratch_len(root)
    evidence = kho_boot_evidence(root)
    if evidence:
        out["incoming"], out["incoming_evidence"] = True, "; ".join(evidence)
    return out
