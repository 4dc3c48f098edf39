"""The guestmemfs RFC's KHO v2 handover: the device tree it serialises (recorded from a real round
trip, tests/unit/fixtures/guestmemfs-kho/README), what facts report from it, the kho_handover
module's order rules (activate only with guestmemfs mounted and no kernel loaded; abort only with
none loaded) and the kexec preflight's refusal to load before the activation."""

import os
import shutil

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts, fdt, kho
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kexec, kho_handover
from conftest import FIXTURES, run_main

GM_HOST = os.path.join(FIXTURES, "guestmemfs-host")
KHO = os.path.join(FIXTURES, "guestmemfs-kho")
REGION = {"base": 0x36C00000, "bytes": 0x4000000, "flags": 1}  # "Reclaimed [36c00000 + 4000000] via KHO"


def dtb(name="kernel-kho-dt.dtb"):
    with open(os.path.join(KHO, name), "rb") as fh:
        return fh.read()


def test_the_recorded_handover_parses():
    tree = fdt.parse(dtb())
    assert fdt.string(tree["props"]["compatible"]) == "kho-v1"
    gm = tree["children"]["guestmemfs"]
    assert fdt.string(gm["props"]["compatible"]) == "guestmemfs-v1"
    assert sorted(gm["children"]) == ["fs_mem", "mappings_blocks", "mappings_to_inode", "superblock"]
    assert fdt.ranges(gm["children"]["fs_mem"]["props"]["mem"]) == [(0x36C00001, 0x4000000)]
    assert fdt.ranges(gm["children"]["superblock"]["props"]["mem"]) == [
        (0x332E80, 0x28), (0x600000, 0x200000), (0x800000, 0x100000)]
    assert fdt.u64s(gm["children"]["mappings_to_inode"]["props"]["num_inodes"]) == [1]
    # What the new kernel found is what the old one serialised.
    assert dtb("firmware-kho-dt.dtb") == dtb()


@pytest.mark.parametrize("blob,why", [
    (b"", "shorter than a device tree header"),
    (b"\0" * 64, "no device tree magic"),
    (None, "cut short"),
])
def test_a_broken_handover_is_refused(blob, why):
    with pytest.raises(fdt.FdtError, match=why):
        fdt.parse(dtb()[:200] if blob is None else blob)


def host(tmp_path, active=False, loaded=False, mounted=True, incoming=False):
    root = tmp_path / "host"
    shutil.copytree(GM_HOST, str(root))
    (root / "sys/kernel/kho/active").write_text("1\n" if active else "0\n")
    (root / "sys/kernel/kexec_loaded").write_text("1\n" if loaded else "0\n")
    if active:
        (root / "sys/kernel/kho/dt").write_bytes(dtb())
    if incoming:
        (root / "sys/firmware/kho").mkdir(parents=True)
        (root / "sys/firmware/kho/dt").write_bytes(dtb("firmware-kho-dt.dtb"))
        (root / "proc/cmdline").write_text("console=ttyS0 panic=-1 gmfs_stage=2\n")
    if not mounted:
        (root / "proc/self/mounts").write_text("/dev/root / ext2 rw 0 0\n")
    return root


def test_facts_report_what_the_handover_carries(tmp_path):
    cold = facts.gather(str(host(tmp_path / "a")))["kho"]
    assert cold["interface"] == "rfc" and cold["active"] is False and cold["scratch_len"] == "0x4000000"
    assert "handover" not in cold and cold["incoming"] is False
    active = facts.gather(str(host(tmp_path / "b", active=True)))["kho"]
    assert active["handover"] == {"path": "/sys/kernel/kho/dt", "bytes": 426, "compatible": "kho-v1",
                                  "nodes": ["guestmemfs"], "guestmemfs": {"regions": [REGION], "num_inodes": 1}}
    after = facts.gather(str(host(tmp_path / "c", incoming=True)))["kho"]
    assert after["incoming"] is True and after["incoming_evidence"] == "/sys/firmware/kho/dt"
    assert after["incoming_handover"]["guestmemfs"] == {"regions": [REGION], "num_inodes": 1}


def run(capsys, args):
    return run_main(capsys, kho_handover, args)


def test_activation_writes_1_once_and_reports_the_blob(tmp_path, capsys):
    root = host(tmp_path)
    args = {"root": str(root), "mount_point": "/mnt/guestmemfs"}
    rc, out = run(capsys, dict(args, _ansible_check_mode=True))
    assert rc == 0 and out["changed"] and out["active"] is True
    assert (root / "sys/kernel/kho/active").read_text() == "0\n"
    rc, out = run(capsys, args)
    assert rc == 0 and out["changed"] and (root / "sys/kernel/kho/active").read_text() == "1"
    # The kernel writes the blob on activation; here it is the recorded one.
    (root / "sys/kernel/kho/dt").write_bytes(dtb())
    rc, out = run(capsys, args)
    assert rc == 0 and not out["changed"] and out["active"] and out["dt_bytes"] == 426


def test_activation_is_refused_unmounted_or_after_a_load(tmp_path, capsys):
    root = host(tmp_path / "a", mounted=False)
    rc, out = run(capsys, {"root": str(root)})
    assert rc == 1 and "guestmemfs is not mounted at /mnt/guestmemfs" in out["msg"]
    assert (root / "sys/kernel/kho/active").read_text() == "0\n"
    root = host(tmp_path / "b", loaded=True)
    rc, out = run(capsys, {"root": str(root)})
    assert rc == 1 and "carries no handover" in out["msg"] and "kexec -u" in out["msg"]
    assert (root / "sys/kernel/kho/active").read_text() == "0\n"


def test_abort_writes_0_only_with_no_kernel_loaded(tmp_path, capsys):
    root = host(tmp_path / "a", active=True, loaded=True)
    rc, out = run(capsys, {"root": str(root), "state": "inactive"})
    assert rc == 1 and "unload it (kexec -u) before aborting" in out["msg"] and out["active"] is True
    root = host(tmp_path / "b", active=True)
    rc, out = run(capsys, {"root": str(root), "state": "inactive"})
    assert rc == 0 and out["changed"] and out["active"] is False
    assert (root / "sys/kernel/kho/active").read_text() == "0"


def test_mainline_kho_is_refused(tmp_path, capsys):
    rc, out = run(capsys, {"root": os.path.join(FIXTURES, "luo-host")})
    assert rc == 1 and "no KHO v2 interface" in out["msg"]


class _Module:
    def __init__(self, **params):
        self.params = params

    def get_bin_path(self, name):
        return "/sbin/" + name


def test_kexec_refuses_to_load_for_guestmemfs_before_the_activation(tmp_path):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"")
    initrd.write_bytes(b"")
    module = _Module(kernel=str(kernel), initrd=str(initrd), path="/mnt/guestmemfs")
    backend = get_backend("guestmemfs")
    before = facts.gather(str(host(tmp_path / "a")), mount_point="/mnt/guestmemfs")
    problems = kexec.preflight(module, backend, before)
    assert any(p.startswith("KHO is not active: activate the handover first") for p in problems), problems
    after = facts.gather(str(host(tmp_path / "b", active=True)), mount_point="/mnt/guestmemfs")
    assert not any("KHO" in p for p in kexec.preflight(module, backend, after))


def test_recorded_fleet_host_before_and_after_the_activation():
    # A fleet host on the RFC kernel with two 256 MiB VMs on guestmemfs (fixtures' READMEs).
    cold = facts.gather(os.path.join(FIXTURES, "guestmemfs-fleet-host"), mount_point="/mnt/vmmem")
    assert cold["kernel_release"] == "6.12.117-gmfs1" and cold["guestmemfs_fs"] is True
    assert cold["cmdline"]["options"]["guestmemfs"] == ["640M"] and cold["cmdline"]["options"]["kho_scratch"] == ["256M"]
    assert cold["backend_mount"]["mounted"] and cold["backend_mount"]["fstype"] == "guestmemfs"
    assert cold["kho"]["interface"] == "rfc" and cold["kho"]["active"] is False
    assert cold["kho"]["scratch_len"] == "0x10000000" and "handover" not in cold["kho"]
    for opt in ("CONFIG_GUESTMEMFS_FS", "CONFIG_KEXEC_KHO", "CONFIG_FTRACE_KHO", "CONFIG_KEXEC_FILE"):
        assert cold["kernel_config"][opt] == "y", opt
    active = facts.gather(os.path.join(FIXTURES, "guestmemfs-fleet-host-active"), mount_point="/mnt/vmmem")["kho"]
    assert active["active"] is True
    assert active["handover"]["bytes"] == 442 and active["handover"]["guestmemfs"] == {
        "regions": [{"base": 0x135C00000, "bytes": 640 * 2**20, "flags": 1}], "num_inodes": 2}


# ------------------------------------------------ does guestmemfs have a region on this boot?
# The RFC mounts even when guestmemfs= could not be reserved (seen on a KASLR boot: "Failed to alloc
# 2306867200 bytes for guestmemfs"); its files then map physical memory from address 0.

FLEET = os.path.join(FIXTURES, "guestmemfs-fleet-host")


def fleet_tree(tmp_path, cmdline=None, memtotal_kb=None, kmsg=None, firmware_dt=False):
    root = tmp_path / "host"
    shutil.copytree(FLEET, root)
    if cmdline is not None:
        (root / "proc/cmdline").write_text(cmdline + "\n")
    if memtotal_kb is not None:
        text = (root / "proc/meminfo").read_text().splitlines()
        (root / "proc/meminfo").write_text("\n".join(
            "MemTotal:       %d kB" % memtotal_kb if line.startswith("MemTotal:") else line for line in text) + "\n")
    if kmsg is not None:
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev/kmsg").write_text(kmsg)
    if firmware_dt:
        (root / "sys/firmware/kho").mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(KHO, "firmware-kho-dt.dtb"), root / "sys/firmware/kho/dt")
    return root


def test_recorded_cold_boot_has_its_region_reserved():
    # MemTotal 3385660 kB against 4095.6 MiB of System RAM in /proc/iomem: the 640 MiB are missing.
    f = facts.gather(FLEET, mount_point="/mnt/vmmem")
    assert f["guestmemfs_region"]["state"] == "reserved" and f["guestmemfs_region"]["bytes"] == 640 * 2**20
    assert kho.iomem_ram_bytes(FLEET) == 0x9EC00 + 0x7FEDC000 + 0x80000000
    assert kho.guestmemfs_region_refusal(FLEET) is None


def test_region_missing_when_memtotal_still_counts_it(tmp_path):
    # What the failed reservation leaves: MemTotal near the whole RAM.
    root = fleet_tree(tmp_path, memtotal_kb=3900000)
    region = facts.gather(str(root))["guestmemfs_region"]
    assert region["state"] == "missing" and "was not reserved" in region["evidence"]
    assert "from address 0" in kho.guestmemfs_region_refusal(str(root))


def test_region_missing_when_the_kernel_log_says_so(tmp_path):
    line = "4,212,0,-;guestmemfs: guestmemfs: Failed to alloc 671088640 bytes for guestmemfs\n"
    root = fleet_tree(tmp_path, kmsg="6,1,0,-;Linux version 6.12.117-gmfs1\n" + line)
    region = facts.gather(str(root))["guestmemfs_region"]
    assert region["state"] == "missing" and "Failed to alloc 671088640 bytes" in region["evidence"]


def test_region_handed_over_after_a_kho_kexec(tmp_path):
    # The kexec's cmdline has no guestmemfs=: the region comes with the handover.
    root = fleet_tree(tmp_path, cmdline="console=ttyS0,115200 root=/dev/vda1", firmware_dt=True)
    region = facts.gather(str(root))["guestmemfs_region"]
    assert region == {"state": "handed_over", "bytes": REGION["bytes"],
                      "evidence": "the KHO handover (/sys/firmware/kho/dt) carries the region"}
    assert kho.guestmemfs_region_refusal(str(root)) is None


def test_no_region_without_guestmemfs_or_handover(tmp_path):
    root = fleet_tree(tmp_path, cmdline="console=ttyS0,115200 root=/dev/vda1")
    assert facts.gather(str(root))["guestmemfs_region"]["state"] == "none"
    assert kho.guestmemfs_region_refusal(str(root)).startswith("guestmemfs has no region of its own on this boot (none")


def test_memory_backend_refuses_to_mount_without_a_region(tmp_path, capsys):
    from ansible_collections.guestmemfs.liveupdate.plugins.modules import memory_backend
    root = fleet_tree(tmp_path, memtotal_kb=3900000)
    (root / "proc/self/mounts").write_text("/dev/vda1 / ext4 rw 0 0\n")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/fstab").write_text("# fstab\n")
    rc, out = run_main(capsys, memory_backend, {"backend": "guestmemfs", "path": "/mnt/vmmem", "root": str(root)})
    assert rc == 1 and out["msg"].startswith("not mounting /mnt/vmmem: guestmemfs has no region") and not out["changed"]
    assert (root / "etc/fstab").read_text() == "# fstab\n"


def test_recorded_host_after_its_live_update():
    # The same fleet host after playbooks/liveupdate.yml kexeced it into -gmfs2 (fixture README).
    root = os.path.join(FIXTURES, "guestmemfs-fleet-host-kexec")
    f = facts.gather(root, mount_point="/mnt/vmmem")
    assert f["kernel_release"] == "6.12.117-gmfs2"
    assert not [a for a in f["cmdline"]["args"] if a.startswith(("guestmemfs=", "kho_scratch="))]
    handover = f["kho"]
    assert handover["interface"] == "rfc" and handover["active"] is False and handover["incoming"] is True
    assert handover["scratch_len"] == "0x10000000"  # inherited: the next update can activate again
    assert handover["incoming_handover"]["bytes"] == 442 and handover["incoming_handover"]["guestmemfs"] == {
        "regions": [{"base": 0x153600000, "bytes": 640 * 2**20, "flags": 1}], "num_inodes": 2}
    assert f["guestmemfs_region"]["state"] == "handed_over" and f["guestmemfs_region"]["bytes"] == 640 * 2**20
    assert kho.guestmemfs_region_refusal(root) is None
    log = kho.kernel_log(root)
    assert "Reclaimed [153600000 + 28000000] via KHO" in log and "Restored super block from KHO" in log
    assert f["backend_mount"]["mounted"] and f["backend_mount"]["fstype"] == "guestmemfs"


def test_vm_runs_only_on_a_file_of_its_size(tmp_path):
    # After a cold boot the region starts empty; QEMU would create the file itself with no blocks.
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import guestmemfs as guestmemfs_backend
    path = tmp_path / "vm1.ram"
    vm = cpr.VM({"name": "vm1", "memory_bytes": 4 << 20, "mem_path": str(path)})
    assert "is missing" in guestmemfs_backend.file_refusal(vm)
    assert not path.exists()
    path.write_bytes(b"")
    msg = guestmemfs_backend.file_refusal(vm)
    assert "has 0 bytes, not the VM's 4194304 bytes" in msg and "run the prepare playbook" in msg
    os.truncate(path, 4 << 20)
    assert guestmemfs_backend.file_refusal(vm) is None
