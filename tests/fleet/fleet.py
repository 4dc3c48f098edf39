"""A local virtual fleet of KVM hypervisors: QEMU VMs under TCG, each a Debian trixie host that
boots through GRUB, can kexec, and runs QEMU >= 10.0 for nested guests.

    fleet.py image                 build (or reuse) the base disk image
    fleet.py up [--hosts N]        boot N hosts on overlays, wait for SSH, write an inventory
    fleet.py status                show the hosts and whether each answers
    fleet.py ssh HOST [CMD...]     run a command on a host
    fleet.py down                  stop every VM this fleet started (by PID) and remove overlays
    fleet.py watchdog              reset hosts whose boot stalls at GRUB (`up` starts it, `down` stops it)

Everything lives under the cache directory ($GUESTMEMFS_CACHE, default ~/.cache/guestmemfs-liveupdate):
images/ holds base images named by a hash of their recipe, fleets/<name>/ one fleet's state.
No prebuilt image is downloaded: the base image is debootstrapped from the Debian mirror this
machine's apt uses (or $GUESTMEMFS_DEBIAN_MIRROR), and GRUB's own boot.img/core.img go into the
MBR and the gap after it, so no loop device is needed.
"""

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from counter_guest import counter_guest  # beside this file

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_FILES = os.path.join(HERE, "image")

SUITE = "trixie"
DISK_SIZE = 8 * 1024**3
PART_START = 1024 * 1024  # the partition starts at 1 MiB; GRUB's core.img sits before it
# Installed with apt inside the chroot so that dependencies resolve properly.
PACKAGES = [
    "linux-image-amd64", "initramfs-tools", "grub-pc", "systemd-sysv", "udev", "dbus",
    "openssh-server", "python3", "kexec-tools", "qemu-system-x86", "ndctl", "iproute2",
    "procps", "kmod", "e2fsprogs", "zstd", "less", "python3-apt",
    # qemu-img: guest disks are made on the hosts (qemu-system-x86 only recommends it).
    "qemu-utils",
]
# Debconf answers: no GRUB install device during the build (there is no disk in a chroot; the
# MBR is written from the image file), /dev/vda afterwards; kexec-tools must not take over
# reboots, or a cold reboot for a cmdline change would never reach GRUB.
PRESEED_BUILD = """\
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
kexec-tools kexec-tools/load_kexec boolean false
"""
PRESEED_FINAL = "grub-pc grub-pc/install_devices multiselect /dev/vda\n"
# A second, newer kernel from trixie-backports, so a live update has another kernel to kexec into.
BACKPORTS_PACKAGES = ["linux-image-amd64"]
RECIPE_VERSION = 3  # bump when the build steps below change in a way the inputs don't show
# Single-threaded TCG: a host's vCPUs take turns in one thread. Multi-threaded TCG (QEMU 7.2) crashed
# host kernels that patched their text while the other vCPU ran it (int3 Oopses, six in two days,
# two failed CI runs: docs/virtual-fleet.md), and with two hosts on this 2-core machine it was the
# slower of the two (measured: SSH up 55.0-58.3 s against 62.1-68.3 s, the same host work 16.9-18.4 s
# against 22.3-23.5 s).
ACCEL = "tcg,thread=single"


class FleetError(Exception):
    """A problem the operator can fix; the message says what and how."""


class FleetStillRunning(FleetError):
    """The fleet is up in another shape; it is left alone."""


def log(msg):
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, **kw):
    check = kw.pop("check", True)
    try:
        return subprocess.run(cmd, check=check, **kw)
    except FileNotFoundError as exc:
        raise FleetError(f"{cmd[0]} is not installed: run scripts/bootstrap") from exc
    except subprocess.CalledProcessError as exc:
        out = (exc.stderr or b"")
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        raise FleetError(f"command failed (rc={exc.returncode}): {' '.join(cmd)}\n{out[-2000:]}") from exc


def cache_dir():
    return os.environ.get("GUESTMEMFS_CACHE") or os.path.expanduser("~/.cache/guestmemfs-liveupdate")


# ---------------------------------------------------------------- prerequisites

def require_root(what):
    if os.geteuid() != 0:
        raise FleetError(f"{what} needs root (debootstrap, chroot, /dev/kvm-less QEMU): run it with sudo")


def require_tools(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise FleetError(f"missing tools: {', '.join(missing)}; install them with scripts/bootstrap "
                         "(Debian packages debootstrap qemu-system-x86 qemu-utils e2fsprogs fdisk)")


def require_space(path, need_bytes, what):
    os.makedirs(path, exist_ok=True)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < need_bytes:
        raise FleetError(f"not enough disk space for {what} in {path}: {free / 2**30:.1f} GiB free, "
                         f"{need_bytes / 2**30:.1f} GiB needed; free some or set GUESTMEMFS_CACHE")


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


APT_SOURCES = ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list")


def debian_mirror(sources=APT_SOURCES):
    """The Debian archive this machine's apt already uses, so no host name is baked in here."""
    env = os.environ.get("GUESTMEMFS_DEBIAN_MIRROR")
    if env:
        return env
    candidates = []
    for path in sources:
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            continue
        candidates += re.findall(r"^URIs:\s*(\S+)", text, re.M)
        candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M)
    for uri in candidates:
        if "security" not in uri and "/debian" in uri:
            return uri.rstrip("/")
    raise FleetError("no Debian mirror found in /etc/apt/sources.list*: set GUESTMEMFS_DEBIAN_MIRROR")


# ---------------------------------------------------------------- the base image

def recipe_key():
    h = hashlib.sha256()
    h.update(json.dumps([RECIPE_VERSION, SUITE, DISK_SIZE, PACKAGES, BACKPORTS_PACKAGES, PRESEED_BUILD,
                         PRESEED_FINAL]).encode())
    for name in sorted(os.listdir(IMAGE_FILES)):
        with open(os.path.join(IMAGE_FILES, name), "rb") as fh:
            h.update(name.encode() + b"\0" + fh.read())
    return h.hexdigest()[:16]


def image_path():
    return os.path.join(cache_dir(), "images", f"{SUITE}-{recipe_key()}.raw")


@contextlib.contextmanager
def chroot_mounts(root):
    mounted = []
    try:
        for src, dst, opts in [("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                               ("/dev", "dev", ["--bind"]), ("devpts", "dev/pts", ["-t", "devpts"])]:
            target = os.path.join(root, dst)
            os.makedirs(target, exist_ok=True)
            run(["mount", *opts, src, target])
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", target], check=False)


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def build_image(force=False):
    path = image_path()
    if os.path.exists(path) and not force:
        log(f"base image cached: {path}")
        return path
    require_root("building the base image")
    require_tools("debootstrap", "mkfs.ext4", "sfdisk", "chroot")
    images = os.path.dirname(path)
    require_space(images, 6 * 2**30, "the base image build")
    mirror = debian_mirror()
    debs = os.path.join(cache_dir(), "debs")
    os.makedirs(debs, exist_ok=True)
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="build-", dir=images)
    try:
        root = os.path.join(work, "root")
        log(f"debootstrap {SUITE} minbase from {mirror}")
        run(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", SUITE, root, mirror],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log(f"debootstrap done in {time.monotonic() - t0:.0f}s; installing {len(PACKAGES)} packages")
        configure_root(root, debs, mirror)
        log(f"packages installed at {time.monotonic() - t0:.0f}s; writing the disk")
        raw = os.path.join(work, "disk.raw")
        make_disk(root, raw)
        os.rename(raw, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"base image built in {time.monotonic() - t0:.0f}s: {path}")
    in_use = images_in_use()
    for old in os.listdir(images):
        old_path = os.path.join(images, old)
        # Another fleet (another checkout) may still boot overlays on an older image: keep those.
        if old.endswith(".raw") and old_path != path and old_path not in in_use:
            os.unlink(old_path)
    return path


def images_in_use():
    """Base images named by any fleet's state, so a rebuild does not pull one from under it."""
    used = set()
    root = os.path.join(cache_dir(), "fleets")
    for name in os.listdir(root) if os.path.isdir(root) else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            used.add((load_state(name) or {}).get("base"))
    return used


def configure_root(root, debs, mirror):
    write(os.path.join(root, "usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n", 0o755)
    # Before any kernel is installed: each one's initramfs carries it.
    install_modprobe_conf(root)
    write(os.path.join(root, "tmp/preseed"), PRESEED_BUILD)
    archives = os.path.join(root, "var/cache/apt/archives")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    with chroot_mounts(root):
        run(["mount", "--bind", debs, archives])
        try:
            run(["chroot", root, "debconf-set-selections", "/tmp/preseed"])
            run(["chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            write(os.path.join(root, "etc/apt/sources.list.d/backports.list"),
                  f"deb {mirror} {SUITE}-backports main\n")
            run(["chroot", root, "apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
            run(["chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                 "-t", f"{SUITE}-backports", *BACKPORTS_PACKAGES],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            subprocess.run(["umount", "-l", archives], check=False)
        write(os.path.join(root, "tmp/preseed"), PRESEED_FINAL)
        run(["chroot", root, "debconf-set-selections", "/tmp/preseed"])
        install_files(root)
        run(["chroot", root, "systemctl", "enable", "-q", "systemd-networkd", "fleet-identity.service"])
    # The collection's bridged guest NICs (-netdev bridge) need QEMU's helper; it comes with
    # qemu-system-common, a dependency of qemu-system-x86: fail the build, not a later VM start.
    if not os.path.exists(os.path.join(root, "usr/lib/qemu/qemu-bridge-helper")):
        raise FleetError("the image has no /usr/lib/qemu/qemu-bridge-helper: the qemu-system-x86 install changed")
    os.unlink(os.path.join(root, "usr/sbin/policy-rc.d"))
    os.unlink(os.path.join(root, "tmp/preseed"))
    # Shared by every VM: nothing per-host may stay in it.
    for name in os.listdir(os.path.join(root, "etc/ssh")):
        if name.startswith("ssh_host_"):
            os.unlink(os.path.join(root, "etc/ssh", name))
    write(os.path.join(root, "etc/machine-id"), "")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, "var/lib/dbus/machine-id"))
    write(os.path.join(root, "etc/hostname"), "fleet\n")


def install_modprobe_conf(root):
    """The drivers the fleet's hosts never use, kept out of their boots (image/fleet-modprobe.conf)."""
    with open(os.path.join(IMAGE_FILES, "fleet-modprobe.conf")) as fh:
        write(os.path.join(root, "etc/modprobe.d/fleet.conf"), fh.read())


def install_files(root):
    def src(name):
        with open(os.path.join(IMAGE_FILES, name)) as fh:
            return fh.read()
    write(os.path.join(root, "usr/local/sbin/fleet-identity"), src("fleet-identity.sh"), 0o755)
    write(os.path.join(root, "etc/systemd/system/fleet-identity.service"), src("fleet-identity.service"))
    write(os.path.join(root, "etc/systemd/network/10-fleet.network"), src("10-fleet.network"))
    write(os.path.join(root, "etc/default/grub.d/10-fleet.cfg"), src("grub-fleet.cfg"))
    write(os.path.join(root, "etc/modules-load.d/fleet.conf"), "qemu_fw_cfg\n")
    write(os.path.join(root, "etc/default/kexec"), 'LOAD_KEXEC=false\nKEXEC_KERNEL=""\n')


def make_disk(root, raw):
    fs_uuid = str(uuid.uuid4())
    kernels = sorted(n for n in os.listdir(os.path.join(root, "boot")) if n.startswith("vmlinuz-"))
    if not kernels:
        raise FleetError("the image has no kernel in /boot: the linux-image-amd64 install failed")
    kver = kernels[-1][len("vmlinuz-"):]
    write(os.path.join(root, "etc/fstab"), f"UUID={fs_uuid} / ext4 errors=remount-ro 0 1\n")
    # GRUB from the image itself, so core.img and its modules are the same version. A first
    # grub.cfg is written here (grub-mkconfig needs a real disk); update-grub in the VM replaces it.
    grubdir = os.path.join(root, "boot/grub")
    shutil.copytree(os.path.join(root, "usr/lib/grub/i386-pc"), os.path.join(grubdir, "i386-pc"),
                    dirs_exist_ok=True)
    write(os.path.join(grubdir, "grub.cfg"), f"""\
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root {fs_uuid}
menuentry 'Debian GNU/Linux' {{
    linux /boot/vmlinuz-{kver} root=UUID={fs_uuid} ro console=tty0 console=ttyS0,115200
    initrd /boot/initrd.img-{kver}
}}
""")
    core = os.path.join(grubdir, "i386-pc", "core.img")
    run(["chroot", root, "grub-mkimage", "-O", "i386-pc", "-o", "/boot/grub/i386-pc/core.img",
         "-p", "(hd0,msdos1)/boot/grub", "biosdisk", "part_msdos", "ext2"])
    if os.path.getsize(core) > PART_START - 512:
        raise FleetError("GRUB core.img does not fit before the first partition")
    with open(raw, "wb") as fh:
        fh.truncate(DISK_SIZE)
    run(["sfdisk", "-q", raw], input=f"label: dos\nstart={PART_START // 512}, type=83, bootable\n".encode())
    fs_size_k = (DISK_SIZE - PART_START) // 1024
    run(["mkfs.ext4", "-q", "-F", "-L", "fleet-root", "-U", fs_uuid, "-d", root,
         "-E", f"offset={PART_START}", raw, f"{fs_size_k}k"])
    with open(os.path.join(root, "usr/lib/grub/i386-pc/boot.img"), "rb") as fh:
        boot = fh.read()
    with open(core, "rb") as fh:
        core_img = fh.read()
    with open(raw, "r+b") as fh:
        fh.write(boot[:440])  # keep the partition table and disk signature that sfdisk wrote
        fh.seek(512)
        fh.write(core_img)


# ---------------------------------------------------------------- the nested test guest
# A small real Linux guest for the hosts' nested VMs: Debian's own 6.12 kernel (trixie's, which
# the fleet image also carries) and a busybox initramfs with a static C workload (guest/workload.c) whose state can
# be checked from outside across a live update. Built here, copied to the hosts by `provision`.

GUEST_DIR = os.path.join(HERE, "guest")
GUEST_KERNEL_SERIES = "6.12"
# What /init needs beyond the builtins (virtio-pci, 8250 console, devtmpfs are =y in Debian's
# config): the disk, the NIC, ext4. crc32c_generic is ext4's softdep (metadata_csum), which
# modules.dep does not list. e1000, ahci and sd_mod: the same image serves the guest without virtio
# devices (--guest linux-novirtio); a module without its device only loads.
GUEST_MODULES = ["virtio_blk", "virtio_net", "crc32c_generic", "ext4", "virtio_console", "e1000", "ahci", "sd_mod"]
GUEST_BUSYBOX = "/bin/busybox"  # Debian's busybox-static (requirements/debian.txt)
GUEST_RECIPE_VERSION = 1
GUEST_FILES = ["init.c", "workload.c", "qga.c"]
# Where `provision` puts the guest on each host, as an operator would.
HOST_GUEST_DIR = "/var/lib/guestmemfs-guest"
GUEST_DISKS = 8
GUEST_DISK_MB = 64


def module_name(path):
    """kernel/fs/ext4/ext4.ko.xz -> ext4; modprobe treats - and _ alike, so do we."""
    base = os.path.basename(path)
    return base[:base.index(".ko")].replace("-", "_")


def parse_modules_dep(text):
    """modules.dep text -> {name: (path, [dependency paths])}."""
    mods = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        mods[module_name(path.strip())] = (path.strip(), deps.split())
    return mods


def resolve_modules(dep_text, wanted, builtin_text=""):
    """The module paths to insmod, every dependency before its user, each once. Ordered by a
    depth-first walk rather than by modules.dep's own listing order, which only modprobe reads.
    A module that modules.builtin (``builtin_text``) names is in the kernel: nothing to load."""
    mods = parse_modules_dep(dep_text)
    builtin = set(module_name(line.strip()) for line in builtin_text.splitlines() if line.strip())
    order, state = [], {}

    def visit(name, chain):
        name = name.replace("-", "_")
        if name not in mods and name in builtin:
            return
        if name not in mods:
            raise FleetError(f"kernel module {name} (needed by {' <- '.join(chain) or 'the guest'}) "
                             "is not in modules.dep: is it built in, or renamed in this kernel?")
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise FleetError(f"module dependency cycle: {' -> '.join(chain + [name])}")
        state[name] = "visiting"
        path, deps = mods[name]
        for dep in deps:
            visit(module_name(dep), chain + [name])
        state[name] = "done"
        order.append(path)

    for name in wanted:
        visit(name, [])
    return order


class Cpio:
    """A cpio "newc" archive, the format the kernel unpacks as an initramfs. Written here so the
    guest needs no root (device nodes are only headers) and is byte-for-byte reproducible (mtime
    0, inodes numbered in order)."""

    def __init__(self):
        self.chunks, self.ino = [], 0

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        self.ino += 1
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.chunks += [hdr, name_b, b"\0" * (-(len(hdr) + len(name_b)) % 4), data, b"\0" * (-len(data) % 4)]

    def dir(self, name, perm=0o755):
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name, target):
        self._entry(name, 0o120000 | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self):
        self.ino = 0
        self._entry("TRAILER!!!", 0, nlink=1)
        return b"".join(self.chunks)


def find_kernel_deb(series=GUEST_KERNEL_SERIES):
    debs = os.path.join(cache_dir(), "debs")
    pat = re.compile(rf"^linux-image-{re.escape(series)}\.\d+\+deb\d+-amd64_.*_amd64\.deb$")
    found = sorted(n for n in os.listdir(debs) if pat.match(n)) if os.path.isdir(debs) else []
    return os.path.join(debs, found[-1]) if found else None


def download_kernel_deb(series=GUEST_KERNEL_SERIES):
    """Fetch trixie's linux-image-<series>.*-amd64 by name through the mirror build_image uses,
    with apt-get and a throw-away apt state (the controller's own apt is bookworm's)."""
    mirror = debian_mirror()
    debs = os.path.join(cache_dir(), "debs")
    os.makedirs(debs, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apt-") as tmp:
        for sub in ("lists/partial", "cache/archives/partial", "etc"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        write(os.path.join(tmp, "etc/sources.list"), f"deb {mirror} {SUITE} main\n")
        opts = ["-o", f"Dir::Etc::SourceList={tmp}/etc/sources.list", "-o", "Dir::Etc::SourceParts=/nonexistent",
                "-o", f"Dir::State::Lists={tmp}/lists", "-o", f"Dir::Cache={tmp}/cache",
                "-o", "APT::Architecture=amd64"]
        run(["apt-get", "-q", *opts, "update"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # trixie's linux-image-amd64 depends on the current linux-image-6.12.N+debM-amd64.
        r = run(["apt-cache", *opts, "depends", "linux-image-amd64"], capture_output=True, text=True)
        names = re.findall(rf"Depends: (linux-image-{re.escape(series)}\.\S+-amd64)\b", r.stdout)
        if not names:
            raise FleetError(f"no linux-image-{series}.*-amd64 found in {mirror} {SUITE}")
        run(["apt-get", "-q", *opts, "download", names[0]], cwd=debs, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
    deb = find_kernel_deb(series)
    if not deb:
        raise FleetError(f"apt-get download of the {series} kernel left no deb in {debs}")
    return deb


def guest_key(deb, kernel=None):
    h = hashlib.sha256()
    h.update(json.dumps([GUEST_RECIPE_VERSION, os.path.basename(deb), os.path.getsize(deb),
                         GUEST_MODULES]).encode())
    paths = [GUEST_BUSYBOX] + [os.path.join(GUEST_DIR, n) for n in GUEST_FILES] + ([kernel] if kernel else [])
    for path in paths:
        with open(path, "rb") as fh:
            h.update(path.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:16]


def decompress_module(path):
    import lzma  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.endswith(".ko"):
        return data
    raise FleetError(f"{path}: only .ko and .ko.xz modules are handled (busybox insmod reads plain ELF)")


def guest_cc(source, out):
    """The compiler command of one of the guest's programs (static: the initramfs has no libc)."""
    return ["gcc", "-static", "-O2", "-Wall", "-pthread", "-o", out, source]


def build_guest(force=False, kernel=None):
    """Build (or reuse) the guest: images/guest-<hash>/{vmlinuz,initrd.img,manifest.json}.
    ``kernel``: another bzImage with everything the guest needs built in (e.g. a tiny build from
    roles/kernel_build/files/fleet-small.config): no modules go into the initramfs then."""
    require_tools("dpkg-deb", "depmod", "gcc")
    if not os.path.exists(GUEST_BUSYBOX):
        raise FleetError(f"{GUEST_BUSYBOX} missing: install busybox-static (scripts/bootstrap)")
    if kernel and not os.path.isfile(kernel):
        raise FleetError(f"guest kernel {kernel}: no such file (GUESTMEMFS_FLEET_GUEST_KERNEL or --kernel)")
    deb = find_kernel_deb() or download_kernel_deb()
    out = os.path.join(cache_dir(), "images", f"guest-{guest_key(deb, kernel)}")
    if os.path.exists(os.path.join(out, "manifest.json")) and not force:
        return out
    t0 = time.monotonic()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    work = tempfile.mkdtemp(prefix="guest-build-", dir=os.path.dirname(out))
    try:
        tree = os.path.join(work, "deb")
        run(["dpkg-deb", "-x", deb, tree])
        # trixie ships modules under usr/lib; depmod -b looks under lib/ (Debian's deb has no
        # modules.dep at all: its postinst runs depmod, so do the same on the unpacked tree).
        if not os.path.exists(os.path.join(tree, "lib")):
            os.symlink("usr/lib", os.path.join(tree, "lib"))
        kvers = os.listdir(os.path.join(tree, "lib/modules"))
        if len(kvers) != 1:
            raise FleetError(f"{deb}: expected one kernel in lib/modules, found {kvers}")
        kver = kvers[0]
        moddir = os.path.join(tree, "lib/modules", kver)
        run(["depmod", "-b", tree, kver])
        builtin = ""
        if os.path.exists(os.path.join(moddir, "modules.builtin")):
            with open(os.path.join(moddir, "modules.builtin")) as fh:
                builtin = fh.read()
        with open(os.path.join(moddir, "modules.dep")) as fh:
            load = [] if kernel else resolve_modules(fh.read(), GUEST_MODULES, builtin)
        binaries = {}
        # init (PID 1), the workload, and qga: the guest agent the in-guest gate asks.
        for prog in ("init", "workload", "qga"):
            binaries[prog] = os.path.join(work, prog)
            run(guest_cc(os.path.join(GUEST_DIR, prog + ".c"), binaries[prog]), stderr=subprocess.PIPE)
        cpio = Cpio()
        for d in ("bin", "dev", "proc", "sys", "data", "tmp", "run", "lib", "lib/modules"):
            cpio.dir(d)
        # The kernel opens /dev/console for init before anything mounts devtmpfs.
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        with open(binaries["init"], "rb") as fh:
            cpio.file("init", fh.read(), 0o755)
        # busybox stays for a person at the console and for commands run in the guest; nothing at
        # boot runs it.
        with open(GUEST_BUSYBOX, "rb") as fh:
            cpio.file("bin/busybox", fh.read(), 0o755)
        cpio.symlink("bin/sh", "busybox")
        with open(binaries["workload"], "rb") as fh:
            cpio.file("bin/workload", fh.read(), 0o755)
        with open(binaries["qga"], "rb") as fh:
            cpio.file("bin/qga", fh.read(), 0o755)
        # What /init starts beside the workload (and restarts if it dies). The agent waits for its
        # port itself: a VM without the channel never gets one.
        cpio.dir("etc")
        cpio.file("etc/gmfs-services", b"/bin/qga\n")
        names = []
        for path in load:
            name = module_name(path) + ".ko"
            cpio.file(f"lib/modules/{name}", decompress_module(os.path.join(moddir, path)))
            names.append(name)
        cpio.file("lib/modules/load.order", "".join(n + "\n" for n in names).encode())
        stage = os.path.join(work, "out")
        os.makedirs(stage)
        with open(os.path.join(stage, "initrd.img"), "wb") as fh:
            # Not compressed: unpacking gzip cost seconds under two levels of TCG, a few MB more
            # to load cost nothing measurable.
            fh.write(cpio.finish())
        shutil.copyfile(kernel or os.path.join(tree, "boot", f"vmlinuz-{kver}"), os.path.join(stage, "vmlinuz"))
        manifest = {"kernel": os.path.abspath(kernel) if kernel else kver, "deb": os.path.basename(deb),
                    "modules": names}
        for f in ("vmlinuz", "initrd.img"):
            with open(os.path.join(stage, f), "rb") as fh:
                manifest[f + ".sha256"] = hashlib.sha256(fh.read()).hexdigest()
        write(os.path.join(stage, "manifest.json"), json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.rename(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"guest built in {time.monotonic() - t0:.0f}s: {out}")
    return out


# ---------------------------------------------------------------- the fleet

def pick_base_port(name, hosts, lo=2222, span=2000):
    """The first run of free ports for this fleet, starting at a place its name picks, so that two
    fleets (two checkouts testing at once) rarely even look at the same ports."""
    start = lo + (int(hashlib.sha256(name.encode()).hexdigest(), 16) % (span // 8)) * 8
    for offset in range(0, span, 8):
        base = lo + (start - lo + offset) % span
        if all(port_free(base + i) for i in range(hosts)):
            return base
    raise FleetError(f"no {hosts} free consecutive ports in 127.0.0.1:{lo}-{lo + span}; pass --base-port")


def fleet_dir(name):
    return os.path.join(cache_dir(), "fleets", name)


def load_state(name):
    path = os.path.join(fleet_dir(name), "fleet.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def save_state(name, state):
    path = os.path.join(fleet_dir(name), "fleet.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(path + ".tmp", path)


def pid_alive(pid, cmd_hint):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return cmd_hint.encode() in fh.read()
    except OSError:
        return False


def ssh_base(state, host):
    return ["ssh", "-i", state["key"], "-p", str(host["port"]), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-o", "BatchMode=yes", "root@127.0.0.1"]


def ssh_ok(state, host):
    r = subprocess.run(ssh_base(state, host) + ["true"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)
    return r.returncode == 0


def host_index(host):
    """host3 -> 3: the number in MACs, fw_cfg and the guest subnet 10.77.H.0."""
    return int(re.sub(r"\D", "", host["name"]))


PANIC_MARK = "Kernel panic - not syncing"


def console_panic(path, offset=0):
    """The panic line of a host's console log (from byte ``offset`` on), if its kernel panicked."""
    try:
        with open(path, errors="replace") as fh:
            fh.seek(offset)
            for line in fh:
                if PANIC_MARK in line:
                    return line[line.index(PANIC_MARK):].strip()
    except FileNotFoundError:
        pass
    return None


def stop_qemu(host):
    pid = host.get("pid")
    if pid and pid_alive(pid, host["name"]):
        os.kill(pid, signal.SIGTERM)
        for _attempt in range(50):
            if not pid_alive(pid, host["name"]):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def restart_if_panicked(state, host, base):
    """A host whose kernel panicked at boot is started once more, its panic's log kept beside.
    Seen once under multi-threaded TCG (QEMU 7.2): an int3 Oops while the kernel patched a static
    key at boot ("sched_clock: Marking stable"). Single-threaded TCG avoids it but boots 2-vCPU
    hosts in 1.6-2x the time; a second panic is a real problem and stops the bring-up."""
    line = console_panic(host["console"])
    if not line:
        return False
    n = host.get("restarts", 0) + 1
    kept = host["console"].replace(".console.log", f".console.panic-{n}.log")
    os.replace(host["console"], kept)
    if n > 1:
        raise FleetError(f"{host['name']}: its kernel panicked again at boot ({line}); see {kept}")
    log(f"{host['name']}: its kernel panicked at boot ({line}; log kept in {kept}): starting it once more")
    stop_qemu(host)
    host["restarts"] = n
    start_host(state, host, base)
    return True


# ---------------------------------------------------------------- the fleet's watchdog
# A real host that hangs while it boots is reset by its BMC's watchdog; the fleet's hosts have
# none. Seen in a fresh-clone CI run (2026-12-06): host1's cold reboot into the carve-out stood at
# GRUB's last line for the reboot task's whole 900 s while host2 booted in 16 s (multi-threaded TCG,
# like the boot panic above). The watchdog resets only a host whose console has stood still at
# GRUB's last line: a kexec never passes GRUB, so a kernel a live update kexecs into is never reset.

GRUB_LAST_LINE = "Loading initial ramdisk ..."
BOOT_STALL_S = 360  # a cold boot here prints its next line within ~20 s; a loaded machine, 3-5x that
WATCH_EVERY_S = 10
MAX_RESETS = 3  # a host that hangs more often than this is a real problem: left hung, for a person
ESCAPES = re.compile(r"\x1b(\[[0-9;?!]*[A-Za-z]|[()][A-Za-z0-9])")


def console_last_line(path, size=4096):
    """The last non-blank line of a console log, its terminal escapes removed."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - size))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    lines = [ln.strip() for ln in ESCAPES.sub("", text).splitlines() if ln.strip()]
    return lines[-1] if lines else None


PRINTK_TS = re.compile(r"\[\s*(\d+\.\d+)\]")  # searched: an OSC sequence may stand before it


def cold_boot_panic(path, offset=0):
    """The panic line of a kernel that GRUB booted (a cold boot) and that panicked, in a host's
    console from byte ``offset`` on; None for any other console, a kexeced kernel's panic included
    (its printk clock starts again from 0 after GRUB's line: that is a live update's new kernel,
    whose failure the update must see, never a reset)."""
    try:
        with open(path, errors="replace") as fh:
            fh.seek(offset)
            text = fh.read()
    except FileNotFoundError:
        return None
    at = text.rfind(GRUB_LAST_LINE)
    if at < 0:
        return None
    last = -1.0
    for line in ESCAPES.sub("", text[at:]).splitlines():
        m = PRINTK_TS.search(line)
        if m:
            if float(m.group(1)) < last:
                return None
            last = float(m.group(1))
        if PANIC_MARK in line:
            return line[line.index(PANIC_MARK):].strip()
    return None


class BootWatch:
    """Tells which hosts' consoles have stood still at GRUB's last line for ``stall_s``, or show
    a kernel that GRUB booted panicking (the multi-threaded TCG int3 Oops above, seen in a cold
    reboot into the carve-out, 2026-12-06: the reboot task would have waited its 900 s)."""

    def __init__(self, stall_s=BOOT_STALL_S, clock=time.monotonic):
        self.stall_s, self.clock, self.seen, self.resets = stall_s, clock, {}, {}
        self.panics_from = {}  # a panic already reset is not reset again

    def stalled(self, host):
        """Why ``host`` should be reset, or None."""
        try:
            size = os.path.getsize(host["console"])
        except FileNotFoundError:
            return None
        panic = cold_boot_panic(host["console"], self.panics_from.get(host["name"], 0))
        if panic:
            self.panics_from[host["name"]] = size
            return f"its kernel panicked in a cold boot ({panic})"
        now = self.clock()
        last = self.seen.get(host["name"])
        if last is None or last[0] != size:
            self.seen[host["name"]] = (size, now)
            return None
        if now - last[1] < self.stall_s or console_last_line(host["console"]) != GRUB_LAST_LINE:
            return None
        self.seen[host["name"]] = (size, now)  # the reset's boot gets its own stall_s
        return f"its console has stood at GRUB's '{GRUB_LAST_LINE}' for {int(now - last[1])} s"


def module_utils_qmp():
    """The collection's own QMP client, from this checkout."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    path = os.path.join(HERE, "..", "..", "plugins", "module_utils", "qmp.py")
    spec = importlib.util.spec_from_file_location("guestmemfs_fleet_qmp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reset_host(host):
    """A hard reset of ``host`` through its QEMU's monitor, as a BMC would."""
    qmp = module_utils_qmp()
    with qmp.QMP(host["qmp"], timeout=10) as mon:
        mon.connect()
        mon.cmd("system_reset")


def watch_once(state, bw, log_to):
    """One look at every host of ``state``; resets those stalled in their boot. Returns their names."""
    reset = []
    for host in state["hosts"]:
        if not pid_alive(host.get("pid", 0), host["name"]):
            continue
        why = bw.stalled(host)
        if not why:
            continue
        n = bw.resets.get(host["name"], 0)
        if n >= MAX_RESETS:
            log_to(f"{host['name']}: {why}; it was reset {n} times already: left as it is")
            continue
        try:
            reset_host(host)
        except Exception as exc:  # pylint: disable=broad-except
            log_to(f"{host['name']}: {why}; the reset through {host['qmp']} failed: {exc}")
            continue
        bw.resets[host["name"]] = n + 1
        reset.append(host["name"])
        log_to(f"{host['name']}: {why}: reset it (reset {n + 1} of at most {MAX_RESETS})")
    return reset


def watchdog_log(name):
    return os.path.join(fleet_dir(name), "watchdog.log")


def watch(name, every=WATCH_EVERY_S):
    """The watchdog's loop, until the fleet is down."""
    bw = BootWatch()
    state = load_state(name)
    while state:
        watch_once(state, bw, log)
        time.sleep(every)
        try:
            state = load_state(name)
        except FileNotFoundError:  # `down` removed it between the look and the read
            state = None


def start_watchdog(name, state):
    """Start the fleet's watchdog unless it runs: a process of its own session, its log in the
    fleet's directory (`down` prints it)."""
    if pid_alive(state.get("watchdog_pid", 0), "watchdog"):
        return
    with open(watchdog_log(name), "a") as out:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--name", name, "watchdog"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    state["watchdog_pid"] = proc.pid


def stop_watchdog(name, state):
    """Stop the watchdog first (it must not reset hosts being stopped) and say what it did."""
    pid = state.get("watchdog_pid", 0)
    if pid and pid_alive(pid, "watchdog"):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(FileNotFoundError):
        with open(watchdog_log(name)) as fh:
            text = fh.read().strip()
        if text:
            log(f"the fleet's watchdog reset stalled boots:\n{text}")
        os.replace(watchdog_log(name), watchdog_log(name).replace(".log", ".last.log"))


def start_host(state, host, base):
    fd = open_tap(state["netns"], tap_name(host))
    try:
        run(qemu_cmd(state, host, base, fd), stderr=subprocess.PIPE, pass_fds=(fd,))
    finally:
        os.close(fd)  # QEMU (daemonized) holds its own copy
    with open(host["pidfile"]) as fh:
        host["pid"] = int(fh.read().strip())
    host["started"] = time.time()


def qemu_cmd(state, host, base, tap_fd=None):
    h = host_index(host)
    guest_nic = []
    if tap_fd is not None:
        # Second NIC: a tap in the fleet's netns, bridged there with the other hosts' (see
        # guest_net_*): it carries the nested guests' L2 traffic, which survives the host's kexec.
        guest_nic = ["-netdev", f"tap,id=n1,fd={tap_fd}",
                     "-device", f"virtio-net-pci,netdev=n1,mac={GUEST_NET_MAC_PREFIX}:{h:02x}"]
    return [
        "qemu-system-x86_64", "-name", host["name"], "-machine", "q35", "-accel", state["accel"],
        "-cpu", "max", "-smp", str(state["cpus"]), "-m", f"{state['memory_mb']}M",
        "-drive", f"file={host['disk']},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{host['port']}-:22",
        "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:76:00:{h:02x}",
        *guest_nic,
        "-fw_cfg", f"name=opt/fleet/hostname,string={host['name']}",
        "-fw_cfg", f"name=opt/fleet/index,string={h}",
        "-fw_cfg", f"name=opt/fleet/authorized_keys,file={state['key']}.pub",
        "-display", "none", "-serial", f"file:{host['console']}",
        "-qmp", f"unix:{host['qmp']},server=on,wait=off",
        "-pidfile", host["pidfile"], "-daemonize",
    ]


# ---------------------------------------------------------------- the guest network
# Nested guests must be reachable from OUTSIDE their fleet host: the host kexecs during a live
# update and every socket it holds dies with its kernel. So the path is pure L2 and ends on this
# machine: a network namespace per fleet (only 127/8 and our own namespaces may carry traffic
# here) holding a bridge 10.77.0.1/16; each host's second NIC is a tap on that bridge, enslaved
# inside the host to br0 (10.77.H.1/16, image/fleet-identity.sh), where the guests' bridged NICs
# sit (10.77.H.10+N). A tap's fd lives in QEMU, which keeps running across the host's kexec.

GUEST_NET_MAC_PREFIX = "52:54:00:77:00"
GUEST_NET_ADDR = "10.77.0.1/16"
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def netns_name(fleet):
    return f"gmfs-{fleet}"


def tap_name(host):
    return f"tap-{host['name']}"[:15]  # IFNAMSIZ - 1


def setns_net(fd):
    """os.setns is Python >= 3.12; the controller may run 3.11, so fall back to libc."""
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(ns):
    """Run the body with this thread in network namespace ``ns``; always come back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns_net(target)
        try:
            yield
        finally:
            setns_net(home)
    finally:
        os.close(target)
        os.close(home)


def guest_net_up(fleet):
    """Create (or reuse) the fleet's netns with bridge br0 10.77.0.1/16. Returns its name."""
    require_tools("ip")
    ns = netns_name(fleet)
    if not os.path.exists(f"/run/netns/{ns}"):
        run(["ip", "netns", "add", ns], stderr=subprocess.PIPE)
    ipn = ["ip", "-n", ns]
    run(ipn + ["link", "set", "lo", "up"])
    if run(ipn + ["link", "show", "br0"], check=False, stdout=subprocess.DEVNULL,
           stderr=subprocess.DEVNULL).returncode != 0:
        # No STP and no forward delay: a port must forward at once, also when a host's NIC
        # comes back after its kexec.
        run(ipn + ["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])
    run(ipn + ["addr", "replace", GUEST_NET_ADDR, "dev", "br0"])
    run(ipn + ["link", "set", "br0", "up"])
    return ns


def guest_net_down(fleet):
    ns = netns_name(fleet)
    if os.path.exists(f"/run/netns/{ns}"):
        run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
        log(f"network namespace {ns} removed")


def open_tap(ns, ifname):
    """Open a tap named ``ifname`` inside ``ns`` and attach it to the netns bridge. The fd is
    returned for QEMU (-netdev tap,fd=N); the device dies with the last fd, i.e. with QEMU."""
    import fcntl  # pylint: disable=import-outside-toplevel
    import struct  # pylint: disable=import-outside-toplevel
    with in_netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR)  # the tap is created in the opener's netns
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
    os.set_inheritable(fd, True)
    run(["ip", "-n", ns, "link", "set", ifname, "master", "br0", "up"])
    return fd


def up(name, hosts, memory_mb, cpus, base_port, timeout, accel, inventory_copy=None, backend="pmem", guest="counter",
       guest_kernel=None):
    require_tools("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen")
    guest = guest_for(backend, guest)
    state = load_state(name)
    if state and any(pid_alive(h.get("pid", 0), h["name"]) for h in state["hosts"]):
        healthy = all(pid_alive(h["pid"], h["name"]) and ssh_ok(state, h) for h in state["hosts"])
        if len(state["hosts"]) == hosts and healthy:
            log(f"fleet '{name}' is already up with {hosts} hosts: reusing it")
            state["backend"], state["guest"] = backend, guest
            start_watchdog(name, state)
            write_inventory(name, state, inventory_copy)
            return state
        raise FleetStillRunning(f"fleet '{name}' is running but not as asked (or not answering): "
                                f"run `python3 tests/fleet/fleet.py --name {name} down` first")
    base = build_image()
    fdir = fleet_dir(name)
    require_space(fdir, hosts * 2 * 2**30, f"{hosts} overlays")
    if base_port is None:
        base_port = pick_base_port(name, hosts)
    for i in range(hosts):
        if not port_free(base_port + i):
            raise FleetError(f"port {base_port + i} on 127.0.0.1 is in use (SSH forward of host{i + 1}): "
                             "stop what holds it or pass --base-port")
    key = os.path.join(fdir, "id_ed25519")
    if not os.path.exists(key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fleet-{name}", "-f", key])
    state = {"name": name, "key": key, "memory_mb": memory_mb, "cpus": cpus, "accel": accel,
             "base": base, "hosts": [], "backend": backend, "guest": guest}
    for i in range(hosts):
        hname = f"host{i + 1}"
        host = {"name": hname, "port": base_port + i,
                "disk": os.path.join(fdir, f"{hname}.qcow2"),
                "console": os.path.join(fdir, f"{hname}.console.log"),
                "qmp": os.path.join(fdir, f"{hname}.qmp"),
                "pidfile": os.path.join(fdir, f"{hname}.pid")}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(host["disk"])
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", host["disk"]])
        state["hosts"].append(host)
    guest = build_guest(kernel=guest_kernel)  # before any VM boots: a missing tool fails fast
    for old in (watchdog_log(name), watchdog_log(name).replace(".log", ".last.log")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old)
    state["netns"] = guest_net_up(name)
    t0 = time.monotonic()
    for host in state["hosts"]:
        start_host(state, host, base)
        save_state(name, state)
        log(f"{host['name']}: QEMU pid {host['pid']}, ssh port {host['port']}")
    start_watchdog(name, state)
    save_state(name, state)
    pending = {h["name"] for h in state["hosts"]}
    while pending:
        if time.monotonic() - t0 > timeout:
            raise FleetError(f"no SSH from {', '.join(sorted(pending))} within {timeout}s; "
                             f"see the console logs in {fdir}")
        for host in state["hosts"]:
            if host["name"] not in pending:
                continue
            if restart_if_panicked(state, host, base):
                save_state(name, state)
                continue
            if not pid_alive(host["pid"], host["name"]):
                raise FleetError(f"{host['name']}: QEMU exited; see {host['console']}")
            if ssh_ok(state, host):
                host["boot_to_ssh_s"] = round(time.monotonic() - t0, 1)
                log(f"{host['name']}: SSH up after {host['boot_to_ssh_s']}s")
                pending.discard(host["name"])
        time.sleep(2)
    save_state(name, state)
    write_inventory(name, state, inventory_copy)
    provision(state, guest)
    return state


BACKENDS = ("pmem", "luo", "guestmemfs")


def inventory_vars(text, backend=None):
    """The fleet's group variables for ``backend``: pmem as written; luo (no carve-out, no mount)
    sizes the same VMs as memfds beside the KHO scratch; guestmemfs (the RFC kernel) carves the
    same VMs out with guestmemfs= and a KHO v2 scratch area."""
    if backend in (None, "pmem"):
        return text.splitlines()
    if backend not in BACKENDS:
        raise FleetError(f"backend {backend!r}: the virtual fleet knows {', '.join(BACKENDS)}")
    sizing = {"luo": ["guestmemfs_sizing:", "  backend: luo", "  mode: vms", '  vms: "{{ guestmemfs_vms }}"',
                      "  reserve: 1G"],
              "guestmemfs": ["guestmemfs_sizing:", "  backend: guestmemfs", "  mode: vms",
                             '  vms: "{{ guestmemfs_vms }}"', "  headroom: 128M", "  reserve: 1G",
                             "  kho_scratch: 256M"]}[backend]
    out, skip = [], False
    for line in text.splitlines():
        if line.startswith("guestmemfs_backend:"):
            line = "guestmemfs_backend: " + backend
        elif line.startswith("guestmemfs_sizing:"):
            out += sizing
            skip = True
            continue
        elif skip and line.startswith("  "):
            continue
        skip = False
        out.append(line)
    return out


GUESTS = ("counter", "linux", "linux-novirtio")
# linux-novirtio: vm1 as linux gives it, without any virtio device - the guest a QEMU update from
# Debian's 10.0.13 to 11.1 can carry (docs/qemu-update.md). Per line of vm1's entry in
# inventory-vars.yml that starts so, the line that goes after it.
NOVIRTIO_VM1 = (
    ("      console=ttyS0 ", "      gmfs.qga=/dev/ttyS1"),  # /init hands the agent its port
    ("      - path: ", "        interface: sata"),
    ("      - type: bridge", "        model: e1000"),
    ("    guest_agent: true", "    guest_agent_port: isa-serial"),
)
# Backends whose hosts boot the collection's small kernels: no bridge there (CONFIG_BRIDGE,
# CONFIG_TUN) for the real guest's NIC, so its VM would never start (seen 2026-12-05).
NO_BRIDGE_BACKENDS = ("luo", "guestmemfs")


def guest_for(backend, guest):
    """The guest a fleet of ``backend`` hosts can run when ``guest`` is asked for."""
    if guest != "counter" and backend in NO_BRIDGE_BACKENDS:
        log(f"backend {backend}: the real Linux guest is SKIPPED, two counting guests per host instead "
            "(its hosts' small kernel has no bridge for the guest's NIC yet)")
        return "counter"
    return guest


def without_virtio(text):
    """inventory-vars.yml with vm1 on an e1000 NIC, a sata disk and its agent on an ISA serial port
    (NOVIRTIO_VM1)."""
    lines = text.splitlines()
    start = lines.index("  - name: vm1")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  - name: ")), len(lines))
    for anchor, line in NOVIRTIO_VM1:
        at = [i for i in range(start, end) if lines[i].startswith(anchor)]
        if len(at) != 1:
            raise FleetError(f"inventory-vars.yml: vm1 has {len(at)} lines starting {anchor.strip()!r}, "
                             "linux-novirtio needs one (NOVIRTIO_VM1 in fleet.py)")
        lines.insert(at[0] + 1, line)
        end += 1
    return "\n".join(lines) + "\n"


def with_guest(text, guest):
    """The inventory variables with ``guest``'s VMs: linux (the real guest, as inventory-vars.yml has
    it), linux-novirtio (the same without virtio devices) or counter (inventory-guest-counter.yml's
    blocks in place of guestmemfs_vm_defaults and guestmemfs_vms)."""
    if guest == "linux":
        return text
    if guest == "linux-novirtio":
        return without_virtio(text)
    if guest not in GUESTS:
        raise FleetError(f"guest {guest!r}: the virtual fleet knows {', '.join(GUESTS)}")
    with open(os.path.join(HERE, "inventory-guest-counter.yml")) as fh:
        block = [line for line in fh.read().splitlines() if line.strip() and not line.startswith("#")]
    out, skip, placed = [], False, False
    for line in text.splitlines():
        if line.startswith(("guestmemfs_vm_defaults:", "guestmemfs_vms:")):
            skip = True
            if not placed:
                out += block
                placed = True
            continue
        if skip and (line.startswith((" ", "#")) or not line.strip()):
            continue
        skip = False
        out.append(line)
    return "\n".join(out) + "\n"


def write_inventory(name, state, copy_to=None):
    lines = ["# Written by tests/fleet/fleet.py up; the fleet's VMs on 127.0.0.1", "all:",
             "  children:", "    hypervisors:", "      hosts:"]
    for h in state["hosts"]:
        lines += [f"        {h['name']}:", "          ansible_host: 127.0.0.1",
                  f"          ansible_port: {h['port']}",
                  # Guest vmN on this host is 10.77.H.(10+N), on the bridged guest network.
                  f'          fleet_guest_prefix: "10.77.{host_index(h)}"']
    lines += ["      vars:", "        ansible_user: root",
              f"        ansible_ssh_private_key_file: {state['key']}",
              "        ansible_ssh_common_args: >-", "          -o StrictHostKeyChecking=no",
              "          -o UserKnownHostsFile=/dev/null", "          -o LogLevel=ERROR",
              # A VM that dies under a connection must fail the task, not hang it.
              "          -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o ConnectTimeout=30",
              "        ansible_python_interpreter: /usr/bin/python3"]
    with open(os.path.join(HERE, "inventory-vars.yml")) as fh:
        text = with_guest(fh.read(), state.get("guest", "counter"))
        lines += ["        " + line if line.strip() else "" for line in inventory_vars(text, state.get("backend"))]
    lines.append("")
    path = os.path.join(fleet_dir(name), "inventory.yml")
    write(path, "\n".join(lines))
    state["inventory"] = path
    if copy_to:
        write(copy_to, "\n".join(lines))
        state["inventory_copy"] = os.path.abspath(copy_to)
    save_state(name, state)


def down(name):
    state = load_state(name)
    if not state:
        guest_net_down(name)
        log(f"fleet '{name}' has no state: nothing to stop")
        return
    stop_watchdog(name, state)
    for host in state["hosts"]:
        pid = host.get("pid")
        if pid and pid_alive(pid, host["name"]):
            stop_qemu(host)
            log(f"{host['name']}: stopped QEMU pid {pid}")
        for key in ("disk", "qmp", "pidfile"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(host[key])
    for key in ("inventory", "inventory_copy"):
        with contextlib.suppress(FileNotFoundError, KeyError):
            os.unlink(state[key])
    guest_net_down(name)
    os.unlink(os.path.join(fleet_dir(name), "fleet.json"))
    log(f"fleet '{name}' is down; console logs kept in {fleet_dir(name)}")


def ssh_out(state, host, command, timeout=120):
    r = subprocess.run(ssh_base(state, host) + [command], capture_output=True, text=True,
                       timeout=timeout, check=False)
    if r.returncode != 0:
        raise FleetError(f"{host['name']}: `{command}` failed (rc={r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip()


def kexec_roundtrip(state, host, timeout=600):
    """Kexec a host into its running kernel (kexec_file_load, same cmdline); time it to SSH."""
    before = ssh_out(state, host, "cat /proc/sys/kernel/random/boot_id")
    t0 = time.monotonic()
    ssh_out(state, host, "k=$(uname -r); kexec -s -l /boot/vmlinuz-$k --initrd=/boot/initrd.img-$k --reuse-cmdline")
    load_s = time.monotonic() - t0
    t1 = time.monotonic()
    ssh_out(state, host, "systemd-run -q --on-active=1 systemctl kexec")
    while time.monotonic() - t1 < timeout:
        try:
            now = ssh_out(state, host, "cat /proc/sys/kernel/random/boot_id", timeout=30)
        except (FleetError, subprocess.TimeoutExpired):
            now = None
        if now and now != before:
            return {"host": host["name"], "load_s": round(load_s, 1),
                    "kexec_to_ssh_s": round(time.monotonic() - t1, 1), "boot_id": now}
        time.sleep(1)
    raise FleetError(f"{host['name']}: no new boot_id within {timeout}s after kexec; see {host['console']}")


PROVISION_DISKS = r"""
set -eu
mkdir -p {dir}/disks
cd {dir}/disks
n=1
while [ $n -le {count} ]; do
  # Odd guests get a qcow2 disk, even ones a raw file: the collection must handle both formats.
  if [ $((n % 2)) -eq 1 ]; then f=vm$n.qcow2; else f=vm$n.raw; fi
  if [ ! -e "$f" ]; then
    rm -f "vm$n.tmp.raw" "vm$n.tmp.qcow2"
    truncate -s {mb}M "vm$n.tmp.raw"
    mkfs.ext4 -q -F -L "vm$n" "vm$n.tmp.raw"
    if [ "$f" = "vm$n.qcow2" ]; then
      qemu-img convert -O qcow2 "vm$n.tmp.raw" "vm$n.tmp.qcow2"
      rm "vm$n.tmp.raw"
      mv "vm$n.tmp.qcow2" "$f"
    else
      mv "vm$n.tmp.raw" "$f"
    fi
    echo "created $f"
  fi
  n=$((n + 1))
done
"""


def provision(state, guest=None):
    """Put the nested test guest on every host as an operator would: its kernel and initramfs in
    HOST_GUEST_DIR, and empty ext4 disks vm1..vm8 (odd qcow2, even raw) in HOST_GUEST_DIR/disks.
    Idempotent: files whose checksum matches are not copied again; existing disks are kept."""
    guest = guest or build_guest()
    with open(os.path.join(guest, "manifest.json")) as fh:
        manifest = json.load(fh)
    for host in state["hosts"]:
        t0 = time.monotonic()
        have = ssh_out(state, host, f"mkdir -p {HOST_GUEST_DIR} && cd {HOST_GUEST_DIR} && "
                                    "sha256sum vmlinuz initrd.img 2>/dev/null || true")
        sums = dict(reversed(line.split()) for line in have.splitlines() if len(line.split()) == 2)
        for f in ("vmlinuz", "initrd.img", "manifest.json"):
            if f != "manifest.json" and sums.get(f) == manifest[f + ".sha256"]:
                continue
            with open(os.path.join(guest, f), "rb") as fh:
                r = subprocess.run(ssh_base(state, host) + [f"cat > {HOST_GUEST_DIR}/{f}.tmp && "
                                                            f"mv {HOST_GUEST_DIR}/{f}.tmp {HOST_GUEST_DIR}/{f}"],
                                   stdin=fh, capture_output=True, timeout=600, check=False)
            if r.returncode != 0:
                raise FleetError(f"{host['name']}: copying {f} failed: {r.stderr.decode(errors='replace')}")
        r = subprocess.run(ssh_base(state, host) + [f"cat > {HOST_GUEST_DIR}/counter-guest.mb"], input=counter_guest(),
                           capture_output=True, timeout=120, check=False)
        if r.returncode != 0:
            raise FleetError(f"{host['name']}: writing the counting guest failed: {r.stderr.decode(errors='replace')}")
        out = ssh_out(state, host, PROVISION_DISKS.format(dir=HOST_GUEST_DIR, count=GUEST_DISKS, mb=GUEST_DISK_MB),
                      timeout=600)
        log(f"{host['name']}: guest {manifest['kernel']} in {HOST_GUEST_DIR} "
            f"({len(out.splitlines())} disks created) in {time.monotonic() - t0:.0f}s")


def status(name):
    state = load_state(name)
    if not state:
        print(f"fleet '{name}' is not up")
        return 1
    print(f"{'host':<8} {'pid':>8} {'port':>6}  {'qemu':<7} {'ssh':<4} boot_to_ssh_s")
    for h in state["hosts"]:
        alive = pid_alive(h.get("pid", 0), h["name"])
        ok = alive and ssh_ok(state, h)
        print(f"{h['name']:<8} {h.get('pid', '-'):>8} {h['port']:>6}  {'running' if alive else 'dead':<7} "
              f"{'yes' if ok else 'no':<4} {h.get('boot_to_ssh_s', '-')}")
    print(f"inventory: {state.get('inventory', '-')}")
    return 0


# What the unit tests' host fixtures hold: the kernel files guestmemfs_facts and the backends read.
# Read on the host by a small Python program; /proc and /sys files report size 0, so no tar.
RECORD_PATHS = [
    "proc/cmdline", "proc/meminfo", "proc/filesystems", "proc/self/mounts", "proc/sys/kernel/osrelease",
    "proc/sys/kernel/random/boot_id", "boot/config-{release}", "sys/firmware/memmap/*/start",
    "sys/firmware/memmap/*/end", "sys/firmware/memmap/*/type", "sys/kernel/kexec_loaded",
    "sys/kernel/boot_params/setup_data/*/type", "sys/kernel/debug/kho/**", "sys/kernel/kho/*",
    "sys/firmware/kho/dt", "sys/devices/system/node/node*/meminfo",
    "sys/kernel/mm/hugepages/*/nr_hugepages", "sys/kernel/mm/hugepages/*/free_hugepages", "dev/liveupdate",
    "proc/iomem", "dev/kmsg",
]
RECORD_PROGRAM = r"""
import base64, glob, json, os, stat, sys
release = os.uname()[2]
out = {}
for pattern in json.loads(sys.argv[1]):
    for path in sorted(glob.glob("/" + pattern.format(release=release), recursive=True)):
        st = os.stat(path)
        if path == "/dev/kmsg":  # the kernel log, one record per read, kept as a text file
            fd, chunks = os.open(path, os.O_RDONLY | os.O_NONBLOCK), []
            while True:
                try:
                    chunks.append(os.read(fd, 8192))
                except BlockingIOError:
                    break
                except BrokenPipeError:
                    continue
            os.close(fd)
            out[path] = {"b64": base64.b64encode(b"".join(chunks)).decode()}
        elif stat.S_ISCHR(st.st_mode):
            out[path] = {"chardev": "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))}
        elif stat.S_ISDIR(st.st_mode):
            out[path] = {"dir": True}
        else:
            try:
                with open(path, "rb") as fh:
                    out[path] = {"b64": base64.b64encode(fh.read(1 << 20)).decode()}
            except OSError as exc:
                out[path] = {"error": str(exc)}
print(json.dumps(out))
"""


def record(state, host, dest):
    """Copy ``host``'s kernel files (RECORD_PATHS) into the fixture directory ``dest``. A character
    device becomes an empty file, a directory stays (with .gitkeep), an unreadable file is left out.
    Returns {path: what was written}."""
    r = subprocess.run(ssh_base(state, host) + ["python3", "-c", shlex.quote(RECORD_PROGRAM),
                                                shlex.quote(json.dumps(RECORD_PATHS))],
                       stdout=subprocess.PIPE, check=True, timeout=120)
    got = json.loads(r.stdout)
    written, dirs = {}, []
    for path, item in sorted(got.items()):
        local = os.path.join(dest, path.lstrip("/"))
        if item.get("dir"):
            os.makedirs(local, exist_ok=True)
            dirs.append(local)
            continue
        if "error" in item:
            written[path] = "unreadable: " + item["error"]
            continue
        os.makedirs(os.path.dirname(local), exist_ok=True)
        data = b"" if "chardev" in item else base64.b64decode(item["b64"])
        with open(local, "wb") as fh:
            fh.write(data)
        written[path] = "character device %s (empty file)" % item["chardev"] if "chardev" in item else \
            "%d bytes" % len(data)
    for local in dirs:  # git keeps no empty directory
        if not os.listdir(local):
            open(os.path.join(local, ".gitkeep"), "w").close()
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--name", default="fleet", help="fleet name (state directory); default: fleet")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("image", help="build or reuse the base image")
    pi.add_argument("--force", action="store_true")
    pg = sub.add_parser("guest", help="build or reuse the nested test guest (kernel + initramfs); prints its directory")
    pg.add_argument("--force", action="store_true")
    kernel_help = ("the guest's bzImage, with every driver it needs built in (e.g. the small kernel scripts/test "
                   "builds from fleet-small.config), instead of Debian's 6.12 and its modules; default "
                   "$GUESTMEMFS_FLEET_GUEST_KERNEL")
    pg.add_argument("--kernel", default=os.environ.get("GUESTMEMFS_FLEET_GUEST_KERNEL") or None, help=kernel_help)
    pu = sub.add_parser("up", help="boot the fleet")
    pu.add_argument("--hosts", type=int, default=2)
    pu.add_argument("--memory", type=int, default=4096, help="MiB per host (default 4096)")
    pu.add_argument("--cpus", type=int, default=1)
    pu.add_argument("--base-port", type=int, default=None,
                    help="first SSH port on 127.0.0.1 (default: free ports picked by the fleet's name)")
    pu.add_argument("--timeout", type=int, default=600, help="seconds to wait for SSH")
    pu.add_argument("--accel", default=ACCEL, help=f"QEMU accelerator (default {ACCEL}: KVM hangs here)")
    pu.add_argument("--inventory", help="also write the inventory to this path")
    pu.add_argument("--backend", default="pmem", choices=list(BACKENDS),
                    help="the memory backend the inventory gives the hosts (default pmem)")
    pu.add_argument("--guest", default=os.environ.get("GUESTMEMFS_FLEET_GUEST", "linux"), choices=list(GUESTS),
                    help="the nested VMs: linux (vm1 the real guest with a disk and a NIC, vm2 the counting guest), "
                         "linux-novirtio (vm1 on an e1000 NIC, a sata disk and its agent on ttyS1: its kernel needs "
                         "them, e.g. GUESTMEMFS_GUEST_KERNEL_VARIANT=novirtio scripts/guest-kernel) "
                         "or counter (two counting guests); default $GUESTMEMFS_FLEET_GUEST or linux")
    pu.add_argument("--guest-kernel", default=os.environ.get("GUESTMEMFS_FLEET_GUEST_KERNEL") or None, help=kernel_help)
    sub.add_parser("down", help="stop the fleet")
    pp = sub.add_parser("provision", help="copy the nested test guest and its disks to every host (idempotent)")
    pp.add_argument("--kernel", default=os.environ.get("GUESTMEMFS_FLEET_GUEST_KERNEL") or None, help=kernel_help)
    sub.add_parser("status", help="show the fleet")
    sub.add_parser("watchdog", help="reset hosts whose boot stalls at GRUB's last line (`up` starts it)")
    sub.add_parser("inventory", help="print the inventory path")
    pk = sub.add_parser("kexec", help="kexec a host into its running kernel and time it to SSH")
    pk.add_argument("host")
    pr = sub.add_parser("record", help="record a host's kernel files as a unit-test fixture directory")
    pr.add_argument("host")
    pr.add_argument("dest")
    ps = sub.add_parser("ssh", help="run a command on a host")
    ps.add_argument("host")
    ps.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    try:
        if a.cmd == "image":
            print(build_image(force=a.force))
        elif a.cmd == "guest":
            print(build_guest(force=a.force, kernel=a.kernel))
        elif a.cmd == "up":
            if a.hosts < 1 or a.memory < 1024 or a.cpus < 1:
                raise FleetError("--hosts and --cpus must be >= 1 and --memory >= 1024 MiB")
            try:
                state = up(a.name, a.hosts, a.memory, a.cpus, a.base_port, a.timeout, a.accel, a.inventory,
                           a.backend, a.guest, a.guest_kernel)
            except FleetStillRunning:
                raise
            except BaseException:
                log("bring-up failed: stopping what was started")
                down(a.name)
                raise
            print(f"fleet '{a.name}' up: {len(state['hosts'])} hosts; inventory {state['inventory']}")
        elif a.cmd == "down":
            down(a.name)
        elif a.cmd == "watchdog":
            watch(a.name)
        elif a.cmd == "provision":
            state = load_state(a.name)
            if not state:
                raise FleetError(f"fleet '{a.name}' is not up")
            provision(state, build_guest(kernel=a.kernel))
        elif a.cmd == "status":
            return status(a.name)
        elif a.cmd == "inventory":
            state = load_state(a.name)
            if not state:
                raise FleetError(f"fleet '{a.name}' is not up")
            print(state["inventory"])
        elif a.cmd in ("ssh", "kexec", "record"):
            state = load_state(a.name)
            host = next((h for h in (state or {}).get("hosts", []) if h["name"] == a.host), None)
            if not host:
                raise FleetError(f"no host {a.host} in fleet '{a.name}'")
            if a.cmd == "kexec":
                print(json.dumps(kexec_roundtrip(state, host)))
                return 0
            if a.cmd == "record":
                for path, what in record(state, host, a.dest).items():
                    print(f"{path}: {what}")
                return 0
            return subprocess.call(ssh_base(state, host) + a.command)
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
