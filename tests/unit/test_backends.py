"""The memory backends' commands and paths, the fstab edits, and the modules that mount the
backend and make the VM memory files, on copied host trees (pmem's mkfs/mount run in the fleet)."""

import json
import os
import shutil
import threading
import time

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import fstab, journal, memfd_holder
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend, luo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import gather
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import GiB, MiB
from ansible_collections.guestmemfs.liveupdate.plugins.modules import memory_backend, vm_memory

from conftest import FIXTURES

GM_HOST = os.path.join(FIXTURES, "guestmemfs-host")


def run(capsys, module, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            module.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------ guestmemfs

def test_guestmemfs_interface():
    b = get_backend("guestmemfs")
    assert b.cmdline_args(512 * MiB) == ["guestmemfs=512M", "kho_scratch=256M"]
    assert b.cmdline_args(512 * MiB, kho_scratch="64M") == ["guestmemfs=512M", "kho_scratch=64M"]
    with pytest.raises(BackendError, match="one size, a multiple of 2 MiB and at least 16M"):
        b.cmdline_args(512 * MiB, kho_scratch="64M,512M,256M")
    assert b.mount_spec("/mnt/guestmemfs") == ("guestmemfs", "guestmemfs", "defaults")
    assert b.fstype == "guestmemfs" and b.file_size(3 * MiB) == 4 * MiB
    assert ("CONFIG_FTRACE_KHO",) in b.required_kernel_options
    with pytest.raises(BackendError, match="multiple of 2 MiB"):
        b.cmdline_args(3 * MiB)


def test_guestmemfs_next_kernel_drops_its_carveout():
    # The region rides the KHO handover; guestmemfs= again would carve a second one.
    # The scratch area rides it too: the recorded kexec booted without kho_scratch= and still had
    # scratch_len 0x4000000 (fixtures/guestmemfs-kho/sys-kernel-kho.txt).
    running = ["console=ttyS0", "guestmemfs=512M", "kho_scratch=256M", "nokaslr"]
    assert get_backend("guestmemfs").next_kernel_args(running) == ["console=ttyS0", "nokaslr"]


def test_pmem_next_kernel_keeps_memmap():
    # Without memmap= the next kernel treats the region as RAM and overwrites it.
    running = ["root=/dev/vda1", "memmap=640M!5504M"]
    assert get_backend("pmem").next_kernel_args(running) == running


def test_guestmemfs_host_facts():
    f = gather(GM_HOST, mount_point="/mnt/guestmemfs")
    assert f["guestmemfs_fs"] is True
    assert f["kho"]["interface"] == "rfc" and f["kho"]["active"] is False
    assert f["cmdline"]["options"]["guestmemfs"] == ["64M"] and f["cmdline"]["options"]["kho_scratch"] == ["64M"]
    m = f["backend_mount"]
    assert m["mounted"] and m["fstype"] == "guestmemfs" and m["source"] == "guestmemfs"


def gm_tree(tmp_path, mounted=True):
    root = tmp_path / "host"
    shutil.copytree(GM_HOST, root)
    (root / "mnt" / "guestmemfs").mkdir(parents=True)
    if not mounted:
        (root / "proc/self/mounts").write_text("/dev/root / ext2 rw 0 0\n")
    return root


def test_memory_backend_guestmemfs_mounted_adds_fstab_then_idempotent(tmp_path, capsys):
    root = gm_tree(tmp_path)
    args = {"backend": "guestmemfs", "path": "/mnt/guestmemfs", "root": str(root), "_ansible_diff": True}
    rc, out = run(capsys, memory_backend, args)
    assert rc == 0 and out["changed"] and out["mounted"] and out["mkfs"] is False
    assert (root / "etc/fstab").read_text().endswith("guestmemfs /mnt/guestmemfs guestmemfs nofail 0 0\n")
    assert "guestmemfs /mnt/guestmemfs" in out["diff"]["after"]
    rc, out = run(capsys, memory_backend, args)
    assert rc == 0 and out["changed"] is False


@pytest.mark.parametrize("state", ["unmounted", "absent"])
def test_memory_backend_never_unmounts_guestmemfs(tmp_path, capsys, state):
    # Measured on the RFC kernel: after a lookup by path the umount spins forever, then sync hangs.
    root = gm_tree(tmp_path)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/fstab").write_text("guestmemfs /mnt/guestmemfs guestmemfs nofail 0 0\n")
    rc, out = run(capsys, memory_backend, {"backend": "guestmemfs", "path": "/mnt/guestmemfs", "root": str(root),
                                           "state": state})
    assert rc == 1 and out["msg"].startswith("not unmounting /mnt/guestmemfs: the guestmemfs RFC's umount never returns")
    assert (root / "etc/fstab").read_text() == "guestmemfs /mnt/guestmemfs guestmemfs nofail 0 0\n"


def test_memory_backend_guestmemfs_check_mode_mounts_nothing(tmp_path, capsys):
    root = gm_tree(tmp_path, mounted=False)
    args = {"backend": "guestmemfs", "path": "/mnt/guestmemfs", "root": str(root), "_ansible_check_mode": True}
    rc, out = run(capsys, memory_backend, args)
    assert rc == 0 and out["changed"]
    assert (root / "etc/fstab").read_text() == "\n"


def test_memory_backend_refuses_another_fs_at_the_path(tmp_path, capsys):
    root = gm_tree(tmp_path)
    (root / "proc/self/mounts").write_text("tmpfs /mnt/guestmemfs tmpfs rw 0 0\n")
    rc, out = run(capsys, memory_backend, {"backend": "guestmemfs", "path": "/mnt/guestmemfs", "root": str(root)})
    assert rc == 1 and "already mounted with tmpfs" in out["msg"]
    assert (root / "etc/fstab").read_text() == "\n"


def test_memory_backend_pmem_without_device_says_reboot(tmp_path, capsys):
    root = gm_tree(tmp_path)
    rc, out = run(capsys, memory_backend, {"backend": "pmem", "path": "/mnt/vmmem", "root": str(root)})
    assert rc == 1 and "no /dev/pmem* device" in out["msg"] and "memmap=" in out["msg"]


# ------------------------------------------------------------------ luo

def test_luo_interface():
    b = get_backend("luo")
    assert b.has_filesystem is False and b.carves_out is False and b.fstype is None
    assert b.size_align == 4096 and b.file_size(3 * MiB + 1) == 3 * MiB + 4096
    assert b.max_file_bytes == (2 ** 32 - 1) * 4096  # memfd_luo refuses more pages (EFBIG)
    assert [o[0] for o in b.required_kernel_options] == ["CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE",
                                                         "CONFIG_LIVEUPDATE_MEMFD", "CONFIG_KEXEC_FILE"]
    assert b.cmdline_args(8 * GiB) == ["kho=on", "liveupdate=on"]
    assert b.cmdline_args(0, kho_scratch="150%") == ["kho=on", "liveupdate=on", "kho_scratch=150%"]
    assert [a for a in ["kho=on", "liveupdate=on", "kho_scratch=1G,1G,1G", "khotest", "memmap=1G!4G"]
            if b.owns_arg(a)] == ["kho=on", "liveupdate=on", "kho_scratch=1G,1G,1G"]
    with pytest.raises(BackendError, match="use N% or three sizes"):
        b.cmdline_args(GiB, kho_scratch="lots")
    with pytest.raises(BackendError, match="has no filesystem to mount"):
        b.mount_spec("/mnt/vmmem")


def test_luo_next_kernel_keeps_its_flags_and_everything_else():
    running = ["BOOT_IMAGE=/vmlinuz", "console=ttyS0", "kho=on", "liveupdate=on", "kho_scratch=64M,512M,256M"]
    assert get_backend("luo").next_kernel_args(running) == running


def test_luo_overhead_is_the_folio_records():
    # 16 bytes preserved + 8 bytes while preserving, per 4 KiB page.
    assert get_backend("luo").overhead_bytes(GiB) == GiB // 4096 * 24


@pytest.mark.parametrize("args,expected", [
    ([], False), (["kho=on"], True), (["kho=1"], True), (["kho=yes"], True), (["kho=off"], False),
    (["kho=on", "kho=off"], False), (["kho=on", "kho"], True), (["kho=on", "kho=maybe"], True),
    (["kho=o"], False), (["khoo=on"], False),
])
def test_luo_flag_reads_like_kstrtobool(args, expected):
    assert luo.flag(args, "kho") is expected


def test_luo_flag_default_comes_from_the_caller():
    # CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y turns KHO on without kho=on.
    assert luo.flag([], "kho", default=True) is True and luo.flag(["kho=0"], "kho", default=True) is False


@pytest.mark.parametrize("value,parsed", [
    ("200%", ("scale", 200)), ("64M,512M,256M", ("sizes", (64 * MiB, 512 * MiB, 256 * MiB))),
    ("0x1000000,1g,0", ("sizes", (16 * MiB, GiB, 0))), ("010,0,0", ("sizes", (8, 0, 0))),
])
def test_luo_parse_kho_scratch(value, parsed):
    assert luo.parse_kho_scratch(value) == parsed


@pytest.mark.parametrize("value", ["", "%", "-5%", "1.5G,1G,1G", "1G,1G", "1G,1G,1G,1G", "1G 1G 1G", "0,0,0",
                                   "0%", "08,0,0", "1X,1G,1G"])
def test_luo_parse_kho_scratch_refuses_what_the_kernel_ignores(value):
    with pytest.raises(ValueError):
        luo.parse_kho_scratch(value)


def test_luo_scratch_areas_follow_kho_reserve_scratch():
    # Default 200%: lowmem from the reservations below 4 GiB, global the rest, one area per node;
    # each rounded up to 4 MiB.
    a = luo.scratch_areas(None, reserved=100 * MiB, reserved_low=30 * MiB, node_reserved=[70 * MiB, 30 * MiB])
    assert a == {"lowmem": 60 * MiB, "global": 140 * MiB, "nodes": [140 * MiB, 60 * MiB], "total": 400 * MiB}
    a = luo.scratch_areas(("scale", 50), reserved=10 * MiB, reserved_low=3 * MiB, node_reserved=[10 * MiB])
    assert a == {"lowmem": 4 * MiB, "global": 4 * MiB, "nodes": [8 * MiB], "total": 16 * MiB}
    a = luo.scratch_areas(("sizes", (MiB, 100 * MiB, 0)), node_reserved=[0, 0, 0])
    assert a == {"lowmem": 4 * MiB, "global": 100 * MiB, "nodes": [0, 0, 0], "total": 104 * MiB}


def test_luo_scratch_estimate_matches_the_measured_vm():
    # A 1 GiB q35 VM under the collection's 7.3 kernel had 312 MiB of scratch.
    ranges = [[0, 0x9FBFF], [0x100000, GiB - 1]]
    total = get_backend("luo").scratch(GiB, ranges)["total"]
    assert 312 * MiB <= total <= 312 * MiB + 16 * MiB


def test_luo_has_nothing_to_mount(tmp_path, capsys):
    root = gm_tree(tmp_path)
    rc, out = run(capsys, memory_backend, {"backend": "luo", "path": "/mnt/vmmem", "root": str(root)})
    assert rc == 1 and "luo backend has nothing to mount" in out["msg"] and "agent" in out["msg"]
    assert (root / "etc/fstab").read_text() == "\n"
    assert not (root / "mnt" / "vmmem").exists()


def test_luo_memfds_need_the_holder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memfd_holder, "SOCKET", str(tmp_path / "absent.sock"))
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "vm1", "memory": "2M"}], backend="luo"))
    assert rc == 1 and "cannot reach the memfd holder" in out["msg"] and "guestmemfs-luo" in out["msg"]
    assert os.listdir(tmp_path) == []


def test_luo_memfds_through_a_real_holder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    sock = str(tmp_path / "luo.sock")
    monkeypatch.setattr(memfd_holder, "SOCKET", sock)
    holder = memfd_holder.Holder(dev_path=str(tmp_path / "none"), link_dir=str(tmp_path / "luo"), store=False)
    threading.Thread(target=memfd_holder.serve, args=(holder,), daemon=True).start()
    for _i in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    vms = [{"name": "vm1", "memory": "3M"}, {"name": "vm2", "memory": 10000}]
    rc, out = run(capsys, vm_memory, dict(backend="luo", vms=vms, _ansible_check_mode=True))
    assert rc == 0 and out["changed"] and holder.vms == {}
    rc, out = run(capsys, vm_memory, dict(backend="luo", vms=vms))
    assert rc == 0 and out["changed"], out
    assert [(f["name"], f["size_bytes"], f["action"]) for f in out["files"]] == [
        ("vm1", 3 << 20, "create"), ("vm2", 12288, "create")]
    assert os.fstat(holder.vms["vm2"]).st_size == 12288
    rc, out = run(capsys, vm_memory, dict(backend="luo", vms=vms))
    assert rc == 0 and not out["changed"]
    rc, out = run(capsys, vm_memory, dict(backend="luo", vms=[{"name": "vm1", "memory": "4M"}]))
    assert rc == 1 and "not resized in place" in out["msg"]
    assert os.fstat(holder.vms["vm1"]).st_size == 3 << 20
    for fd in holder.vms.values():
        os.close(fd)


# ------------------------------------------------------------------ pmem placement

def test_pmem_placement_is_section_aligned_top_of_highest_range():
    b = get_backend("pmem")
    ranges = [[0, 0x9FBFF], [0x100000, 0x7FFDBFFF], [4 * GiB, 6 * GiB - 1]]
    assert b.cmdline_args(640 * MiB, ranges) == ["memmap=640M!5504M"]
    assert b.place(GiB, ranges + [[8 * GiB, 9 * GiB + 100 * MiB]]) == 8 * GiB
    assert b.parse_memmap("640M!5504M") == (640 * MiB, 5504 * MiB)
    assert b.parse_memmap("64M$0x10000000") is None
    with pytest.raises(BackendError, match="multiple of 128 MiB"):
        b.cmdline_args(100 * MiB, ranges)


# ------------------------------------------------------------------ fstab

def test_fstab_set_replace_remove_keep_comments():
    text = "# /etc/fstab\nUUID=a / ext4 errors=remount-ro 0 1\n/dev/pmem0 /mnt/vmmem ext4 dax 0 0\n"
    new = fstab.set_entry(text, "UUID=b", "/mnt/vmmem", "ext4", "dax,noatime")
    assert new == "# /etc/fstab\nUUID=a / ext4 errors=remount-ro 0 1\nUUID=b /mnt/vmmem ext4 dax,noatime 0 0\n"
    assert fstab.set_entry(new, "UUID=b", "/mnt/vmmem/", "ext4", "dax,noatime") == new
    assert fstab.find(new, "/mnt/vmmem")[0] == "UUID=b"
    assert fstab.remove_entry(new, "/mnt/vmmem") == "# /etc/fstab\nUUID=a / ext4 errors=remount-ro 0 1\n"
    added = fstab.set_entry("UUID=a / ext4 defaults 0 1", "guestmemfs", "/mnt/g", "guestmemfs", "nofail", "note")
    assert added == "UUID=a / ext4 defaults 0 1\n# note\nguestmemfs /mnt/g guestmemfs nofail 0 0\n"


# ------------------------------------------------------------------ VM memory files (real files)

def vm_args(path, vms, backend="guestmemfs", **kw):
    return dict(backend=backend, path=str(path), vms=vms, require_mounted=False, **kw)


def test_vm_memory_creates_grows_and_is_idempotent(tmp_path, capsys):
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "vm1", "memory": "3M"}, {"name": "vm2", "memory": 4096}]))
    assert rc == 0 and out["changed"]
    assert [(f["name"], f["action"], f["size_bytes"]) for f in out["files"]] == [("vm1", "create", 4 * MiB),
                                                                                 ("vm2", "create", 2 * MiB)]
    assert os.path.getsize(tmp_path / "vm1.ram") == 4 * MiB
    assert oct(os.stat(tmp_path / "vm1.ram").st_mode & 0o777) == "0o600"
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "vm1", "memory": "3M"}, {"name": "vm2", "memory": 4096}]))
    assert rc == 0 and out["changed"] is False
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "vm1", "memory": "6M"}]))
    assert rc == 0 and out["files"][0]["action"] == "grow" and os.path.getsize(tmp_path / "vm1.ram") == 6 * MiB


def test_vm_memory_pmem_prewrites_blocks(tmp_path, capsys):
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "a", "memory": "2M"}], backend="pmem"))
    assert rc == 0
    assert os.stat(tmp_path / "a.ram").st_blocks * 512 >= 2 * MiB  # allocated, not sparse


def test_vm_memory_check_mode_writes_nothing(tmp_path, capsys):
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "vm1", "memory": "2M"}], _ansible_check_mode=True))
    assert rc == 0 and out["changed"] and not (tmp_path / "vm1.ram").exists()


@pytest.mark.parametrize("vms,msg", [
    ([{"name": "big", "memory": "64T"}], "need"),
    ([{"name": "vm1", "memory": "1M"}, {"name": "vm1", "memory": "1M"}], "listed twice"),
    ([{"name": "../x", "memory": "1M"}], "a VM name is"),
    ([{"name": "vm1", "memory": "lots"}], "not a size"),
    ([{"name": "vm1", "memory": 0}], "more than 0"),
    ([{"name": "huge", "memory": "2G"}], "above the guestmemfs backend's 1.0 GiB per file"),
])
def test_vm_memory_refuses_and_changes_nothing(tmp_path, capsys, vms, msg):
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, vms))
    assert rc == 1 and msg in out["msg"]
    assert os.listdir(tmp_path) == []


def test_vm_memory_never_shrinks(tmp_path, capsys):
    (tmp_path / "vm1.ram").write_bytes(b"\1" * (4 * MiB))
    rc, out = run(capsys, vm_memory, vm_args(tmp_path, [{"name": "vm1", "memory": "2M"}]))
    assert rc == 1 and "not shrinking" in out["msg"]
    assert os.path.getsize(tmp_path / "vm1.ram") == 4 * MiB


def test_vm_memory_refuses_unmounted_backend(tmp_path, capsys):
    rc, out = run(capsys, vm_memory, dict(backend="pmem", path=str(tmp_path), vms=[{"name": "a", "memory": "2M"}]))
    assert rc == 1 and "is not mounted" in out["msg"]
