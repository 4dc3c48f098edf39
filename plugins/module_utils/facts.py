# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a hypervisor has, read from /proc, /sys and /boot.

Every reader takes ``root`` (default ``/``) so that unit tests can point it at a recorded tree of
kernel files. Parsers take text and do no I/O. Stdlib only: this runs on the hypervisors.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import gzip
import os
import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, fdt, hostinfo, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.luo import kho_boot_evidence
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cmdline import CmdlineError, configured, flag, parse_cmdline
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.hostinfo import (
    CMDLINE, KHO_ACTIVE, MOUNTS, find_mount, parse_mounts, read_file)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import qemu_processes
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import parse_size

# Kernel options that decide which backends and handovers a kernel can do. KEXEC_KHO is the name
# in the guestmemfs RFC's KHO v2; mainline calls it KEXEC_HANDOVER.
KERNEL_OPTIONS = (
    "CONFIG_KEXEC", "CONFIG_KEXEC_FILE", "CONFIG_KEXEC_KHO", "CONFIG_KEXEC_HANDOVER",
    "CONFIG_KEXEC_HANDOVER_DEBUGFS", "CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT", "CONFIG_LIVEUPDATE",
    "CONFIG_LIVEUPDATE_MEMFD",
    "CONFIG_GUESTMEMFS_FS", "CONFIG_X86_PMEM_LEGACY", "CONFIG_BLK_DEV_PMEM", "CONFIG_FS_DAX",
    "CONFIG_LIBNVDIMM", "CONFIG_KEXEC_SIG", "CONFIG_SECURITY_LOCKDOWN_LSM", "CONFIG_FTRACE_KHO",
)


def parse_meminfo(text):
    """/proc/meminfo or a node's meminfo -> {key: bytes}."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^(?:Node \d+ )?([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?$", line.strip())
        if m:
            val = int(m.group(2))
            out[m.group(1)] = val * 1024 if line.rstrip().endswith("kB") else val
    return out


def cmdline_dict(args):
    """Arguments -> {name: value or True}; a repeated name keeps its last value like most parsers.
    ``memmap=`` may legitimately repeat, so values of repeated names are also kept in lists."""
    out = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        out.setdefault(name, []).append(value if sep else True)
    return out


def parse_kconfig(text, wanted=KERNEL_OPTIONS):
    """A kernel .config -> {option: 'y'|'m'|value|'n'} for the wanted options ('n' when unset)."""
    found = {}
    for line in (text or "").splitlines():
        m = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip('"')
    return dict((opt, found.get(opt, "n")) for opt in wanted)


def kernel_config(root, release):
    """The running kernel's config: /boot/config-<release>, else /proc/config.gz."""
    text = read_file(root, "/boot/config-%s" % release)
    source = "/boot/config-%s" % release
    if text is None:
        try:
            with gzip.open(os.path.join(root, "proc/config.gz"), "rt") as fh:
                text = fh.read()
            source = "/proc/config.gz"
        except (IOError, OSError):
            return None, None
    return parse_kconfig(text), source


def numa_nodes(root):
    base = os.path.join(root, "sys/devices/system/node")
    nodes = []
    try:
        names = sorted(os.listdir(base), key=lambda n: int(n[4:]) if n[4:].isdigit() else -1)
    except OSError:
        names = []
    for name in names:
        if not re.match(r"^node\d+$", name):
            continue
        info = parse_meminfo(read_file(root, "sys/devices/system/node/%s/meminfo" % name, ""))
        nodes.append({"node": int(name[4:]), "total_bytes": info.get("MemTotal", 0),
                      "free_bytes": info.get("MemFree", 0)})
    return nodes


def hugepage_sizes(root):
    base = os.path.join(root, "sys/kernel/mm/hugepages")
    sizes = []
    try:
        for name in os.listdir(base):
            m = re.match(r"^hugepages-(\d+)kB$", name)
            if m:
                sizes.append(int(m.group(1)) * 1024)
    except OSError:
        pass
    return sorted(sizes)


def firmware_memmap(root):
    """/sys/firmware/memmap: the firmware's (e820) map, which memmap= and guestmemfs= leave as it
    was. Returns [{start, end (inclusive), type}] sorted by start."""
    base = os.path.join(root, "sys/firmware/memmap")
    out = []
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        start = read_file(root, "sys/firmware/memmap/%s/start" % name)
        end = read_file(root, "sys/firmware/memmap/%s/end" % name)
        kind = read_file(root, "sys/firmware/memmap/%s/type" % name)
        if start is None or end is None or kind is None:
            continue
        out.append({"start": int(start.strip(), 16), "end": int(end.strip(), 16), "type": kind.strip()})
    return sorted(out, key=lambda e: e["start"])


def ram_ranges(memmap):
    return [[e["start"], e["end"]] for e in memmap if e["type"] == "System RAM"]


def _scratch_len(root):
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


GUESTMEMFS_ALLOC_FAILED = re.compile(r"Failed to alloc (\d+) bytes for guestmemfs")


def kernel_log(root):
    """The kernel's log buffer as text (/dev/kmsg, root only: one record per read), or None."""
    path = os.path.join(root, "dev/kmsg")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record overwritten while reading: go on
                    continue
                break  # EAGAIN: the end of the buffer
            if not data:
                break
            chunks.append(data.decode("utf-8", "replace"))
    finally:
        os.close(fd)
    return "".join(chunks)


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
    out["scratch_bytes"] = _scratch_len(root)
    evidence = kho_boot_evidence(root)
    if evidence:
        out["incoming"], out["incoming_evidence"] = True, "; ".join(evidence)
    return out


def image_release(path):
    """The release a bzImage announces in its setup header (boot protocol 2.00+: "HdrS" at 0x202,
    the version string's offset - 0x200 at 0x20E), or None when it is not such an image."""
    return image_version(path)[0]


def image_version(path):
    """(release, build) a bzImage announces: its header string is "RELEASE (BY@HOST) BUILD", where
    BUILD is what ``uname -v`` prints once it runs ("#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1 (...)").
    A rebuild of the same release (a fix built with the same localversion, a distribution update
    that kept its ABI name) differs in BUILD only. (None, None) when it is not such an image."""
    text = _image_header_text(path)
    if not text:
        return None, None
    release, _sep, rest = text.partition(" ")
    build = rest.split(") ", 1)[1] if rest.startswith("(") and ") " in rest else None
    return release or None, build or None


def _image_header_text(path):
    try:
        with open(path, "rb") as fh:
            head = fh.read(0x4000)
            if head[0x202:0x206] != b"HdrS":
                return None
            off = 0x200 + (head[0x20E] | head[0x20F] << 8)
            fh.seek(off)
            return fh.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    except (IOError, OSError, IndexError):
        return None


def image_problem(path):
    """Why a kernel image cannot boot though kexec_file_load would take it, or None.

    kexec_file_load loads what the file holds: an image cut short (a copy or a package install
    interrupted) loads without a word and the host dies in the kexec, with its VMs saved. The setup
    header says how long the image is: (setup_sects + 1) sectors of real-mode code, then syssize
    paragraphs of protected-mode kernel (boot protocol 2.04+)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(0x260)
    except (IOError, OSError) as exc:
        return "cannot read %s: %s" % (path, exc)
    if len(head) < 0x260 or head[0x202:0x206] != b"HdrS":
        return "%s is not a bzImage (no setup header)" % path
    setup_sects = head[0x1F1] or 4
    syssize = head[0x1F4] | head[0x1F5] << 8 | head[0x1F6] << 16 | head[0x1F7] << 24
    want = (setup_sects + 1) * 512 + syssize * 16
    if size + 16 <= want:  # syssize rounds the kernel and its 4-byte CRC up to 16 bytes
        return "%s is cut short: %d bytes, its header says %d" % (path, size, want)
    return None


def release_key(release):
    """Sort key that orders kernel releases as versions (6.9 < 6.12 < 7.3.4)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+~-]", release)]


def staged_kernels(root):
    """[(release, vmlinuz, initrd or None)] under /boot, oldest first."""
    boot = os.path.join(root, "boot")
    out = []
    try:
        names = os.listdir(boot)
    except OSError:
        return out
    for name in names:
        if name.startswith("vmlinuz-"):
            release = name[len("vmlinuz-"):]
            initrd = os.path.join(boot, "initrd.img-" + release)
            out.append((release, os.path.join(boot, name), initrd if os.path.exists(initrd) else None))
    return sorted(out, key=lambda k: release_key(k[0]))


def backend_mount(root, mount_point):
    """The backend's mount: whether mounted, its fs, DAX, capacity and usage, and its files."""
    info = {"path": mount_point, "mounted": False}
    mounts = parse_mounts(read_file(root, MOUNTS, ""))
    m = find_mount(mounts, mount_point)
    if not m:
        return info
    info.update(mounted=True, source=m["source"], fstype=m["fstype"], dax="dax" in m["options"]
                or "dax=always" in m["options"], options=m["options"])
    local = os.path.join(root, mount_point.lstrip("/"))
    try:
        st = os.statvfs(local)
        info["size_bytes"] = st.f_blocks * st.f_frsize
        info["free_bytes"] = st.f_bavail * st.f_frsize
        info["used_bytes"] = (st.f_blocks - st.f_bfree) * st.f_frsize
    except OSError:
        pass
    files = []
    try:
        for name in sorted(os.listdir(local)):
            path = os.path.join(local, name)
            if os.path.isfile(path):
                st = os.stat(path)
                files.append({"name": name, "size_bytes": st.st_size,
                              "allocated_bytes": st.st_blocks * 512})
    except OSError:
        pass
    info["files"] = files
    return info


def _drift(running_args, configured_args):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import boot_drift  # a cycle
    return boot_drift(running_args, configured_args)


def boot_drift(root="/", run=None):
    """The backends' running boot arguments the boot configuration lacks (backends.boot_drift), read
    from this host; a configuration that cannot be read is drift too (nothing shows it keeps them)."""
    args = parse_cmdline(hostinfo.read_file(root, hostinfo.CMDLINE) or "")
    try:
        conf = configured(run, root)
    except CmdlineError as exc:
        owned = _drift(args, [])
        return ["the boot configuration cannot be read (%s): nothing shows that the next cold boot keeps the "
                "running %s" % (exc, " ".join(d.split(" ", 1)[0] for d in owned))] if owned else []
    return _drift(args, conf)


def gather(root="/", mount_point=None, run=None):
    """All host facts as one dict (the module's ``guestmemfs`` fact). With ``run(argv) -> (rc,
    out, err)``, also the cmdline GRUB is configured to give the next cold boot."""
    release = (read_file(root, "/proc/sys/kernel/osrelease", "") or "").strip()
    meminfo = parse_meminfo(read_file(root, "/proc/meminfo", ""))
    cmdline_text = (read_file(root, CMDLINE, "") or "").strip()
    args = parse_cmdline(cmdline_text)
    config, config_source = kernel_config(root, release)
    filesystems = [line.split()[-1] for line in (read_file(root, "/proc/filesystems", "") or "").splitlines()
                   if line.strip()]
    kexec_loaded = bool(hostinfo.kexec_loaded(root))
    ranges = ram_ranges(firmware_memmap(root))
    facts = {
        "kernel_release": release,
        "boot_id": hostinfo.boot_id(root) or "",
        "memory": {
            "total_bytes": meminfo.get("MemTotal", 0),
            "available_bytes": meminfo.get("MemAvailable", 0),
            "numa_nodes": numa_nodes(root),
            "hugepage_sizes": hugepage_sizes(root),
            # Physical RAM as the firmware reports it: a carve-out does not shrink it (MemTotal it does).
            "firmware_ram_bytes": sum(e - s + 1 for s, e in ranges),
            "firmware_ram_ranges": ranges,
        },
        "cmdline": {"running": cmdline_text, "args": args, "options": cmdline_dict(args)},
        "kernel_config": config,
        "kernel_config_source": config_source,
        "kexec_file": bool(config) and config.get("CONFIG_KEXEC_FILE") == "y",
        "kexec_loaded": kexec_loaded,
        "guestmemfs_fs": "guestmemfs" in filesystems,
        "kho": kho_state(root, args, config),
        "qemu_processes": [{"pid": pid, "comm": comm} for pid, comm in qemu_processes(os.path.join(root, "proc"))],
        # What a cold reboot, mkfs or a new manifest would destroy: saved states, unfinished updates.
        "vms_at_stake": journal.at_stake(journal.load_journal(os.path.join(root, journal.JOURNAL.lstrip("/"))),
                                         os.path.join(root, cpr.STATE_DIR.lstrip("/"))),
    }
    if facts["guestmemfs_fs"]:
        facts["guestmemfs_region"] = guestmemfs_region(root, args, facts["memory"]["total_bytes"], facts["kho"])
    if run is not None:
        try:
            conf = configured(run, root)
        except CmdlineError as exc:
            conf, facts["cmdline"]["configured_error"] = None, str(exc)
        facts["cmdline"]["configured"] = " ".join(conf) if conf is not None else None
        # Whether the next cold boot would change what runs: a configured argument not running.
        facts["cmdline"]["reboot_required"] = conf is not None and not set(conf) <= set(args)
        facts["cmdline"]["drift"] = _drift(args, conf)
    if mount_point:
        facts["backend_mount"] = backend_mount(root, mount_point)
    return facts
