"""A real LUO memfd round trip: module_utils/luo.py against the kernel's /dev/liveupdate in a TCG VM.

The tiny kernel comes from the kernel_build module with test_kernel_build_tiny.py's inputs (one
kernel for both tests: after that test, this build is a hash-skip). The initramfs holds the host's
python3, the shared libraries and stdlib modules it needs, luo.py, and luo_init.py as /init. The
cold boot preserves two 8 MiB memfds (one written before PRESERVE_FD, one through a mapping after
it) in a session, closes a second session, and kexecs (kexec_file_load + reboot) into the same
kernel and initramfs (kept by ``retain_initrd``); the kexec'd boot retrieves, checks every page,
finishes, and prints the result on the serial console. The refusals are real ones too: a second
opener, a file preserved twice, a reused token, a resize of a preserved memfd, a pipe, an unknown token, the closed session, a second retrieve, a
preserve on an incoming session.

Environment: as test_kernel_build_tiny.py (GUESTMEMFS_KERNEL_TARBALL, GUESTMEMFS_KERNEL_BUILD_DIR);
GUESTMEMFS_SKIP_KERNEL_BUILD=1 skips it. Console log: <build_dir>/luo-roundtrip/console.log.
"""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LUO = os.path.join(ROOT, "plugins", "module_utils", "luo.py")
INIT = os.path.join(HERE, "luo_init.py")
sys.path.insert(0, HERE)
import test_kernel_build_tiny as tiny_build  # noqa: E402  (its inputs and its module runner)

tarball = tiny_build.tarball
build_dir = tiny_build.build_dir

if os.environ.get("GUESTMEMFS_SKIP_KERNEL_BUILD") == "1":
    pytest.skip("GUESTMEMFS_SKIP_KERNEL_BUILD=1: no tiny kernel, so no LUO round trip", allow_module_level=True)

QEMU_TIMEOUT = 900  # a loaded 2-core host under TCG; an idle one needs well under a minute
BASE_CMDLINE = "console=ttyS0 kho=on liveupdate=on panic=-1 retain_initrd PYTHONHASHSEED=0"


def host_python():
    """The host's python3 at its real path (its stdlib is found next to it)."""
    for cand in ("/usr/bin/python3", shutil.which("python3") or ""):
        if cand and os.path.isfile(cand):
            return os.path.realpath(cand)
    pytest.fail("no python3 on this host for the VM's init")


def python_files(python):
    """The stdlib files and extension modules the init imports, as the host's python3 loads them,
    and their bytecode files where the host has them."""
    probe = ("import importlib.util, json, os, sys; sys.path[:0] = %r; "
             "import luo_init, ctypes, encodings.ascii, encodings.latin_1; "
             "fs = set(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)); "
             "cs = set(importlib.util.cache_from_source(f) for f in fs if f.endswith('.py')); "
             "print(json.dumps(sorted(fs | set(c for c in cs if os.path.isfile(c)))))" % [os.path.dirname(LUO), HERE])
    out = subprocess.run([python, "-S", "-c", probe], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    ours = [os.path.realpath(p) for p in (LUO, INIT)]
    return [f for f in json.loads(out) if os.path.realpath(f) not in ours and "__pycache__/luo" not in f]


def shared_libraries(elves):
    libs = set()
    for elf in elves:
        out = subprocess.run(["ldd", elf], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


def newc(entries):
    """A cpio "newc" archive, the initramfs format, from (path, mode, data, rdev, mtime) entries."""
    out = []
    for ino, (path, mode, data, rdev, mtime) in enumerate(entries, 1):
        name = path.lstrip("/").encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, mtime, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(name), 0)
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + name
        out += [head, b"\0" * (-len(head) % 4), data, b"\0" * (-len(data) % 4)]
    trailer = b"070701" + b"%08X" % 0 * 11 + b"%08X" % 11 + b"%08X" % 0 + b"TRAILER!!!\0"
    out += [trailer, b"\0" * (-len(trailer) % 4)]
    return b"".join(out)


def initramfs(build_dir, vmlinuz):
    python = host_python()
    pyfiles = python_files(python)
    elves = [python] + [f for f in pyfiles if f.endswith(".so")]
    # The host's own bytecode goes in with the sources' mtimes it is checked against: compiling
    # the modules in the VM would cost seconds under TCG on every boot.
    files = {}
    for path in [python] + pyfiles + shared_libraries(elves):
        with open(path, "rb") as fh:
            data = fh.read()
        mode = stat.S_IFREG | (0o755 if data[:4] == b"\x7fELF" else 0o644)
        files[path] = (mode, data, int(os.stat(path).st_mtime))
    with open(INIT, "rb") as fh:
        files["/init"] = (stat.S_IFREG | 0o755, b"#!%s -uS\n" % python.encode() + fh.read(), 0)
    with open(LUO, "rb") as fh:
        files["/luo.py"] = (stat.S_IFREG | 0o644, fh.read(), 0)
    with open(vmlinuz, "rb") as fh:
        files["/boot/vmlinuz"] = (stat.S_IFREG | 0o644, fh.read(), 0)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(b"%s\0%d\0" % (path.encode(), files[path][2]) + hashlib.sha256(files[path][1]).digest())
    out = os.path.join(build_dir, "luo-roundtrip", "initramfs-%s.cpio" % digest.hexdigest()[:16])
    if os.path.isfile(out):
        return out, False
    dirs = set(["/proc", "/sys", "/dev", "/tmp", "/boot"])
    for path in files:
        parent = os.path.dirname(path)
        while parent != "/":
            dirs.add(parent)
            parent = os.path.dirname(parent)
    entries = [(d, stat.S_IFDIR | 0o755, b"", 0, 0) for d in sorted(dirs)]
    # stdio of /init: the kernel opens /dev/console before devtmpfs is mounted.
    entries.append(("/dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1), 0))
    entries += [(p, files[p][0], files[p][1], 0, files[p][2]) for p in sorted(files)]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "wb") as fh:
        fh.write(newc(entries))
    os.rename(out + ".tmp", out)
    return out, True


def boot(vmlinuz, initrd, log):
    """Run the VM to its end; returns [(seconds since start, line)] of its serial console."""
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86_64 is not installed (Debian: qemu-system-x86)"
    argv = [qemu, "-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot", "-kernel", vmlinuz,
            "-initrd", initrd, "-append", BASE_CMDLINE]
    lines = []
    t0 = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def reader():
        with open(log, "w") as out:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append((time.time() - t0, line))
                out.write("%8.2f %s\n" % (lines[-1][0], line))
                out.flush()

    th = threading.Thread(target=reader)
    th.start()
    try:
        proc.wait(timeout=QEMU_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    th.join(10)
    return lines


def marked(lines, tag):
    for t, line in lines:
        i = line.find("LUO-RT %s " % tag)
        if i >= 0:
            return t, json.loads(line[i + len("LUO-RT %s " % tag):])
    return None, None


def test_luo_memfd_round_trip(capsys, tarball, build_dir):
    rc, built = tiny_build.run(capsys, **tiny_build.tiny(build_dir, tarball))
    assert rc == 0, built.get("msg")
    with capsys.disabled():
        print("\ntiny kernel: %s in %.0f s (built: %s)" % (built["kernel_release"], built["_seconds"], built["built"]))
    with open(built["config"]) as fh:
        config = fh.read().splitlines()
    assert "CONFIG_LIVEUPDATE_MEMFD=y" in config and "CONFIG_KEXEC_HANDOVER_DEBUGFS=y" in config

    t = time.time()
    initrd, fresh = initramfs(build_dir, built["vmlinuz"])
    with capsys.disabled():
        print("initramfs %s: %.1f MB, %.1f s (%s)" % (os.path.basename(initrd), os.path.getsize(initrd) / 1e6,
                                                      time.time() - t, "built" if fresh else "cached"))

    log = os.path.join(build_dir, "luo-roundtrip", "console.log")
    lines = boot(built["vmlinuz"], initrd, log)
    tail = "\n".join(line for _t, line in lines[-40:])
    err = marked(lines, "ERROR")[1]
    assert err is None, "the VM's init failed:\n%s\nconsole: %s" % (err, log)
    t_kexec, first = marked(lines, "KEXEC")
    assert first is not None, "the first boot never reached the kexec; console ends:\n%s" % tail
    t_done, result = marked(lines, "RESULT")
    assert result is not None, "no result after the kexec; console ends:\n%s" % tail

    # First boot: a cold boot, one opener, real refusals.
    assert first["evidence"] == []
    assert "one opener at a time" in first["second_open"]
    assert first["name"] == "luo-rt"
    assert "token is already used" in first["token_reused"]
    assert "already preserved" in first["file_twice"]
    assert first["resize_preserved"] == "EPERM"  # a preserved memfd is frozen at its size
    assert "only unlinked shmem files" in first["pipe_refused"]

    # Second boot: came by KHO, and everything preserved is back, bit-exact.
    assert any("SETUP_KEXEC_KHO" in e for e in result["evidence"]), result["evidence"]
    assert "debugfs kho/in" in result["evidence"]
    assert result["name"] == "luo-rt"
    assert set(result["files"]) == {"1", "2"}
    for token, f in result["files"].items():
        assert f["intact"] and f["bad_pages"] == 0, (token, f)
        assert f["size"] == 8 << 20 and f["cloexec"], (token, f)
    # Seals and position came along: token 1 sealed against resizing (F_SEAL_GROW|SHRINK) and moved
    # after PRESERVE_FD; token 2 made without MFD_ALLOW_SEALING, so F_SEAL_SEAL.
    assert result["files"]["1"]["seals"] == 0x0006 and result["files"]["1"]["pos"] == 12345
    assert result["files"]["2"]["seals"] == 0x0001 and result["files"]["2"]["pos"] == 0
    assert result["finish"] == "ok" and result["after_finish"] is True
    assert result["resize_after_finish"] == "allowed"  # the new kernel's file, no longer frozen
    # What does not survive, or cannot be done.
    assert "no file with that token" in result["unknown_token"]
    assert "closed before the kexec" in result["closed_session"]
    assert "already retrieved" in result["retrieved_twice"]
    assert "created in this boot" in result["preserve_on_incoming"]
    assert any("KHO: found kexec handover data" in line for _t, line in lines)

    with capsys.disabled():
        print("LUO round trip: cold boot to kexec %.1f s, kexec to verified+finished %.1f s (second kernel's "
              "uptime at init %.1f s; kexec_file_load %.2f s); VM total %.1f s" % (
                  t_kexec, t_done - t_kexec, result["uptime_s"], first["load_s"], lines[-1][0]))
