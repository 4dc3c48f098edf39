"""Host facts against a recorded trixie fleet host and against hand-made kernel files."""

import gzip
import json
import os
import shutil

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts
from ansible_collections.guestmemfs.liveupdate.plugins.modules import guestmemfs_facts

from conftest import FIXTURES

TRIXIE = os.path.join(FIXTURES, "trixie-fleet-host")


def test_recorded_trixie_host():
    f = facts.gather(TRIXIE)
    assert f["kernel_release"] == "6.12.117+deb13-amd64"
    assert f["kexec_file"] is True
    assert f["kernel_config"]["CONFIG_KEXEC_FILE"] == "y"
    assert f["kernel_config"]["CONFIG_X86_PMEM_LEGACY"] == "m"
    # Debian's stock kernels have no KHO, no LUO and no guestmemfs.
    assert f["kernel_config"]["CONFIG_KEXEC_HANDOVER"] == "n"
    assert f["kernel_config"]["CONFIG_LIVEUPDATE"] == "n"
    assert f["guestmemfs_fs"] is False
    assert f["kho"] == {"interface": None, "active": None, "enabled": None, "incoming": False,
                        "incoming_evidence": None, "liveupdate_device": False, "kho_flag": False,
                        "liveupdate_flag": False, "kho_scratch": None, "scratch_bytes": None}
    assert 3 * 2**30 < f["memory"]["total_bytes"] < 4 * 2**30
    assert [n["node"] for n in f["memory"]["numa_nodes"]] == [0]
    assert f["memory"]["numa_nodes"][0]["total_bytes"] == f["memory"]["total_bytes"]
    assert f["memory"]["hugepage_sizes"] == [2 * 2**20, 2**30]
    assert f["cmdline"]["options"]["console"] == ["tty0", "ttyS0,115200"]
    assert f["cmdline"]["options"]["ro"] == [True]
    assert "backend_mount" not in f


def test_root_mount_of_recorded_host():
    m = facts.backend_mount(TRIXIE, "/")
    assert m["mounted"] and m["fstype"] == "ext4" and m["source"] == "/dev/vda1"
    assert m["dax"] is False


def test_unmounted_backend():
    assert facts.backend_mount(TRIXIE, "/mnt/pmem") == {"path": "/mnt/pmem", "mounted": False}


@pytest.mark.parametrize("text,expected", [
    ("a b=1  c", ["a", "b=1", "c"]),
    ('quiet dyndbg="file foo.c +p" memmap=1G!4G', ["quiet", 'dyndbg="file foo.c +p"', "memmap=1G!4G"]),
    ("", []),
    ("  \n", []),
])
def test_parse_cmdline(text, expected):
    assert facts.parse_cmdline(text) == expected


def test_cmdline_keeps_repeated_memmap():
    opts = facts.cmdline_dict(facts.parse_cmdline("memmap=1G!4G memmap=2G!8G nokaslr"))
    assert opts == {"memmap": ["1G!4G", "2G!8G"], "nokaslr": [True]}


def test_parse_mounts_unescapes_spaces():
    mounts = facts.parse_mounts("/dev/pmem0 /mnt/vm\\040ram ext4 rw,relatime,dax=always 0 0\n")
    assert mounts[0]["target"] == "/mnt/vm ram"
    assert "dax=always" in mounts[0]["options"]


def test_meminfo_units():
    info = facts.parse_meminfo("MemTotal:  1024 kB\nHugePages_Total:  3\nNode 0 MemFree: 2 kB\n")
    assert info == {"MemTotal": 1048576, "HugePages_Total": 3, "MemFree": 2048}


def _tree(tmp_path, files):
    for rel, content in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return str(tmp_path)


def test_rfc_kho_host_with_config_gz(tmp_path):
    # The guestmemfs RFC's interface (KHO v2): /sys/kernel/kho/{active,scratch_len}, and after a
    # handover kexec /sys/firmware/kho/dt. No /boot/config: the config comes from /proc/config.gz.
    root = _tree(tmp_path, {
        "proc/sys/kernel/osrelease": "6.12.117-guestmemfs\n",
        "proc/config.gz": gzip.compress(b"CONFIG_KEXEC_FILE=y\nCONFIG_KEXEC_KHO=y\nCONFIG_GUESTMEMFS_FS=y\n"),
        "proc/filesystems": "nodev\tsysfs\nnodev\tguestmemfs\n",
        "proc/cmdline": "console=ttyS0 guestmemfs=512M kho_scratch=256M nokaslr\n",
        "sys/kernel/kho/active": "1\n",
        "sys/kernel/kho/scratch_len": "0x10000000\n",
        "sys/firmware/kho/dt": b"\xd0\x0d\xfe\xed",
    })
    f = facts.gather(root)
    assert f["kernel_config_source"] == "/proc/config.gz"
    assert f["kernel_config"]["CONFIG_KEXEC_KHO"] == "y"
    assert f["guestmemfs_fs"] is True
    assert f["kho"]["interface"] == "rfc" and f["kho"]["active"] is True and f["kho"]["incoming"] is True
    assert f["cmdline"]["options"]["guestmemfs"] == ["512M"]


LUO_HOST = os.path.join(FIXTURES, "luo-host")
LUO_KEXEC = os.path.join(FIXTURES, "luo-host-kexec")


def test_luo_host_cold_boot():
    # Recorded on a fleet host (tests/unit/fixtures/luo-host/README).
    f = facts.gather(LUO_HOST)
    assert f["kernel_release"] == "7.3.4-small1"
    for opt in ("CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD", "CONFIG_KEXEC_FILE"):
        assert f["kernel_config"][opt] == "y", opt
    assert f["kernel_config"]["CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT"] == "n"
    # kho/out/scratch_len: 0x9400000 + 0xa800000 + 0x3b000000 (lowmem, global, node 0).
    assert f["kho"] == {"interface": "mainline", "active": None, "enabled": True, "incoming": False,
                        "incoming_evidence": None, "liveupdate_device": True, "kho_flag": True,
                        "liveupdate_flag": True, "kho_scratch": None, "scratch_bytes": 1260 * 2**20}
    assert f["memory"]["total_bytes"] == 4045696 * 1024 and f["memory"]["firmware_ram_bytes"] == 0


def test_luo_host_after_a_kho_kexec(tmp_path):
    f = facts.gather(LUO_KEXEC)
    k = f["kho"]
    assert f["kernel_release"] == "7.3.4-small2" and "BOOT_IMAGE=" not in f["cmdline"]["running"]
    assert k["interface"] == "mainline" and k["enabled"] is True and k["liveupdate_device"]
    assert k["incoming"] is True and "type SETUP_KEXEC_KHO" in k["incoming_evidence"]
    assert "debugfs kho/in" in k["incoming_evidence"]
    assert k["scratch_bytes"] == 1260 * 2**20
    assert f["boot_id"] != facts.gather(LUO_HOST)["boot_id"]
    # Without debugfs (not mounted) the boot_params setup_data entry alone tells the KHO boot.
    shutil.copytree(LUO_KEXEC, str(tmp_path / "host"))
    shutil.rmtree(str(tmp_path / "host" / "sys" / "kernel" / "debug"))
    k = facts.gather(str(tmp_path / "host"))["kho"]
    assert k["incoming"] is True and k["incoming_evidence"].startswith("setup_data 1 type SETUP_KEXEC_KHO")
    assert k["scratch_bytes"] is None


def test_kho_in_debugfs_is_the_evidence_without_boot_params(tmp_path):
    root = _tree(tmp_path, {
        "proc/sys/kernel/osrelease": "7.3.4\n",
        "proc/cmdline": "kho=on liveupdate=on kho_scratch=64M,512M,256M\n",
        "sys/kernel/debug/kho/out/scratch_len": "0x4000000\n0x20000000\n0x10000000\n",
        "sys/kernel/debug/kho/in/fdt": b"",
        "dev/liveupdate": "",
    })
    k = facts.gather(root)["kho"]
    assert k["interface"] == "mainline" and k["enabled"] is True
    assert k["incoming"] is True and k["incoming_evidence"] == "debugfs kho/in"
    assert k["kho_scratch"] == "64M,512M,256M" and k["scratch_bytes"] == 832 * 2**20


@pytest.mark.parametrize("cmdline,config,enabled,lu", [
    ("kho=on liveupdate=on", "CONFIG_KEXEC_HANDOVER=y\nCONFIG_LIVEUPDATE=y\n", True, True),
    ("liveupdate=on", "CONFIG_KEXEC_HANDOVER=y\n", False, True),
    ("liveupdate=1 kho=off", "CONFIG_KEXEC_HANDOVER=y\nCONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y\n", False, True),
    ("", "CONFIG_KEXEC_HANDOVER=y\nCONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y\n", True, False),
])
def test_mainline_kho_without_debugfs_follows_cmdline_and_config(tmp_path, cmdline, config, enabled, lu):
    root = _tree(tmp_path, {"proc/sys/kernel/osrelease": "7.3.4\n", "proc/cmdline": cmdline + "\n",
                            "boot/config-7.3.4": config})
    k = facts.gather(root)["kho"]
    assert k["interface"] == "mainline" and k["enabled"] is enabled and k["liveupdate_flag"] is lu
    assert k["incoming"] is False and k["liveupdate_device"] is False


def test_setup_data_without_the_kho_type_is_no_handover(tmp_path):
    root = _tree(tmp_path, {"proc/sys/kernel/osrelease": "7.3.4\n", "boot/config-7.3.4": "CONFIG_KEXEC_HANDOVER=y\n",
                            "sys/kernel/boot_params/setup_data/0/type": "0x9\n",
                            "sys/kernel/boot_params/setup_data/1/type": "garbage\n"})
    assert facts.gather(root)["kho"]["incoming"] is False


def test_module_reports_luo(capsys):
    rc, out = run_module(capsys, {"root": LUO_KEXEC})
    k = out["ansible_facts"]["guestmemfs"]["kho"]
    assert rc == 0 and k["incoming"] and k["liveupdate_device"]


def test_backend_files_and_capacity(tmp_path):
    (tmp_path / "mnt" / "pmem").mkdir(parents=True)
    (tmp_path / "mnt" / "pmem" / "vm1.ram").write_bytes(b"\0" * 8192)
    root = _tree(tmp_path, {"proc/self/mounts": "/dev/pmem0 /mnt/pmem ext4 rw,dax 0 0\n"})
    m = facts.gather(root, mount_point="/mnt/pmem")["backend_mount"]
    assert m["mounted"] and m["dax"] and m["source"] == "/dev/pmem0"
    assert m["files"] == [{"name": "vm1.ram", "size_bytes": 8192, "allocated_bytes": m["files"][0]["allocated_bytes"]}]
    assert m["size_bytes"] > 0 and m["free_bytes"] <= m["size_bytes"]


def run_module(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            guestmemfs_facts.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_module_returns_fact(capsys):
    rc, out = run_module(capsys, {"root": TRIXIE, "_ansible_check_mode": True})
    assert rc == 0 and out["changed"] is False
    assert out["ansible_facts"]["guestmemfs"]["kernel_release"] == "6.12.117+deb13-amd64"


def test_module_refuses_missing_root(capsys, tmp_path):
    rc, out = run_module(capsys, {"root": str(tmp_path / "nope")})
    assert rc == 1 and out["failed"] and "is not a directory" in out["msg"]
