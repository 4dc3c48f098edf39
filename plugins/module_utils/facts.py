# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a hypervisor has, read from /proc, /sys and /boot.

Every reader takes ``root`` (default ``/``) so that unit tests can point it at a recorded tree of
kernel files. Parsers take text and do no I/O. Stdlib only: this runs on the hypervisors.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import os
import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, hostinfo, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import boot_drift as backends_boot_drift
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cmdline import CmdlineError, configured, parse_cmdline
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.hostinfo import (
    CMDLINE, MOUNTS, find_mount, parse_meminfo, parse_mounts, read_file)
# What KHO and the guestmemfs region are on this boot (also read by the guestmemfs backend)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.kho import guestmemfs_region, kho_state
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import qemu_processes

# Kernel options that decide which backends and handovers a kernel can do. KEXEC_KHO is the name
# in the guestmemfs RFC's KHO v2; mainline calls it KEXEC_HANDOVER.
KERNEL_OPTIONS = (
    "CONFIG_KEXEC", "CONFIG_KEXEC_FILE", "CONFIG_KEXEC_KHO", "CONFIG_KEXEC_HANDOVER",
    "CONFIG_KEXEC_HANDOVER_DEBUGFS", "CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT", "CONFIG_LIVEUPDATE",
    "CONFIG_LIVEUPDATE_MEMFD",
    "CONFIG_GUESTMEMFS_FS", "CONFIG_X86_PMEM_LEGACY", "CONFIG_BLK_DEV_PMEM", "CONFIG_FS_DAX",
    "CONFIG_LIBNVDIMM", "CONFIG_KEXEC_SIG", "CONFIG_SECURITY_LOCKDOWN_LSM", "CONFIG_FTRACE_KHO",
)


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


def boot_drift(root="/", run=None):
    """The backends' running boot arguments the boot configuration lacks (backends.boot_drift), read
    from this host; a configuration that cannot be read is drift too (nothing shows it keeps them)."""
    args = parse_cmdline(hostinfo.read_file(root, hostinfo.CMDLINE) or "")
    try:
        conf = configured(run, root)
    except CmdlineError as exc:
        owned = backends_boot_drift(args, [])
        return ["the boot configuration cannot be read (%s): nothing shows that the next cold boot keeps the "
                "running %s" % (exc, " ".join(d.split(" ", 1)[0] for d in owned))] if owned else []
    return backends_boot_drift(args, conf)


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
        facts["cmdline"]["drift"] = backends_boot_drift(args, conf)
    if mount_point:
        facts["backend_mount"] = backend_mount(root, mount_point)
    return facts
