# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's Live Update Orchestrator (LUO) as the hypervisor uses it: sessions on
/dev/liveupdate, memfds preserved in a session across a kexec, the kexec itself.

Stdlib only (runs on the hypervisors and in a bare initramfs). Layouts and numbers are those of
Linux 7.3's ``include/uapi/linux/liveupdate.h`` and ``kernel/liveupdate/``; see docs/luo.md.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import os
import struct

DEVICE = "/dev/liveupdate"
IOCTL_TYPE = 0xBA
SESSION_NAME_LENGTH = 64  # including the terminating NUL


def _io(nr):
    # The uapi uses _IO(): no direction or size bits, so the number is just type << 8 | nr.
    return (IOCTL_TYPE << 8) | nr


# On /dev/liveupdate
CREATE_SESSION = _io(0x00)
RETRIEVE_SESSION = _io(0x01)
# On a session fd
PRESERVE_FD = _io(0x40)
RETRIEVE_FD = _io(0x41)
FINISH = _io(0x42)
GET_NAME = _io(0x43)

# Every struct starts with its own size (u32); the kernel rejects a shorter one and non-zero bytes
# beyond what it knows. '=' is native order without padding; the layouts need none (u64 at 8).
SESSION_STRUCT = struct.Struct("=Ii%ds" % SESSION_NAME_LENGTH)  # size, fd, name: 72 bytes
FD_STRUCT = struct.Struct("=IiQ")  # size, fd, token: 16 bytes
FINISH_STRUCT = struct.Struct("=II")  # size, reserved: 8 bytes
GET_NAME_STRUCT = struct.Struct("=II%ds" % SESSION_NAME_LENGTH)  # size, reserved, name: 72 bytes

# kexec_file_load(2) and reboot(2), x86_64
SYS_KEXEC_FILE_LOAD = 320
KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_NO_INITRAMFS = 0x4
LINUX_REBOOT_CMD_KEXEC = 0x45584543
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_HUGETLB = 0x4
# x86 boot protocol: the setup_data entry kexec_file_load adds when it hands over KHO state.
SETUP_KEXEC_KHO = 10

BOOT_HINT = "boot with kho=on liveupdate=on on a kernel with CONFIG_LIVEUPDATE (and CONFIG_KEXEC_HANDOVER)"

# What each errno means for each call, from the kernel's own error paths; the text says what to do.
HINTS = {
    "open": {
        errno.ENOENT: "%s does not exist: %s" % (DEVICE, BOOT_HINT),
        errno.EBUSY: "another process holds %s open (one opener at a time): let it finish or hand over its "
                     "session fds, then retry" % DEVICE,
        errno.EACCES: "%s is root only" % DEVICE,
        errno.EPERM: "%s is root only" % DEVICE,
        errno.EIO: "the previous kernel's live update state could not be read: its preserved files are lost; "
                   "see the kernel log (luo)",
    },
    "create_session": {
        errno.EEXIST: "a session of that name already exists in this boot: pick another name or use the "
                      "existing session's fd",
        errno.EINVAL: "the name must be 1 to %d bytes" % (SESSION_NAME_LENGTH - 1),
    },
    "retrieve_session": {
        errno.ENOENT: "the previous kernel preserved no session of that name (it was closed before the kexec, "
                      "or this boot was not a kexec with KHO from a kernel with liveupdate=on)",
        errno.EINVAL: "the session was already retrieved in this boot (finish it through that fd)",
    },
    "preserve": {
        errno.ENOENT: "no live update handler takes this file: only unlinked shmem files (memfd without "
                      "MFD_HUGETLB, O_TMPFILE on tmpfs) are preserved, and memfds need CONFIG_LIVEUPDATE_MEMFD",
        errno.EEXIST: "the token is already used in this session: give each file its own token",
        errno.EBUSY: "the file is already preserved (by this or another session)",
        errno.EBADF: "the file descriptor is not open",
        errno.EINVAL: "files can be preserved only in a session created in this boot, not a retrieved one",
        errno.EOPNOTSUPP: "the memfd carries seals this kernel cannot preserve",
        errno.ENOSPC: "the session holds as many files as it can",
    },
    "retrieve": {
        errno.ENOENT: "no file with that token was preserved in this session",
        errno.EINVAL: "files can be retrieved only from a session retrieved in this boot",
    },
    "finish": {
        errno.EBUSY: "a file of the session cannot be finished yet: retrieve and restore it first",
        errno.EINVAL: "only a session retrieved in this boot can be finished",
    },
    "kexec_file_load": {
        errno.ENOEXEC: "the kernel image is not a bzImage this kernel can load",
        errno.EPERM: "root only, or the image is unsigned and lockdown/Secure Boot requires a signature",
        errno.EKEYREJECTED: "the image's signature was rejected (lockdown/Secure Boot)",
        errno.EBUSY: "a kexec is already in progress",
        errno.ENOSYS: "the running kernel has no kexec_file_load (CONFIG_KEXEC_FILE)",
        errno.ENOMEM: "no room for the image: with KHO on, kexec segments go into the scratch areas only "
                      "(kho_scratch=)",
    },
    "reboot_kexec": {
        errno.EINVAL: "no kernel is loaded for kexec: kexec_file_load first",
        errno.EPERM: "root only",
    },
}


class LuoError(Exception):
    """A live update call failed; ``errno`` is the kernel's, the message says what to do."""

    def __init__(self, op, err, detail=""):
        self.op = op
        self.errno = err
        hint = HINTS.get(op, {}).get(err, "")
        text = "%s failed: [Errno %d] %s" % (op, err, os.strerror(err))
        if detail:
            text += " (%s)" % detail
        if hint:
            text += ": " + hint
        super(LuoError, self).__init__(text)


def _name_bytes(name):
    raw = name.encode("utf-8") if not isinstance(name, bytes) else name
    if not raw or len(raw) > SESSION_NAME_LENGTH - 1 or b"\0" in raw:
        raise LuoError("session name", errno.EINVAL, "%r: 1 to %d bytes, no NUL" % (name, SESSION_NAME_LENGTH - 1))
    return raw


def pack_session(name, fd=-1):
    return bytearray(SESSION_STRUCT.pack(SESSION_STRUCT.size, fd, _name_bytes(name)))


def pack_fd(fd, token):
    if not 0 <= token < 1 << 64:
        raise LuoError("token", errno.EINVAL, "%r is not a u64" % (token,))
    return bytearray(FD_STRUCT.pack(FD_STRUCT.size, fd, token))


def pack_finish():
    return bytearray(FINISH_STRUCT.pack(FINISH_STRUCT.size, 0))


def pack_get_name():
    return bytearray(GET_NAME_STRUCT.pack(GET_NAME_STRUCT.size, 0, b""))


def unpack_name(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _ioctl(fd, request, buf, op, detail=""):
    try:
        fcntl.ioctl(fd, request, buf, True)
    except (IOError, OSError) as exc:
        raise LuoError(op, exc.errno, detail)
    return buf


class Session(object):
    """A session fd: created in this boot (outgoing: preserve) or retrieved (incoming: retrieve,
    finish). Closing an outgoing session un-preserves its files; closing a retrieved one finishes it."""

    def __init__(self, fd, name, retrieved):
        self.fd = fd
        self.name = name
        self.retrieved = retrieved

    def preserve(self, fd, token):
        """Preserve an open file under ``token`` (u64, unique in the session) until the next kernel."""
        _ioctl(self.fd, PRESERVE_FD, pack_fd(fd, token), "preserve", "session %s, fd %d, token %d" % (self.name, fd, token))

    def retrieve(self, token):
        """The fd of the file preserved under ``token``; it comes back O_CLOEXEC with an empty name."""
        buf = _ioctl(self.fd, RETRIEVE_FD, pack_fd(-1, token), "retrieve", "session %s, token %d" % (self.name, token))
        return FD_STRUCT.unpack(bytes(buf))[1]

    def finish(self):
        """Hand the session's files over to this kernel; files never retrieved are freed."""
        _ioctl(self.fd, FINISH, pack_finish(), "finish", "session %s" % self.name)

    def get_name(self):
        buf = _ioctl(self.fd, GET_NAME, pack_get_name(), "get_name", "session fd %d" % self.fd)
        return unpack_name(GET_NAME_STRUCT.unpack(bytes(buf))[2])

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Device(object):
    """/dev/liveupdate, held open by one process at a time."""

    def __init__(self, path=DEVICE):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except (IOError, OSError) as exc:
            raise LuoError("open", exc.errno, path)

    def _session(self, request, name, op):
        buf = _ioctl(self.fd, request, pack_session(name), op, "session %s" % name)
        return Session(SESSION_STRUCT.unpack(bytes(buf))[1], name, request == RETRIEVE_SESSION)

    def create_session(self, name):
        return self._session(CREATE_SESSION, name, "create_session")

    def retrieve_session(self, name):
        return self._session(RETRIEVE_SESSION, name, "retrieve_session")

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def create_memfd(name, size, flags=MFD_CLOEXEC):
    """A memfd of exactly ``size`` bytes (it cannot grow or shrink once preserved)."""
    if flags & MFD_HUGETLB:
        raise LuoError("memfd", errno.EOPNOTSUPP, "hugetlb memfds cannot be preserved by live update")
    try:
        fd = os.memfd_create(name, flags)
    except (IOError, OSError) as exc:
        raise LuoError("memfd", exc.errno, "memfd_create needs CONFIG_MEMFD_CREATE (shmem)")
    try:
        os.ftruncate(fd, size)
    except (IOError, OSError) as exc:
        os.close(fd)
        raise LuoError("memfd", exc.errno, "ftruncate to %d" % size)
    return fd


def _libc():
    import ctypes  # only the kexec path needs it
    return ctypes, ctypes.CDLL(None, use_errno=True)


def kexec_file_load(kernel, initrd=None, cmdline=""):
    """Load ``kernel`` for the next kexec with kexec_file_load(2), the only load that carries KHO."""
    ctypes, libc = _libc()
    flags = 0 if initrd else KEXEC_FILE_NO_INITRAMFS
    raw = cmdline.encode("utf-8") + b"\0"
    kfd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC)
    ifd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC) if initrd else -1
    try:
        libc.syscall.restype = ctypes.c_long
        rc = libc.syscall(ctypes.c_long(SYS_KEXEC_FILE_LOAD), ctypes.c_int(kfd), ctypes.c_int(ifd),
                          ctypes.c_ulong(len(raw)), ctypes.c_char_p(raw), ctypes.c_ulong(flags))
        if rc != 0:
            raise LuoError("kexec_file_load", ctypes.get_errno(), kernel)
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def kexec_unload():
    ctypes, libc = _libc()
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_KEXEC_FILE_LOAD), ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(0),
                      ctypes.c_char_p(None), ctypes.c_ulong(KEXEC_FILE_UNLOAD))
    if rc != 0:
        raise LuoError("kexec_file_load", ctypes.get_errno(), "unload")


def reboot(cmd):
    ctypes, libc = _libc()
    if libc.reboot(ctypes.c_int(cmd)) != 0:
        raise LuoError("reboot_kexec" if cmd == LINUX_REBOOT_CMD_KEXEC else "reboot", ctypes.get_errno())


def reboot_kexec():
    """Sync, then kexec into the loaded kernel from this process: the one holding the sessions,
    whose exit would un-preserve them. Returns only on failure."""
    os.sync()
    reboot(LINUX_REBOOT_CMD_KEXEC)


def kho_boot_evidence(root="/"):
    """How this boot shows that it came from a kexec with a KHO handover, read-only and without the
    kernel log: x86's boot_params setup_data list names an entry of type SETUP_KEXEC_KHO; with KHO's
    debugfs mounted, ``kho/in`` exists. Returns the list of evidence found (empty: a cold boot, or a
    kexec without KHO)."""
    found = []
    sd = os.path.join(root, "sys/kernel/boot_params/setup_data")
    try:
        entries = sorted(os.listdir(sd))
    except (IOError, OSError):
        entries = []
    for entry in entries:
        try:
            with open(os.path.join(sd, entry, "type")) as fh:
                if int(fh.read().strip(), 0) == SETUP_KEXEC_KHO:
                    found.append("setup_data %s type SETUP_KEXEC_KHO" % entry)
        except (IOError, OSError, ValueError):
            continue
    if os.path.isdir(os.path.join(root, "sys/kernel/debug/kho/in")):
        found.append("debugfs kho/in")
    return found
