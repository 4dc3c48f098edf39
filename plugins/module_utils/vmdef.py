# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's definition as the operator writes it (one entry of ``guestmemfs_vms``), checked, and the
one QEMU argv built from it.

The operator describes the guest (memory, vCPUs, machine type, CPU model, disks, NICs, serial log,
guest agent, direct kernel boot, extra arguments); the collection adds only what live update needs:
RAM as a shared file or memfd on the memory backend, a QMP socket, ``-incoming defer`` on restore.
A definition that contradicts those (its own RAM, monitor, machine or incoming) is refused here,
before anything on a host changes. The argv a VM was started with is recorded on its host
(``ARGV_DIR``) and a restore reuses it exactly: never one rebuilt from newer variables."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import json
import os
import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import format_size, parse_size

# One VM-name rule for every module, the role and the agent: names become file names, unit
# instance names and QEMU ids.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")  # \Z: "$" also matches before a final newline
NAME_RULE = "1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
# A versioned machine type (pc-q35-10.0, pc-i440fx-9.2, virt-10.0): the alias q35 moves with QEMU
# releases, and a restoring QEMU must offer exactly the type the VM runs.
MACHINE_RE = re.compile(r"^[a-z][a-z0-9-]*-\d+\.\d+\Z")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
CPU_RE = re.compile(r"^[A-Za-z0-9_.,=+-]+\Z")
QUOTA_RE = re.compile(r"^\d{1,5}%\Z")

ACCELS = ("kvm", "tcg")
DISK_FORMATS = ("raw", "qcow2")
DISK_INTERFACES = ("virtio", "scsi", "sata")
# sata disks go on one ich9-ahci controller the argv adds, one disk per port. Not the q35 machine's
# built-in controller (bus ide.N): on pc-i440fx the same bus names are PIIX IDE, which QEMU takes
# silently, and the added controller works the same on every machine type (tried with QEMU 7.2).
SATA_PORTS = 6
# Where the guest agent's channel is: a virtio-serial port (org.qemu.guest_agent.0), or an ISA 16550
# after the serial log's (/dev/ttyS1 in a Linux guest) for a guest without virtio devices.
AGENT_PORTS = ("virtio-serial", "isa-serial")
DISK_CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")
NIC_TYPES = ("bridge", "tap", "user")
POLICIES = ("refuse", "skip", "shutdown")

LOG_DIR = "/var/log/guestmemfs-liveupdate"
# Where a VM's argv is recorded when it starts (root-only, on the root disk).
ARGV_DIR = "/var/lib/guestmemfs-liveupdate/argv"

# Production's defaults: KVM, the host's CPU, no CPU quota, no test kernel. The virtual fleet's
# inventory sets tcg, its quota and its guest.
DEFAULTS = {
    "vcpus": 1,
    "machine": "pc-q35-10.0",
    "accel": "kvm",
    "cpu": None,  # host on kvm, max on tcg
    "disks": [],
    "nics": [],
    "serial_log": None,  # LOG_DIR/NAME.serial.log
    "guest_agent": False,
    "guest_agent_port": "virtio-serial",
    "kernel": None,
    "initrd": None,
    "append": None,
    "extra_args": [],
    "cpu_quota": None,
    "qemu": "qemu-system-x86_64",
    "unpreservable": "refuse",
}
KEYS = set(DEFAULTS) | {"name", "memory"}

# Arguments the collection owns: a definition that brings its own would move the RAM off the
# backend, hide the QMP socket, or restore from somewhere else.
OWNED_ARGS = {
    "-m": "the VM's memory is the definition's 'memory' (on the backend)",
    "-mem-path": "the VM's RAM lives on the memory backend",
    "-mem-prealloc": "the VM's RAM lives on the memory backend",
    "-machine": "the machine type is the definition's 'machine'",
    "-M": "the machine type is the definition's 'machine'",
    "-accel": "the accelerator is the definition's 'accel'",
    "-enable-kvm": "the accelerator is the definition's 'accel'",
    "-smp": "the vCPUs are the definition's 'vcpus'",
    "-cpu": "the CPU model is the definition's 'cpu'",
    "-numa": "NUMA nodes would need RAM outside the backend's one file",
    "-incoming": "the collection restores with -incoming defer itself",
    "-qmp": "the collection owns the VM's QMP socket",
    "-qmp-pretty": "the collection owns the VM's QMP socket",
    "-daemonize": "the VM runs in the foreground of its systemd unit",
    "-name": "the VM's name is the definition's 'name'",
    "-kernel": "use the definition's 'kernel'",
    "-initrd": "use the definition's 'initrd'",
    "-append": "use the definition's 'append'",
    "-loadvm": "the VM is restored only from its cpr-reboot state",
    "-S": "the collection decides when a VM runs",
    "-sandbox": "the collection sets QEMU's sandbox (guestmemfs_qemu_user)",
    "-runas": "the collection decides which user QEMU runs as (guestmemfs_qemu_user)",
    "-run-with": "the collection decides which user QEMU runs as (guestmemfs_qemu_user)",
    "-chroot": "the collection decides which user QEMU runs as (guestmemfs_qemu_user)",
    "-add-fd": "the collection hands QEMU its descriptors itself",
}
# What a confined QEMU (unprivileged, -sandbox spawn=deny, no new privileges) cannot do: each
# pattern of an extra argument, and why.
UNCONFINABLE = (
    (re.compile(r"(^|,)(script|downscript)=(?!no(,|$))"), "a tap script is a program QEMU would spawn"),
    (re.compile(r"(^|,)helper="), "a network helper is a program QEMU would spawn"),
    (re.compile(r"^bridge(,|$)"), "-netdev bridge spawns the setuid bridge helper: use a nics entry of type bridge"),
    (re.compile(r"(^|[,:])exec:"), "exec: spawns a program"),
    (re.compile(r"(^|,)vhost(force)?=on"), "vhost-net needs /dev/vhost-net, which the VM's unit does not allow"),
    (re.compile(r"(^|,)fd=\d"), "the collection numbers the descriptors it hands QEMU"),
)


class VMDefError(ValueError):
    """A definition that cannot run under live update; the message names the VM and the field."""


def _err(name, msg):
    return VMDefError("VM %s: %s" % (name, msg))


def _text(name, field, value, allow_empty=False):
    """A string that reaches an argv, a path or a unit: no newline or NUL can add a directive."""
    if not isinstance(value, str) or (not value and not allow_empty):
        raise _err(name, "%s must be a non-empty string, not %r" % (field, value))
    if any(c in value for c in "\n\r\0"):
        raise _err(name, "%s must not contain a newline or NUL: %r" % (field, value))
    return value


def _path(name, field, value):
    _text(name, field, value)
    if not os.path.isabs(value) or "/../" in value + "/" or "," in value:
        raise _err(name, "%s must be an absolute path without '..' or ',' (QEMU splits options on ','): %r"
                   % (field, value))
    return value


def _bool(name, field, value):
    if not isinstance(value, bool):
        raise _err(name, "%s must be true or false, not %r" % (field, value))
    return value


def _choice(name, field, value, choices):
    if value not in choices:
        raise _err(name, "%s must be one of %s, not %r" % (field, ", ".join(choices), value))
    return value


def check_name(name):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise VMDefError("VM name %r: a VM name is %s" % (name, NAME_RULE))
    return name


def names_problem(names):
    """The refusal of ``names`` that break the VM-name rule (each module checks its names with this
    before anything acts), or None."""
    bad = [n for n in names or () if not isinstance(n, str) or not NAME_RE.match(n)]
    if bad:
        return "VM names %s: a VM name is %s. Nothing was done" % (", ".join(repr(n) for n in bad), NAME_RULE)
    return None


def _disk(name, i, d):
    if not isinstance(d, dict):
        raise _err(name, "disks[%d] must be a mapping with path and format, not %r" % (i, d))
    unknown = set(d) - {"path", "format", "interface", "cache", "readonly", "serial"}
    if unknown:
        raise _err(name, "disks[%d] has unknown keys %s" % (i, ", ".join(sorted(unknown))))
    if "path" not in d or "format" not in d:
        raise _err(name, "disks[%d] needs path and format (raw or qcow2: QEMU must not guess it)" % i)
    out = {"path": _path(name, "disks[%d].path" % i, d["path"]),
           "format": _choice(name, "disks[%d].format" % i, d["format"], DISK_FORMATS),
           "interface": _choice(name, "disks[%d].interface" % i, d.get("interface", "virtio"), DISK_INTERFACES),
           "cache": _choice(name, "disks[%d].cache" % i, d.get("cache", "none"), DISK_CACHES),
           "readonly": _bool(name, "disks[%d].readonly" % i, d.get("readonly", False))}
    if out["interface"] == "sata" and out["readonly"]:
        # QEMU's ide-hd refuses a read-only drive ("Block node is read-only").
        raise _err(name, "disks[%d] on sata cannot be read-only: use interface virtio or scsi" % i)
    if d.get("serial") is not None:
        serial = _text(name, "disks[%d].serial" % i, d["serial"])
        if not re.match(r"^[A-Za-z0-9_-]{1,20}$", serial):
            raise _err(name, "disks[%d].serial must be 1-20 of A-Z, a-z, 0-9, '-', '_'" % i)
        out["serial"] = serial
    return out


def _nic(name, i, n):
    if not isinstance(n, dict):
        raise _err(name, "nics[%d] must be a mapping with type and mac, not %r" % (i, n))
    unknown = set(n) - {"type", "bridge", "ifname", "mac", "model"}
    if unknown:
        raise _err(name, "nics[%d] has unknown keys %s" % (i, ", ".join(sorted(unknown))))
    kind = _choice(name, "nics[%d].type" % i, n.get("type"), NIC_TYPES)
    out = {"type": kind, "model": n.get("model", "virtio-net-pci")}
    if not re.match(r"^[a-z0-9-]+$", out["model"]):
        raise _err(name, "nics[%d].model %r is not a QEMU device name" % (i, out["model"]))
    mac = n.get("mac")
    if mac is None and kind != "user":
        # A restore must bring the guest the same MAC, or its network configuration breaks.
        raise _err(name, "nics[%d] needs a fixed mac (e.g. 52:54:00:12:34:56)" % i)
    if mac is not None:
        mac = _text(name, "nics[%d].mac" % i, mac).lower()
        if not MAC_RE.match(mac) or int(mac[:2], 16) & 1:
            raise _err(name, "nics[%d].mac %r is not a unicast MAC address" % (i, n.get("mac")))
        out["mac"] = mac
    if kind == "bridge":
        if not IFNAME_RE.match(str(n.get("bridge", ""))):
            raise _err(name, "nics[%d] of type bridge needs bridge: an interface name, not %r" % (i, n.get("bridge")))
        out["bridge"] = n["bridge"]
    elif kind == "tap":
        if not IFNAME_RE.match(str(n.get("ifname", ""))):
            raise _err(name, "nics[%d] of type tap needs ifname: an existing tap's name, not %r" % (i, n.get("ifname")))
        out["ifname"] = n["ifname"]
    return out


def normalize(entry, defaults=None):
    """Check one definition and fill in its defaults. Returns a new dict; raises VMDefError with a
    message naming the VM and the field."""
    if not isinstance(entry, dict):
        raise VMDefError("a VM definition must be a mapping with at least name and memory, not %r" % (entry,))
    name = check_name(entry.get("name"))
    defaults = dict(defaults or {})
    for where, d in (("the defaults", defaults), ("the definition", entry)):
        unknown = sorted(set(d) - KEYS - ({"name", "memory"} if where == "the defaults" else set()))
        if unknown:
            raise _err(name, "unknown keys in %s: %s (known: %s)" % (where, ", ".join(unknown),
                                                                     ", ".join(sorted(KEYS))))
    merged = copy.deepcopy(DEFAULTS)
    merged.update(copy.deepcopy(defaults))
    merged.update(copy.deepcopy(entry))
    out = {"name": name}
    try:
        out["memory_bytes"] = parse_size(merged.get("memory"), "memory")
    except ValueError as exc:
        raise _err(name, str(exc))
    if out["memory_bytes"] < 16 * 1024 ** 2 or out["memory_bytes"] % (1024 ** 2):
        raise _err(name, "memory must be a whole number of MiB, at least 16M: %r" % merged.get("memory"))
    vcpus = merged["vcpus"]
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 1024:
        raise _err(name, "vcpus must be a whole number from 1 to 1024, not %r" % (vcpus,))
    out["vcpus"] = vcpus
    machine = _text(name, "machine", merged["machine"])
    if not MACHINE_RE.match(machine):
        raise _err(name, "machine %r is not a versioned machine type (e.g. pc-q35-10.0): an alias such as "
                         "q35 changes meaning with the QEMU that restores the VM" % machine)
    out["machine"] = machine
    out["accel"] = _choice(name, "accel", merged["accel"], ACCELS)
    cpu = merged["cpu"] or ("host" if out["accel"] == "kvm" else "max")
    if not CPU_RE.match(_text(name, "cpu", cpu)):
        raise _err(name, "cpu %r is not a QEMU CPU model" % cpu)
    out["cpu"] = cpu
    if not isinstance(merged["disks"], list) or not isinstance(merged["nics"], list):
        raise _err(name, "disks and nics must be lists")
    out["disks"] = [_disk(name, i, d) for i, d in enumerate(merged["disks"])]
    sata = [i for i, d in enumerate(out["disks"]) if d["interface"] == "sata"]
    if len(sata) > SATA_PORTS:
        raise _err(name, "disks[%d]: at most %d sata disks (the ports of its one AHCI controller)"
                   % (sata[SATA_PORTS], SATA_PORTS))
    paths = [d["path"] for d in out["disks"]]
    if len(set(paths)) != len(paths):
        raise _err(name, "a disk path appears twice: %s" % ", ".join(sorted(p for p in set(paths) if paths.count(p) > 1)))
    out["nics"] = [_nic(name, i, n) for i, n in enumerate(merged["nics"])]
    macs = [n["mac"] for n in out["nics"] if "mac" in n]
    if len(set(macs)) != len(macs):
        raise _err(name, "a MAC address appears twice")
    out["serial_log"] = _path(name, "serial_log", merged["serial_log"] or os.path.join(LOG_DIR, name + ".serial.log"))
    out["guest_agent"] = _bool(name, "guest_agent", merged["guest_agent"])
    out["guest_agent_port"] = _choice(name, "guest_agent_port", merged["guest_agent_port"], AGENT_PORTS)
    for field in ("kernel", "initrd"):
        out[field] = _path(name, field, merged[field]) if merged[field] is not None else None
    out["append"] = _text(name, "append", merged["append"]) if merged["append"] is not None else None
    if (out["initrd"] or out["append"]) and not out["kernel"]:
        raise _err(name, "initrd and append need kernel (direct kernel boot)")
    extra = merged["extra_args"]
    if not isinstance(extra, list):
        raise _err(name, "extra_args must be a list of strings")
    out["extra_args"] = [_text(name, "extra_args[%d]" % i, a, allow_empty=True) for i, a in enumerate(extra)]
    for i, arg in enumerate(out["extra_args"]):
        flag = "-" + arg.lstrip("-") if arg.startswith("-") else None
        if flag in OWNED_ARGS:
            raise _err(name, "extra_args[%d] %s contradicts live update: %s" % (i, arg, OWNED_ARGS[flag]))
        if re.search(r"memory-backend-|\bid=ram0\b|mem-path=|x-ignore-shared|cpr-", arg):
            raise _err(name, "extra_args[%d] %r contradicts live update: the VM's RAM and migration are the "
                             "collection's" % (i, arg))
    quota = merged["cpu_quota"]
    if quota is not None and not QUOTA_RE.match(str(quota)):
        raise _err(name, "cpu_quota must be a percentage such as 200%%, not %r" % (quota,))
    out["cpu_quota"] = quota
    out["qemu"] = _text(name, "qemu", merged["qemu"])
    if "/" in out["qemu"]:
        _path(name, "qemu", out["qemu"])
    out["unpreservable"] = _choice(name, "unpreservable", merged["unpreservable"], POLICIES)
    return out


def normalize_all(entries, defaults=None):
    """Every definition of a host, plus the checks across them (names, disks, MACs unique)."""
    if not isinstance(entries, list):
        raise VMDefError("the VM list must be a list of definitions, not %r" % (entries,))
    out = [normalize(e, defaults) for e in entries]
    seen = {}
    for vm in out:
        if vm["name"] in seen:
            raise VMDefError("VM %s is defined twice" % vm["name"])
        seen[vm["name"]] = vm
    owners = {}
    for vm in out:
        for d in vm["disks"]:
            if d["path"] in owners and not (d["readonly"] and owners[d["path"]][1]):
                raise VMDefError("disk %s is used by both %s and %s (only read-only disks may be shared)"
                                 % (d["path"], owners[d["path"]][0], vm["name"]))
            owners[d["path"]] = (vm["name"], d["readonly"])
    macs = {}
    for vm in out:
        for n in vm["nics"]:
            if n.get("mac") in macs:
                raise VMDefError("MAC %s is used by both %s and %s" % (n["mac"], macs[n["mac"]], vm["name"]))
            if n.get("mac"):
                macs[n["mac"]] = vm["name"]
    return out


def qmp_path(conf, run_dir):
    return conf.get("qmp") or os.path.join(run_dir, conf["name"] + ".qmp")


def qga_path(conf, run_dir):
    return os.path.join(run_dir, conf["name"] + ".qga")


def build_argv(conf, run_dir):
    """The QEMU argv of a VM's cold start, from its recorded configuration (a normalized definition
    plus ``mem_path``). A restore appends ``-incoming defer`` to the argv recorded at the start."""
    name = conf["name"]
    size = "%dM" % (conf["memory_bytes"] // (1024 * 1024))
    # Confined: the agent hands over the QMP socket, the guest agent's, the taps and a memfd (confine).
    confined = launch(conf) is not None
    mem_path = confine.MEM_FD_PATH if confined and conf.get("mem_fd") else conf["mem_path"]
    argv = [conf.get("qemu") or DEFAULTS["qemu"], "-name", name, "-nodefaults", "-no-user-config",
            "-display", "none",
            "-machine", "%s,memory-backend=ram0" % conf["machine"], "-accel", conf.get("accel") or "kvm",
            "-cpu", conf.get("cpu") or ("host" if conf.get("accel", "kvm") == "kvm" else "max"),
            "-smp", str(conf.get("vcpus") or 1), "-m", size,
            "-object", "memory-backend-file,id=ram0,size=%s,mem-path=%s,share=on" % (size, mem_path)]
    if confined:
        argv += ["-sandbox", confine.SANDBOX,
                 "-chardev", "socket,id=qmp0,fd=%d,server=on,wait=off" % confine.QMP_FD,
                 "-mon", "chardev=qmp0,mode=control"]
    else:
        argv += ["-qmp", "unix:%s,server=on,wait=off" % qmp_path(conf, run_dir)]
    if conf.get("serial_log"):
        argv += ["-chardev", "file,id=serial0,path=%s,append=on" % conf["serial_log"], "-serial", "chardev:serial0"]
    scsi, sata = False, 0
    for i, d in enumerate(conf.get("disks") or []):
        opts = "file=%s,format=%s,if=none,id=disk%d,cache=%s" % (d["path"], d["format"], i, d.get("cache", "none"))
        if d.get("readonly"):
            opts += ",readonly=on"
        argv += ["-drive", opts]
        serial = ",serial=%s" % d["serial"] if d.get("serial") else ""
        if d.get("interface", "virtio") == "scsi":
            if not scsi:
                argv += ["-device", "virtio-scsi-pci,id=scsi0"]
                scsi = True
            argv += ["-device", "scsi-hd,drive=disk%d,bus=scsi0.0,id=disk%d-dev%s" % (i, i, serial)]
        elif d.get("interface") == "sata":
            if not sata:
                argv += ["-device", "ich9-ahci,id=ahci0"]
            argv += ["-device", "ide-hd,drive=disk%d,bus=ahci0.%d,id=disk%d-dev%s" % (i, sata, i, serial)]
            sata += 1
        else:
            argv += ["-device", "virtio-blk-pci,drive=disk%d,id=disk%d-dev%s" % (i, i, serial)]
    for i, n in enumerate(conf.get("nics") or []):
        if confined and n["type"] != "user":
            netdev = "tap,id=net%d,fd=%d" % (i, confine.NIC_FD_BASE + i)
        elif n["type"] == "bridge":
            netdev = "bridge,id=net%d,br=%s" % (i, n["bridge"])
        elif n["type"] == "tap":
            netdev = "tap,id=net%d,ifname=%s,script=no,downscript=no" % (i, n["ifname"])
        else:
            netdev = "user,id=net%d" % i
        mac = ",mac=%s" % n["mac"] if n.get("mac") else ""
        argv += ["-netdev", netdev, "-device", "%s,netdev=net%d,id=net%d-dev%s" % (n.get("model", "virtio-net-pci"),
                                                                                   i, i, mac)]
    if conf.get("guest_agent"):
        where = "fd=%d" % confine.QGA_FD if confined else "path=%s" % qga_path(conf, run_dir)
        argv += ["-chardev", "socket,id=qga0,%s,server=on,wait=off" % where]
        if conf.get("guest_agent_port") == "isa-serial":
            # The next free ISA serial index: 1 after the serial log's -serial (COM2, ttyS1).
            argv += ["-device", "isa-serial,chardev=qga0,id=qga0-dev"]
        else:
            argv += ["-device", "virtio-serial-pci,id=vser0",
                     "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"]
    if conf.get("kernel"):
        argv += ["-kernel", conf["kernel"]]
        if conf.get("initrd"):
            argv += ["-initrd", conf["initrd"]]
        if conf.get("append"):
            argv += ["-append", conf["append"]]
    argv += list(conf.get("extra_args") or [])
    return argv


def check_confinable(conf):
    """Refuse (VMDefError) a definition whose extra arguments a confined QEMU cannot run; the
    message names the argument and the opt-out."""
    for i, arg in enumerate(conf.get("extra_args") or []):
        for pattern, why in UNCONFINABLE:
            if pattern.search(arg):
                raise _err(conf["name"], "extra_args[%d] %r cannot run in a confined QEMU (user %s, -sandbox): %s. "
                                         "Drop it, or run this host's QEMUs as root (guestmemfs_qemu_user: root, "
                                         "unsafe)" % (i, arg, conf.get("qemu_user"), why))
    return conf


def launch(conf):
    """What the agent hands a VM's QEMU besides its argv: the user it runs as and, per descriptor
    number, the NIC whose tap it opens; None when QEMU runs as root (unconfined)."""
    if not confine.confined({"user": conf.get("qemu_user")}):
        return None
    nics = {}
    for i, n in enumerate(conf.get("nics") or []):
        if n["type"] == "bridge":
            nics[str(confine.NIC_FD_BASE + i)] = {"bridge": n["bridge"]}
        elif n["type"] == "tap":
            nics[str(confine.NIC_FD_BASE + i)] = {"tap": n["ifname"]}
    return {"user": conf["qemu_user"], "nics": nics}


def with_binary(argv, binary):
    """The argv a VM runs with, started by the QEMU ``binary`` instead (a QEMU update, or its
    rollback to the old binary): only the program differs, so the new QEMU builds the same machine."""
    return [binary] + list(argv[1:])


def incoming_argv(argv):
    return list(argv) + ["-incoming", "defer"]


def argv_record_path(name, argv_dir=ARGV_DIR):
    return os.path.join(argv_dir, check_name(name) + ".json")


def load_record(name, argv_dir=ARGV_DIR):
    """What ``name`` was last started with on this host ({argv, launch, boot_id, ts}), or None."""
    try:
        with open(argv_record_path(name, argv_dir)) as fh:
            rec = json.load(fh)
    except (IOError, OSError):
        return None
    except ValueError as exc:
        raise VMDefError("VM %s: its recorded argv %s is not JSON (%s): move it away only if the VM is not "
                         "saved (agent status)" % (name, argv_record_path(name, argv_dir), exc))
    return rec if isinstance(rec, dict) else {}


def load_argv(name, argv_dir=ARGV_DIR):
    """The argv ``name`` was last started with on this host, or None."""
    rec = load_record(name, argv_dir)
    if rec is None:
        return None
    argv = rec.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise VMDefError("VM %s: its recorded argv %s holds no argv list" % (name, argv_record_path(name, argv_dir)))
    return argv


def units_dropin(conf, mem_dir_requires=None):
    """The per-VM systemd drop-in: what its disks, logs and bridges need before the unit starts.
    Values were checked by normalize(): no newline reaches the unit."""
    lines = ["# Written by guestmemfs.liveupdate from the VM's definition.", "[Unit]"]
    dirs = sorted(set([os.path.dirname(d["path"]) for d in conf.get("disks") or []]
                      + [os.path.dirname(conf["serial_log"])] * bool(conf.get("serial_log"))
                      + [os.path.dirname(p) for p in (conf.get("kernel"), conf.get("initrd")) if p]))
    if dirs:
        lines.append("RequiresMountsFor=%s" % " ".join(dirs))
    # Not after its bridges' and taps' udev devices: the agent waits for the kernel's interfaces
    # itself (confine.wait_for_interfaces), seconds before udev gets to them on a busy boot.
    lines += ["", "[Service]"]
    # No CPUQuota= here even with a cpu_quota: the agent sets it once the guest runs (cpu_quota.py).
    # The unit's file system is read-only but for the agent's directories (ProtectSystem=strict):
    # QEMU writes its disks and its serial log, the agent gives them to QEMU's user. A disk that is
    # a device node gets past DevicePolicy=closed; one under /home or /tmp past their protection.
    writable = sorted(set([os.path.dirname(d["path"]) for d in conf.get("disks") or []
                           if not d["path"].startswith("/dev/")]
                          + [os.path.dirname(conf["serial_log"])] * bool(conf.get("serial_log"))))
    if writable:
        lines.append("ReadWritePaths=%s" % " ".join("-" + d for d in writable))
    for d in conf.get("disks") or []:
        if d["path"].startswith("/dev/"):
            lines.append("DeviceAllow=%s %s" % (d["path"], "r" if d.get("readonly") else "rw"))
    paths = [d["path"] for d in conf.get("disks") or []]
    paths += [p for p in (conf.get("serial_log"), conf.get("kernel"), conf.get("initrd")) if p]
    if any(p.startswith(("/home/", "/root/", "/run/user/")) for p in paths):
        lines.append("ProtectHome=no")
    if any(p.startswith(("/tmp/", "/var/tmp/")) for p in paths):
        lines.append("TemporaryFileSystem=")  # the host's /tmp and /var/tmp, not the unit's own
    return "\n".join(lines) + "\n"


def summary(conf):
    """One line per VM for reports: 2 vCPU, 256M, pc-q35-10.0, 1 disk, 1 NIC."""
    return "%d vCPU, %s, %s, %d disk%s, %d NIC%s" % (
        conf.get("vcpus") or 1, format_size(conf["memory_bytes"]), conf["machine"], len(conf.get("disks") or []),
        "" if len(conf.get("disks") or []) == 1 else "s", len(conf.get("nics") or []),
        "" if len(conf.get("nics") or []) == 1 else "s")
