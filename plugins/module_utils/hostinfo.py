# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few live-host facts the host agent and the modules read, each read here and nowhere else.

Every reader takes ``root`` (default ``/``) so that unit tests point it at a recorded or an empty
tree; the paths are module constants. Stdlib only, and it imports nothing of the collection, so
that every other file (facts, journal, the backends) can use it without an import cycle.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

BOOT_ID = "/proc/sys/kernel/random/boot_id"
KEXEC_LOADED = "/sys/kernel/kexec_loaded"
# The guestmemfs RFC's KHO v2 (absent on mainline KHO): 1 while the handover is serialised.
KHO_ACTIVE = "/sys/kernel/kho/active"
MOUNTS = "/proc/self/mounts"
CMDLINE = "/proc/cmdline"


def read_file(root, path, default=None):
    """The text of ``path`` under ``root``, or ``default`` when it cannot be read."""
    try:
        with open(os.path.join(root, path.lstrip("/")), "r") as fh:
            return fh.read()
    except (IOError, OSError):
        return default


def boot_id(root="/"):
    """This boot's id, or None when it cannot be read."""
    text = read_file(root, BOOT_ID)
    return text.strip() if text is not None else None


def kexec_loaded(root="/"):
    """Whether a kernel is loaded for kexec: True, False, or None when it cannot be read."""
    text = read_file(root, KEXEC_LOADED)
    return None if text is None else text.strip() == "1"


def kho_active(root="/"):
    """The RFC's KHO activation: True (serialised), False, or None (no RFC interface)."""
    text = read_file(root, KHO_ACTIVE)
    return None if text is None else text.strip() == "1"


def parse_mounts(text):
    """/proc/self/mounts -> list of dicts (source, target, fstype, options)."""
    out = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            unesc = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in parts[:4]]
            out.append({"source": unesc[0], "target": unesc[1], "fstype": unesc[2],
                        "options": unesc[3].split(",")})
    return out


def mounts(root="/"):
    """The mounts of this host (``parse_mounts``), [] when they cannot be read."""
    return parse_mounts(read_file(root, MOUNTS, ""))


def find_mount(mounts, path):
    """The mount whose target is exactly ``path`` (the last one wins, as the kernel shows it)."""
    path = os.path.normpath(path)
    hit = None
    for m in mounts:
        if os.path.normpath(m["target"]) == path:
            hit = m
    return hit


def mount_containing(mounts, path):
    """The mount a file at ``path`` lies on: the one with the longest target that contains it (the
    last one of equal length wins, as the kernel shows them)."""
    path = os.path.normpath(path)
    hit, best = None, -1
    for m in mounts:
        target = os.path.normpath(m["target"])
        if (path == target or path.startswith(target.rstrip("/") + "/")) and len(target) >= best:
            hit, best = m, len(target)
    return hit


def pid_alive(pid):
    """Whether ``pid`` is a live Python process (the agent or a module that journals)."""
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as fh:
            return b"python" in fh.read()
    except (IOError, OSError, TypeError, ValueError):
        return False


# libvirtd's (qemu:///system) live status of each domain it runs: NAME.xml, a <domstatus> with the
# QEMU's pid around the domain's XML. It is removed when the domain stops.
LIBVIRT_RUN = "/run/libvirt/qemu"
PROC = "/proc"


def _libvirt_status(text):
    """A status XML -> {name, uuid, id, pid, state, memory_backing}, or None when it does not parse."""
    import xml.etree.ElementTree as ET  # stdlib; only here, where libvirt's XML is read
    try:
        top = ET.fromstring(text)
    except ET.ParseError:
        return None
    dom = top.find("domain") if top.tag == "domstatus" else None
    if dom is None:
        return None
    backing = dom.find("memoryBacking")
    source = backing.find("source") if backing is not None else None
    access = backing.find("access") if backing is not None else None
    return {"name": (dom.findtext("name") or "").strip() or None,
            "uuid": (dom.findtext("uuid") or "").strip() or None,
            "id": dom.get("id"), "pid": _int(top.get("pid")), "state": top.get("state"),
            "memory_backing": {"source": source.get("type") if source is not None else None,
                               "access": access.get("mode") if access is not None else None}}


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _libvirt_argv(argv):
    """The domain name when ``argv`` is a QEMU that libvirt started (its ``-name guest=NAME,...``
    and its per-domain directory), else None."""
    if not argv or not os.path.basename(argv[0]).startswith(("qemu-system", "qemu-kvm", "kvm")):
        return None
    name = None
    for i, a in enumerate(argv[:-1]):
        if a in ("-name", "--name") and argv[i + 1].startswith("guest="):
            name = argv[i + 1][len("guest="):].split(",", 1)[0]
    if name is None or not any("/libvirt/qemu/domain-" in a for a in argv):
        return None
    return name


def libvirt_domains(root="/"):
    """The QEMU domains libvirt runs on this host, sorted by name: [{name, uuid, id, pid, state,
    memory_backing, status, argv}]. Found by libvirtd's status files (``status``: the file) and by
    the argv of every running QEMU that libvirt started (``argv``: True), so a domain of a libvirtd
    that keeps its status elsewhere (a session daemon) is found too."""
    found = {}
    run = os.path.join(root, LIBVIRT_RUN.lstrip("/"))
    try:
        names = sorted(n for n in os.listdir(run) if n.endswith(".xml"))
    except OSError:
        names = []
    for n in names:
        dom = _libvirt_status(read_file(run, n, ""))
        if dom is None:
            continue
        dom.update(status=os.path.join(LIBVIRT_RUN, n), argv=False)
        found[dom["pid"]] = dom
    proc = os.path.join(root, PROC.lstrip("/"))
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    alive = set()
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as fh:
                argv = fh.read().decode("utf-8", "replace").split("\0")
        except (IOError, OSError):
            continue
        argv = [a for a in argv if a]
        name = _libvirt_argv(argv)
        if name is None:
            continue
        alive.add(int(pid))
        if int(pid) in found:
            found[int(pid)]["argv"] = True
        else:
            found[int(pid)] = {"name": name, "uuid": _argv_value(argv, "-uuid"), "id": None, "pid": int(pid),
                               "state": "running", "memory_backing": None, "status": None, "argv": True}
    # A status file whose QEMU is gone (libvirtd died before it cleaned up) names no running domain.
    return sorted((d for d in found.values() if d["pid"] in alive or _exists(proc, d["pid"])),
                  key=lambda d: (d["name"] or "", d["pid"] or 0))


def _exists(proc, pid):
    return pid is not None and os.path.isdir(os.path.join(proc, str(pid)))


def _argv_value(argv, option):
    for i, a in enumerate(argv[:-1]):
        if a == option:
            return argv[i + 1]
    return None


def parse_meminfo(text):
    """/proc/meminfo or a node's meminfo -> {key: bytes}."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^(?:Node \d+ )?([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?$", line.strip())
        if m:
            val = int(m.group(2))
            out[m.group(1)] = val * 1024 if line.rstrip().endswith("kB") else val
    return out
