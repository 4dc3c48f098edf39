"""/init of the LUO round-trip VM (test_luo_roundtrip.py): a cold boot preserves memfds in a LUO
session and kexecs into the same kernel; the kexec'd boot (luo_rt=2 on its cmdline) retrieves them,
checks every byte, finishes the session and prints one ``LUO-RT-RESULT {json}`` line.

Runs on the host's python3 with only the modules the test copies in (the test adds the shebang,
``#!/usr/bin/python3 -uS``); luo.py sits at /."""

import errno
import fcntl
import json
import mmap
import os
import sys
import time
import traceback

sys.path.insert(0, "/")
import luo  # noqa: E402

MiB = 1 << 20
SESSION = "luo-rt"
CLOSED = "luo-rt-closed"
# token -> size; token 1 is written before PRESERVE_FD, token 2 through a mapping after it.
FILES = {1: 8 * MiB, 2: 8 * MiB}
SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK  # on token 1
POS = 12345  # token 1's file position, set after PRESERVE_FD
UNKNOWN_TOKEN = 99
INITRD = "/tmp/initrd.img"


def say(*words):
    sys.stdout.write("LUO-RT " + " ".join(str(w) for w in words) + "\n")


def page(token, index):
    # Each 4 KiB page names its file and its place: a page that moved or came back from another
    # file is caught, not only a zeroed one.
    return (token.to_bytes(8, "little") + index.to_bytes(8, "little")) * 256


def pattern(token, size):
    return b"".join(page(token, i) for i in range(size // 4096))


def mount(source, target, fstype):
    ctypes, libc = luo._libc()
    if libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(0), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (fstype, target, os.strerror(err)))


def expect_error(err, fn, *args):
    """Run a call the kernel must refuse; returns the refusal's text."""
    try:
        fn(*args)
    except luo.LuoError as exc:
        if exc.errno != err:
            raise
        return str(exc)
    raise AssertionError("%s%r was not refused with %s" % (fn.__name__, args, errno.errorcode[err]))


def first_boot(cmdline):
    result = {"evidence": luo.kho_boot_evidence()}
    dev = luo.Device()
    result["second_open"] = expect_error(errno.EBUSY, luo.Device)
    session = dev.create_session(SESSION)
    result["name"] = session.get_name()
    fds = {}
    fds[1] = luo.create_memfd("vm1", FILES[1], luo.MFD_CLOEXEC | luo.MFD_ALLOW_SEALING)
    fds[2] = luo.create_memfd("vm2", FILES[2])
    os.pwrite(fds[1], pattern(1, FILES[1]), 0)
    fcntl.fcntl(fds[1], fcntl.F_ADD_SEALS, SEALS)
    for token in sorted(fds):
        session.preserve(fds[token], token)
    os.lseek(fds[1], POS, os.SEEK_SET)
    try:
        os.ftruncate(fds[2], 2 * FILES[2])
        result["resize_preserved"] = "allowed"
    except OSError as exc:
        result["resize_preserved"] = errno.errorcode[exc.errno]
    # Written after PRESERVE_FD, through a shared mapping, as a running VM would.
    with mmap.mmap(fds[2], FILES[2]) as m:
        m[:] = pattern(2, FILES[2])
    result["file_twice"] = expect_error(errno.EBUSY, session.preserve, fds[1], 7)
    result["token_reused"] = expect_error(errno.EEXIST, session.preserve, luo.create_memfd("other", MiB), 1)
    result["pipe_refused"] = expect_error(errno.ENOENT, session.preserve, os.pipe()[0], 8)
    # A session closed before the kexec takes its files with it.
    closed = dev.create_session(CLOSED)
    extra = luo.create_memfd("closed", MiB)
    os.pwrite(extra, b"\xa5" * MiB, 0)
    closed.preserve(extra, 3)
    closed.close()
    with open("/sys/firmware/initrd", "rb") as src, open(INITRD, "wb") as dst:
        dst.write(src.read())
    args = [a for a in cmdline.split() if a != "retain_initrd"] + ["luo_rt=2"]
    t0 = time.time()
    luo.kexec_file_load("/boot/vmlinuz", INITRD, " ".join(args))
    result["load_s"] = round(time.time() - t0, 2)
    say("KEXEC", json.dumps(result, sort_keys=True))
    luo.reboot_kexec()  # returns only on failure, which raises


def second_boot():
    result = {"evidence": luo.kho_boot_evidence(), "uptime_s": float(open("/proc/uptime").read().split()[0])}
    dev = luo.Device()
    session = dev.retrieve_session(SESSION)
    result["name"] = session.get_name()
    files = {}
    for token, size in sorted(FILES.items()):
        fd = session.retrieve(token)
        st = os.fstat(fd)
        got = os.pread(fd, size + 1, 0)
        files[token] = {
            "size": st.st_size,
            "intact": got == pattern(token, size),
            "bad_pages": sum(1 for i in range(size // 4096) if got[i * 4096:(i + 1) * 4096] != page(token, i)),
            "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
            "link": os.readlink("/proc/self/fd/%d" % fd),
            "pos": os.lseek(fd, 0, os.SEEK_CUR),
            "seals": fcntl.fcntl(fd, fcntl.F_GET_SEALS),
        }
        files[token]["fd"] = fd
    result["files"] = dict((str(t), dict((k, v) for k, v in f.items() if k != "fd")) for t, f in files.items())
    result["unknown_token"] = expect_error(errno.ENOENT, session.retrieve, UNKNOWN_TOKEN)
    result["closed_session"] = expect_error(errno.ENOENT, dev.retrieve_session, CLOSED)
    result["retrieved_twice"] = expect_error(errno.EINVAL, dev.retrieve_session, SESSION)
    probe = luo.create_memfd("late", MiB)
    result["preserve_on_incoming"] = expect_error(errno.EINVAL, session.preserve, probe, 5)
    session.finish()
    result["finish"] = "ok"
    # After FINISH the files belong to this kernel like any memfd.
    result["after_finish"] = all(os.pread(f["fd"], 4096, 4096 * 7) == page(t, 7) for t, f in files.items())
    try:
        os.ftruncate(files[2]["fd"], 2 * FILES[2])
        result["resize_after_finish"] = "allowed"
    except OSError as exc:
        result["resize_after_finish"] = errno.errorcode[exc.errno]
    result["evidence_now"] = luo.kho_boot_evidence()
    say("RESULT", json.dumps(result, sort_keys=True))


def main():
    for d, fstype in (("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs"), ("/sys/kernel/debug", "debugfs")):
        mount(fstype, d, fstype)
    cmdline = open("/proc/cmdline").read().strip()
    if "luo_rt=2" in cmdline.split():
        second_boot()
    else:
        first_boot(cmdline)


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # anything: report it on the console, never leave the VM hanging
        say("ERROR", json.dumps(traceback.format_exc()))
    os.sync()
    luo.reboot(luo.LINUX_REBOOT_CMD_RESTART)  # QEMU runs with -no-reboot: a restart ends it
