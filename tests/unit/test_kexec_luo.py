"""The kexec module's luo preflight: what would lose the preserved memfds is refused before
anything is loaded. The decision is pure; the module runs against recorded host trees."""

import os
import shutil

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kexec

from conftest import FIXTURES, bzimage, run_main

LUO = get_backend("luo")
LUO_HOST = os.path.join(FIXTURES, "luo-host")
LUO_KEXEC = os.path.join(FIXTURES, "luo-host-kexec")
GOOD_CONFIG = facts.parse_kconfig(open(os.path.join(LUO_HOST, "boot/config-7.3.4-small1")).read())
RUNNING = facts.gather(LUO_KEXEC)["kho"]
ARGS = ["root=/dev/vda1", "ro", "kho=on", "liveupdate=on"]
CMD = kexec.load_command("/sbin/kexec", "/boot/vmlinuz-7.3.4-lu2", "/boot/initrd.img-7.3.4-lu2", " ".join(ARGS))


def problems(**kw):
    given = dict(running=RUNNING, release="7.3.4-lu2", config=GOOD_CONFIG, args=ARGS, cmd=CMD)
    given.update(kw)
    return LUO.target_problems(given["running"], given["release"], given["config"], ["/boot/config-7.3.4-lu2"],
                               given["args"], given["cmd"])


def test_a_luo_kexec_with_everything_in_place_passes():
    assert problems() == []
    assert CMD[1:3] == ["-s", "-l"]


def test_next_cmdline_keeps_the_flags_and_drops_only_boot_image():
    running = ["BOOT_IMAGE=/boot/vmlinuz-7.3.4-lu1"] + ARGS + ["kho_scratch=64M,512M,256M"]
    assert kexec.next_cmdline(LUO, running, ["nokaslr"]) == ARGS + ["kho_scratch=64M,512M,256M", "nokaslr"]


@pytest.mark.parametrize("missing", ["CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD"])
def test_a_target_without_kho_or_luo_is_refused(missing):
    config = dict(GOOD_CONFIG, **{missing: "n"})
    out = problems(config=config)
    assert out == ["the target kernel 7.3.4-lu2 lacks %s (built in): it cannot take the preserved memfds over"
                   % missing]


def test_a_target_without_a_config_is_refused():
    out = problems(config=None)
    assert out == ["no config for the target kernel 7.3.4-lu2 (looked for /boot/config-7.3.4-lu2): cannot check "
                   "it has KHO and LUO"]
    assert "cannot read the target kernel's release" in problems(release=None, config=None)[0]


@pytest.mark.parametrize("args,off", [
    (["root=/dev/vda1", "liveupdate=on"], "kho=on"),
    (["root=/dev/vda1", "kho=on"], "liveupdate=on"),
    (["root=/dev/vda1", "kho=on", "liveupdate=on", "kho=off"], "kho=on"),
    (["root=/dev/vda1"], "kho=on and liveupdate=on"),
])
def test_a_target_cmdline_without_the_flags_is_refused(args, off):
    assert problems(args=args) == ["the next cmdline would boot the target without %s: the preserved memory "
                                   "would be stranded" % off]


def test_kho_on_by_default_in_the_target_config_needs_no_flag():
    config = dict(GOOD_CONFIG, CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT="y")
    assert problems(config=config, args=["liveupdate=on"]) == []


def test_a_running_kernel_without_dev_liveupdate_is_refused():
    running = facts.kho_state(os.path.join(FIXTURES, "trixie-fleet-host"))
    assert "the running kernel has no /dev/liveupdate" in problems(running=running)[0]


@pytest.mark.parametrize("cmd", [
    ["/sbin/kexec", "-l", "/boot/vmlinuz", "--initrd=/boot/initrd"],
    ["/sbin/kexec", "-c", "-l", "/boot/vmlinuz"],
    ["/sbin/kexec", "-s", "--kexec-syscall", "-l", "/boot/vmlinuz"],
])
def test_any_load_but_kexec_file_load_is_refused(cmd):
    assert problems(cmd=cmd) == ["the KHO handover rides only on kexec_file_load (kexec -s); %s would lose it"
                                 % " ".join(cmd[:3])]


def test_target_config_is_read_for_the_images_release(tmp_path):
    bzimage(tmp_path / "vmlinuz-staged", "7.3.4-lu9 (builder@host) #1 SMP")
    release, config, places = kexec.target_config(str(tmp_path / "vmlinuz-staged"))
    assert release == "7.3.4-lu9" and config is None
    assert places == ["/boot/config-7.3.4-lu9", str(tmp_path / "config-7.3.4-lu9")]
    shutil.copy(os.path.join(LUO_HOST, "boot/config-7.3.4-small1"), str(tmp_path / "config-7.3.4-lu9"))
    assert kexec.target_config(str(tmp_path / "vmlinuz-staged"))[1]["CONFIG_LIVEUPDATE_MEMFD"] == "y"


# ------------------------------------------------------------------ the module, on a recorded host

@pytest.fixture
def host(monkeypatch, tmp_path):
    """The module sees the luo host after a KHO kexec; nothing may run."""
    real = facts.gather
    monkeypatch.setattr(kexec.facts, "gather", lambda root="/", mount_point=None, run=None:
                        real(LUO_KEXEC, mount_point=mount_point))
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, *a, **kw: "/sbin/" + name)

    def no_run(self, *a, **kw):
        raise AssertionError("the preflight ran a command: %r" % (a,))
    monkeypatch.setattr(AnsibleModule, "run_command", no_run)
    bzimage(tmp_path / "vmlinuz-7.3.4-lu2", "7.3.4-lu2 (builder@host) #1 SMP")
    (tmp_path / "initrd.img-7.3.4-lu2").write_bytes(b"")
    monkeypatch.setattr(kexec.facts, "image_problem", lambda path: None)
    monkeypatch.setattr(kexec.facts, "boot_drift", lambda root="/", run=None: [])  # its boot config agrees
    return tmp_path


def run(capsys, args):
    return run_main(capsys, kexec, args)


def test_module_refuses_a_luo_target_without_config_and_loads_nothing(host, capsys):
    rc, out = run(capsys, {"backend": "luo", "kernel": str(host / "vmlinuz-7.3.4-lu2"),
                           "initrd": str(host / "initrd.img-7.3.4-lu2"), "append": ["liveupdate=off"]})
    assert rc == 1 and out["msg"].startswith("kexec preflight failed, nothing was changed: ")
    assert "no config for the target kernel 7.3.4-lu2" in out["msg"]
    assert "without liveupdate=on" in out["msg"]
    # The recorded host's cmdline, less BOOT_IMAGE=, with the given option in place of its own.
    assert out["cmdline"] == ("root=UUID=fc9bc002-9396-4e77-8feb-53efeae2a5ef ro console=tty0 console=ttyS0,115200 "
                              "kho=on quiet liveupdate=off")


def test_module_check_mode_passes_a_good_luo_target_without_a_path(host, capsys):
    shutil.copy(os.path.join(LUO_HOST, "boot/config-7.3.4-small1"), str(host / "config-7.3.4-lu2"))
    rc, out = run(capsys, {"backend": "luo", "kernel": str(host / "vmlinuz-7.3.4-lu2"),
                           "initrd": str(host / "initrd.img-7.3.4-lu2"), "_ansible_check_mode": True})
    assert rc == 0 and out["changed"], out.get("msg")
    assert out["cmdline"] == ("root=UUID=fc9bc002-9396-4e77-8feb-53efeae2a5ef ro console=tty0 console=ttyS0,115200 "
                              "kho=on liveupdate=on quiet")


def test_module_still_wants_a_path_for_filesystem_backends(host, capsys):
    rc, out = run(capsys, {"backend": "pmem", "kernel": str(host / "vmlinuz-7.3.4-lu2"),
                           "initrd": str(host / "initrd.img-7.3.4-lu2")})
    assert rc == 1 and "path is required for the pmem backend" in out["msg"]
