"""pmem's early mount: at boot the backend's filesystem is mounted as soon as the kernel has its
device, not once udev's coldplug reached it (issue 20), nor once systemd-modules-load ended. Its
unit's own shell loop runs here with mount, mountpoint and sleep injected on PATH and the kernel's
block devices a directory of the test's: nothing is mounted."""

import os
import shlex
import subprocess

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.pmem import PmemBackend
from test_unit_hardening import render

UNIT = "guestmemfs-pmem-mount.service"

# The devices the unit waits for are the backend's own (memory_backend makes the filesystem on them).
DEVICES = "/" + PmemBackend.block_devices


def exec_start(text, tries=None, devices=None):
    """The unit's ExecStart as argv, systemd's $$ unescaped; ``tries`` replaces its 4500, ``devices``
    the kernel's pmem block devices (a glob)."""
    line = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")][0][len("ExecStart="):]
    argv = shlex.split(line.replace("$$", "$"))
    if tries is not None:
        assert "-ge 4500" in argv[2]
        argv[2] = argv[2].replace("-ge 4500", "-ge %d" % tries)
    if devices is not None:
        assert argv[-1] == DEVICES
        argv[-1] = devices
    return argv


def devices(tmp_path, present=True):
    """A glob of the test's own for the kernel's pmem block devices, one there or none."""
    block = tmp_path / "block"
    block.mkdir()
    if present:
        (block / "pmem0").mkdir()
    return str(block / "pmem*")


def stubs(tmp_path, mounts_after, in_fstab=True):
    """mount fails (no device yet) until its ``mounts_after``-th call; mountpoint says what mount did;
    findmnt finds the mount point in fstab or not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mount").write_text('#!/bin/sh\necho "$@" >> %s/calls\nn=$(wc -l < %s/calls)\n'
                                   '[ "$n" -ge %d ] && touch %s/mounted && exit 0\n'
                                   'echo "mount: can\'t find UUID=1234" >&2; exit 32\n'
                                   % (tmp_path, tmp_path, mounts_after, tmp_path))
    (bin_dir / "mountpoint").write_text('#!/bin/sh\n[ -e %s/mounted ]\n' % tmp_path)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "findmnt").write_text('#!/bin/sh\n[ "$*" = "--fstab --mountpoint /mnt/vmmem" ] && exit %d; exit 2\n'
                                     % (0 if in_fstab else 1))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"]))


def calls(tmp_path):
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_the_unit_waits_for_nothing_but_its_device_and_only_at_boot():
    # Not after systemd-modules-load either: on the fleet /dev/pmem0 was there 9.4 s into the boot,
    # the module loader ended 10.5 s later (ndctl's modprobe hook), and every VM unit waits for this.
    text = render(UNIT, "pmem")
    deps = [ln for ln in text.splitlines() if ln.split("=")[0] in ("After", "Requires", "Wants", "BindsTo", "Before")]
    assert deps == ["Before=shutdown.target"]
    assert "DefaultDependencies=no" in text and "ConditionPathIsMountPoint=!/mnt/vmmem" in text
    assert text.rstrip().endswith("[Install]\nWantedBy=sysinit.target")
    assert exec_start(text)[:2] == ["/bin/sh", "-c"] and exec_start(text)[3:] == ["mount", "/mnt/vmmem", DEVICES]


def test_the_devices_it_waits_for_are_the_backends(monkeypatch):
    # One place says where pmem's block devices are: the backend (memory_backend makes the
    # filesystem there); the unit is rendered from it, not written twice.
    monkeypatch.setattr(PmemBackend, "block_devices", "sys/block/pmemtest*")
    assert exec_start(render(UNIT, "pmem"))[-1] == "/sys/block/pmemtest*"


def test_it_tries_no_mount_while_the_kernel_has_no_pmem_device(tmp_path):
    # Before the driver registered a device the loop costs a shell test and a sleep, no mount(8)
    # nor mountpoint(1) run (CPU of a host still booting).
    env = stubs(tmp_path, mounts_after=1)
    (tmp_path / "bin" / "mountpoint").write_text('#!/bin/sh\necho mountpoint >> %s/calls\nexit 1\n' % tmp_path)
    proc = subprocess.run(exec_start(render(UNIT, "pmem"), tries=5, devices=devices(tmp_path, present=False)),
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and calls(tmp_path) == []
    assert proc.stdout == "/mnt/vmmem: not mounted after 15 min, left to fstab\n"


def test_it_mounts_fstabs_entry_as_soon_as_mount_finds_the_device(tmp_path):
    env = stubs(tmp_path, mounts_after=4)
    proc = subprocess.run(exec_start(render(UNIT, "pmem"), devices=devices(tmp_path)), env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert calls(tmp_path) == ["/mnt/vmmem"] * 4  # by its mount point: fstab's UUID and options


def test_a_mount_already_there_is_left_alone(tmp_path):
    env = stubs(tmp_path, mounts_after=1)
    (tmp_path / "mounted").touch()
    proc = subprocess.run(exec_start(render(UNIT, "pmem"), devices=devices(tmp_path)), env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and calls(tmp_path) == []


def test_it_gives_up_saying_so_and_leaves_the_mount_to_fstab(tmp_path):
    env = stubs(tmp_path, mounts_after=10 ** 6)
    proc = subprocess.run(exec_start(render(UNIT, "pmem"), tries=5, devices=devices(tmp_path)), env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and len(calls(tmp_path)) == 5
    assert proc.stdout == "/mnt/vmmem: not mounted after 15 min, left to fstab\n"


def test_without_an_fstab_entry_it_ends_at_once(tmp_path):
    env = stubs(tmp_path, mounts_after=1, in_fstab=False)
    proc = subprocess.run(exec_start(render(UNIT, "pmem"), devices=devices(tmp_path)), env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and calls(tmp_path) == []
    assert proc.stdout == "/mnt/vmmem: not in /etc/fstab, nothing to mount\n"
