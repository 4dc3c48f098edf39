# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's QEMU confined: an unprivileged user, QEMU's seccomp sandbox, and from the agent (root,
in the VM's unit) only what that QEMU must have, handed over before it starts.

The agent opens what an unprivileged QEMU cannot: the QMP and guest-agent sockets (bound in the
root-only run directory), each NIC's tap (created, or attached, and put on its bridge), and a luo
VM's memfd (only its holder's /proc link names it); they reach QEMU as file descriptors at fixed
numbers, which the argv names (``vmdef.build_argv``). What QEMU opens by path itself - the memory
file of a backend with a filesystem, the disks, the serial log - the agent gives to the user
(owner, mode 0600 or 0400); what it only reads - a kernel, an initrd - must be readable already.
Every check comes first: a refusal changes nothing. The device state of a save or a restore is
given to the user for the migration alone (``cpr``).

A VM is confined when its argv (the one it was started with, recorded) carries ``-sandbox`` and
its launch record names the user; an argv recorded before confinement existed runs as before
(root), so a VM saved by an older agent restores unchanged and is confined at its next cold start."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import grp
import os
import pwd
import socket
import stat
import struct
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qemuopts import split_opts

# The user a confined QEMU runs as when the role names none; ROOT turns confinement off (unsafe).
DEFAULT_USER = "guestmemfs-qemu"
ROOT = "root"
# QEMU's seccomp filter: no obsolete syscalls, no set*uid (it never needs to become anyone), no
# fork/exec (the bridge helper, exec: migration, scripts are refused by vm_definition), no
# scheduler or affinity changes.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# Where each handed-over descriptor sits in QEMU (the argv names them; a restore reuses the argv).
MEM_FD = 3
QMP_FD = 4
QGA_FD = 5
NIC_FD_BASE = 6
MEM_FD_PATH = "/proc/self/fd/%d" % MEM_FD

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# linux/sockios.h, linux/if.h
SIOCBRADDIF = 0x89A2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
TUN = "/dev/net/tun"
# The kernel numbers the taps it creates for bridged NICs: gmq0, gmq1, ...
TAP_TEMPLATE = "gmq%d"


class ConfineError(Exception):
    """What keeps a confined QEMU from starting; nothing was changed."""


def confined(launch):
    return bool(launch and launch.get("user") and launch["user"] != ROOT)


def ids(user):
    """(uid, gid) of ``user``, ConfineError when the host has no such user."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfineError("user %s does not exist on this host: the qemu_vm role creates it (run the prepare "
                           "playbook)" % user)
    if pw.pw_uid == 0:
        raise ConfineError("user %s is root: a confined QEMU runs unprivileged" % user)
    return pw.pw_uid, pw.pw_gid


def groups_of(user, gid):
    """The groups QEMU keeps: the user's own and its supplementary ones (kvm, for /dev/kvm)."""
    return sorted(set(os.getgrouplist(user, gid)))


def _allows(st, uid, gid, bits):
    """Whether ``st``'s mode grants ``bits`` (4 read, 2 write, 1 search) to uid and ``gid`` (one
    group or a list of them)."""
    gids = gid if isinstance(gid, (list, tuple, set)) else [gid]
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in gids:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def unreachable(path, uid, gid):
    """The first directory above ``path`` that uid and ``gid`` (one or a list) cannot search, or None."""
    d = os.path.dirname(os.path.abspath(path))
    chain = []
    while True:
        chain.append(d)
        if d == "/":
            break
        d = os.path.dirname(d)
    for d in reversed(chain):
        try:
            st = os.stat(d)
        except OSError as exc:
            return "%s (%s)" % (d, exc.strerror)
        if not _allows(st, uid, gid, 1):
            return "%s (mode %o, owner %d:%d)" % (d, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return None


def qemu_paths(argv):
    """What QEMU opens by path itself, from its argv: [(path, kind)], kind one of memory, disk,
    disk-ro, log, read."""
    out = []
    for opt, value in zip(argv, argv[1:]):
        if opt == "-object":
            kind, opts = split_opts(value)
            if kind == "memory-backend-file" and opts.get("mem-path") and opts["mem-path"] != MEM_FD_PATH:
                out.append((opts["mem-path"], "memory"))
        elif opt == "-drive":
            _k, opts = split_opts(value)
            if (opts.get("file") or "").startswith("/"):  # not nbd:, json: and the like
                out.append((opts["file"], "disk-ro" if opts.get("readonly") == "on" else "disk"))
        elif opt == "-chardev":
            kind, opts = split_opts(value)
            if kind == "file" and (opts.get("path") or "").startswith("/"):
                out.append((opts["path"], "log"))
        elif opt in ("-kernel", "-initrd", "-bios"):
            out.append((value, "read"))
    return out


def access_problems(argv, uid, gid):
    """Why QEMU as uid and ``gid`` (one or a list) could not open what its argv names by path, once
    ``give`` gave it what it writes: [] when it can."""
    out = []
    for path, kind in qemu_paths(argv):
        blocked = unreachable(path, uid, gid)
        if blocked and kind == "memory":
            blocked = unreachable(os.path.dirname(path), uid, gid)  # give() opens the memory's own directory
        if blocked:
            out.append("%s %s: directory %s is not searchable by uid %d" % (kind, path, blocked, uid))
            continue
        if kind in ("read", "disk-ro"):
            try:
                st = os.stat(path)
            except OSError as exc:
                out.append("%s: %s" % (path, exc.strerror))
                continue
            if not _allows(st, uid, gid, 4):
                out.append("%s (mode %o, owner %d:%d) is not readable by uid %d: make it readable (it is not "
                           "given away: other VMs may share it)" % (path, stat.S_IMODE(st.st_mode), st.st_uid,
                                                                    st.st_gid, uid))
        elif kind != "log" and not os.path.exists(path):
            out.append("%s %s does not exist" % (kind, path))
    return out


def give(argv, uid, gid):
    """Make what QEMU opens by path its own: memory file, disks (0600), serial log (created). What it
    only reads (a read-only disk, firmware, a kernel) is never given away: other VMs or the system
    may share it. The memory file's directory (the backend's mount, the collection's) gets o+x."""
    for path, kind in qemu_paths(argv):
        if kind in ("read", "disk-ro"):
            continue
        if kind == "log" and not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        if kind == "memory":
            d = os.path.dirname(path)
            mode = stat.S_IMODE(os.stat(d).st_mode)
            if not mode & 0o001:
                os.chmod(d, mode | 0o001)
        os.chown(path, uid, gid)
        os.chmod(path, 0o600)


def listening_socket(path):
    """A UNIX socket bound at ``path`` (root-only, in the root-only run directory), listening."""
    if os.path.lexists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(4)
    return s


def open_tap(ifname):
    """A tap's fd: ``ifname`` an existing tap (attached), or a template such as gmq%d (created, named
    by the kernel). Returns (fd, name)."""
    fd = os.open(TUN, os.O_RDWR)
    try:
        ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        name = struct.unpack("16sH22x", fcntl.ioctl(fd, TUNSETIFF, ifr))[0].rstrip(b"\0").decode()
    except Exception:
        os.close(fd)
        raise
    return fd, name


def _if_ioctl(request, ifr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        return fcntl.ioctl(s.fileno(), request, ifr)
    finally:
        s.close()


def attach_to_bridge(name, bridge):
    """Put interface ``name`` on ``bridge`` and up (the ioctls brctl and ip use; no helper program)."""
    index = socket.if_nametoindex(name)
    _if_ioctl(SIOCBRADDIF, struct.pack("16si20x", bridge.encode(), index))
    flags = struct.unpack("16sH22x", _if_ioctl(SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0)))[1]
    _if_ioctl(SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))


# How long a VM's start waits for its NICs' bridges and taps to exist. The VM unit is not ordered
# after their udev devices: on a booting fleet host udev made br0's device unit active 11.2 s after
# networkd had created the bridge, and the VM waited for that (docs/performance.md). The kernel's
# interface is what the tap needs; without it by then the VM does not start, saying which.
NIC_WAIT_S = 180
NIC_POLL_S = 0.1


def nic_interfaces(launch, conf=None):
    """The interfaces a VM's NICs need before its QEMU starts: each bridge (a bridged NIC's new tap
    joins it) and each operator's tap. From the launch it starts with, else (a QEMU started before
    confinement, its bridge helper) from its definition."""
    if launch and launch.get("nics"):
        nics = [n.get("bridge") or n.get("tap") for _num, n in sorted(launch["nics"].items())]
    else:
        nics = [n.get("bridge") if n.get("type") == "bridge" else n.get("ifname") if n.get("type") == "tap" else None
                for n in (conf or {}).get("nics") or []]
    return [n for n in nics if n]


def wait_for_interfaces(names, timeout=None, clock=None, sleep=None, exists=None):
    """Return once every interface in ``names`` exists in the kernel; ConfineError after ``timeout``
    seconds (NIC_WAIT_S) naming those still missing."""
    clock, sleep = clock or time.monotonic, sleep or time.sleep
    exists = exists or _interface_exists
    deadline = clock() + (NIC_WAIT_S if timeout is None else timeout)
    while True:
        missing = [n for n in names if not exists(n)]
        if not missing:
            return
        if clock() >= deadline:
            raise ConfineError("interface%s %s do%s not exist after %d s (a bridge or tap its NICs use)" % (
                "s" if len(missing) > 1 else "", ", ".join(missing), "" if len(missing) > 1 else "es",
                NIC_WAIT_S if timeout is None else timeout))
        sleep(NIC_POLL_S)


def _interface_exists(name):
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def nic_fds(launch):
    """{fd number: fd} of each NIC in ``launch``: a bridged NIC's new tap is put on its bridge and up
    (it goes away with QEMU); a tap NIC's existing tap is attached."""
    out = {}
    try:
        for num, nic in sorted((launch.get("nics") or {}).items()):
            if nic.get("bridge"):
                fd, name = open_tap(TAP_TEMPLATE)
                out[int(num)] = fd
                try:
                    attach_to_bridge(name, nic["bridge"])
                except OSError as exc:
                    raise ConfineError("tap %s cannot join bridge %s: %s" % (name, nic["bridge"], exc))
            else:
                out[int(num)] = open_tap(nic["tap"])[0]
    except Exception:
        for fd in out.values():
            os.close(fd)
        raise
    return out


def handover(vm, argv, launch):
    """{fd number: fd} for QEMU: memory (a luo memfd), QMP, guest agent, taps - what its argv names."""
    fds = {}
    if MEM_FD_PATH in " ".join(argv):
        fds[MEM_FD] = os.open(vm.mem_path, os.O_RDWR)
    fds[QMP_FD] = listening_socket(vm.qmp_path).detach()
    if ",fd=%d," % QGA_FD in " ".join(argv):
        fds[QGA_FD] = listening_socket(vm.qga_path).detach()
    fds.update(nic_fds(launch))
    return fds


def become(fds, uid, gid, groups=()):
    """In the process about to exec QEMU: each descriptor at its number (inheritable; everything
    else the agent opened is close-on-exec), then the user, with its own groups only and no way
    back."""
    # Out of the target range first, so that one dup2 cannot overwrite another's source.
    high = {}
    for num, fd in fds.items():
        high[num] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(fd)
    for num, fd in high.items():
        os.dup2(fd, num)
        os.close(fd)
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise ConfineError("could not drop to uid %d gid %d" % (uid, gid))


def prepare(vm, argv, launch):
    """Everything before the exec of a confined QEMU: (uid, gid, groups, fds). ConfineError before any
    change when QEMU could not reach a path."""
    uid, gid = ids(launch["user"])
    groups = groups_of(launch["user"], gid)
    problems = access_problems(argv, uid, groups)
    if problems:
        raise ConfineError("its QEMU runs as %s (uid %d) and %s; nothing was changed" % (
            launch["user"], uid, "; ".join(problems)))
    give(argv, uid, gid)
    return uid, gid, groups, handover(vm, argv, launch)


def exec_qemu(vm, argv, launch):
    """The VM unit's process becomes QEMU: as root for an unconfined launch (opt-out, or an argv
    recorded before confinement), else as the launch's user with what ``prepare`` handed over."""
    if not confined(launch):
        return os.execvp(argv[0], argv)
    uid, gid, groups, fds = prepare(vm, argv, launch)
    become(fds, uid, gid, groups)
    os.execvp(argv[0], argv)


def state_owner(path, launch):
    """Give a state file (about to be written or read by QEMU) to the launch's user; returns a
    function that gives it back to root. A check comes first: ConfineError when QEMU could not
    reach it."""
    if not confined(launch):
        return lambda: None
    uid, gid = ids(launch["user"])
    blocked = unreachable(path, uid, gid)
    if blocked:
        raise ConfineError("state %s: directory %s is not searchable by %s (uid %d): the qemu_vm role makes "
                           "the state directory 0711" % (path, blocked, launch["user"], uid))
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chown(path, uid, gid)

    def back():
        if os.path.exists(path):
            os.chown(path, 0, 0)
    return back


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
