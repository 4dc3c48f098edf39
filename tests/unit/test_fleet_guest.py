"""The nested test guest's pure parts: module dependency order from modules.dep, the cpio writer."""

import shutil
import subprocess

import pytest

import fleet

DEP = """\
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/drivers/char/virtio_console.ko.xz:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz:
kernel/drivers/ata/ahci.ko.xz: kernel/drivers/ata/libahci.ko.xz kernel/drivers/ata/libata.ko.xz \
kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/ata/libahci.ko.xz: kernel/drivers/ata/libata.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz \
kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/ata/libata.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/scsi/sd_mod.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz: kernel/drivers/scsi/scsi_common.ko.xz
kernel/drivers/scsi/scsi_common.ko.xz:
"""


def test_modules_come_after_their_dependencies_once_each():
    order = fleet.resolve_modules(DEP, fleet.GUEST_MODULES)
    names = [fleet.module_name(p) for p in order]
    assert sorted(names) == sorted(["virtio_blk", "virtio_net", "net_failover", "failover", "crc32c_generic",
                                    "ext4", "crc16", "mbcache", "jbd2", "virtio_console",
                                    # the guest without virtio devices (--guest linux-novirtio)
                                    "e1000", "ahci", "libahci", "libata", "sd_mod", "scsi_mod", "scsi_common"])
    assert len(names) == len(set(names))
    for user, deps in [("ext4", ["crc16", "mbcache", "jbd2"]), ("virtio_net", ["net_failover", "failover"]),
                       ("net_failover", ["failover"]), ("ahci", ["libahci", "libata", "scsi_mod"]),
                       ("sd_mod", ["scsi_mod", "scsi_common"])]:
        assert all(names.index(d) < names.index(user) for d in deps), (user, names)


def test_order_does_not_trust_the_listing_order():
    # virtio_net lists net_failover first, but net_failover itself needs failover: failover first.
    names = [fleet.module_name(p) for p in fleet.resolve_modules(DEP, ["virtio_net"])]
    assert names == ["failover", "net_failover", "virtio_net"]


def test_dash_and_underscore_are_one_name():
    assert fleet.module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz") == "crc32c_intel"
    assert fleet.resolve_modules(DEP, ["crc32c-intel"]) == ["kernel/arch/x86/crypto/crc32c-intel.ko.xz"]


def test_missing_module_and_cycle_are_clear_errors():
    with pytest.raises(fleet.FleetError, match="nosuch.*not in modules.dep"):
        fleet.resolve_modules(DEP, ["nosuch"])
    with pytest.raises(fleet.FleetError, match="needed by ext4"):
        fleet.resolve_modules("kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n", ["ext4"])
    with pytest.raises(fleet.FleetError, match="cycle: a -> b -> a"):
        fleet.resolve_modules("a.ko: b.ko\nb.ko: a.ko\n", ["a"])


def test_a_module_built_into_the_kernel_is_not_loaded():
    # Debian's 6.12 builds virtio_console in: modules.builtin names it, modules.dep does not (seen:
    # every fleet without a guest kernel of its own failed to come up).
    dep = DEP.replace("kernel/drivers/char/virtio_console.ko.xz:\n", "")
    builtin = "kernel/drivers/char/virtio_console.ko\nkernel/drivers/virtio/virtio_pci.ko\n"
    names = [fleet.module_name(p) for p in fleet.resolve_modules(dep, fleet.GUEST_MODULES, builtin)]
    assert "virtio_console" not in names and "ext4" in names
    with pytest.raises(fleet.FleetError, match="virtio_console.*not in modules.dep"):
        fleet.resolve_modules(dep, fleet.GUEST_MODULES)


def parse_newc(data):
    """A reader for the writer's output, independent of it: [(name, mode, rdev, body)]."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", pos
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, f[1], (f[9], f[10]), body))


def build_sample():
    c = fleet.Cpio()
    c.dir("bin")
    c.dir("dev")
    c.chardev("dev/console", 5, 1)
    c.file("init", b"#!/bin/busybox sh\n", 0o755)
    c.file("bin/odd", b"12345")  # a size that needs padding
    c.symlink("bin/sh", "busybox")
    return c.finish()


def test_cpio_entries_roundtrip_with_alignment():
    entries = parse_newc(build_sample())
    assert [(n, oct(m)) for n, m, _r, _b in entries] == [
        ("bin", "0o40755"), ("dev", "0o40755"), ("dev/console", "0o20600"), ("init", "0o100755"),
        ("bin/odd", "0o100644"), ("bin/sh", "0o120777")]
    assert entries[2][2] == (5, 1)
    assert entries[4][3] == b"12345" and entries[5][3] == b"busybox"


def test_cpio_is_reproducible():
    assert build_sample() == build_sample()


@pytest.mark.skipif(not shutil.which("cpio"), reason="no cpio tool")
def test_cpio_tool_reads_it():
    r = subprocess.run(["cpio", "-t", "--quiet"], input=build_sample(), capture_output=True, check=True)
    assert r.stdout.decode().split() == ["bin", "dev", "dev/console", "init", "bin/odd", "bin/sh"]


@pytest.mark.skipif(not shutil.which("gcc"), reason="gcc builds the guest's programs")
@pytest.mark.parametrize("prog", ["init", "workload", "qga"])
def test_the_guest_programs_build_with_the_fleets_command_and_no_warning(tmp_path, prog):
    cmd = fleet.guest_cc(fleet.os.path.join(fleet.GUEST_DIR, prog + ".c"), str(tmp_path / prog))
    r = subprocess.run(cmd + ["-Werror"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
