"""The memory backends' commands and paths, the fstab edits, and the modules that mount the
backend and make the VM memory files, on copied host trees (pmem's mkfs/mount run in the fleet)."""

import json
import os
import shutil

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import fstab
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
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
    assert b.cmdline_args(512 * MiB) == ["guestmemfs=512M"]
    assert b.mount_spec("/mnt/guestmemfs") == ("guestmemfs", "guestmemfs", "defaults")
    assert b.fstype == "guestmemfs" and b.file_size(3 * MiB) == 4 * MiB
    assert ("CONFIG_FTRACE_KHO",) in b.required_kernel_options
    with pytest.raises(BackendError, match="multiple of 2 MiB"):
        b.cmdline_args(3 * MiB)


def test_guestmemfs_next_kernel_drops_its_carveout():
    # The region rides the KHO handover; guestmemfs= again would carve a second one.
    running = ["console=ttyS0", "guestmemfs=512M", "kho_scratch=256M", "nokaslr"]
    assert get_backend("guestmemfs").next_kernel_args(running) == ["console=ttyS0", "kho_scratch=256M", "nokaslr"]


def test_pmem_next_kernel_keeps_memmap():
    # Without memmap= the next kernel treats the region as RAM and overwrites it.
    running = ["root=/dev/vda1", "memmap=640M!5504M"]
    assert get_backend("pmem").next_kernel_args(running) == running


def test_guestmemfs_host_facts():
    f = gather(GM_HOST, mount_point="/mnt/guestmemfs")
    assert f["guestmemfs_fs"] is True
    assert f["kho"]["interface"] == "rfc" and f["kho"]["active"] is False
    assert f["cmdline"]["options"]["guestmemfs"] == ["512M"]
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
    ([{"name": "vm1", "memory": "1M"}, {"name": "vm1", "memory": "1M"}], "repeated"),
    ([{"name": "../x", "memory": "1M"}], "characters"),
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
