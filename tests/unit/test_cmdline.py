"""Editing the persistent kernel command line: pure edits on real bootloader configs, and the
kernel_cmdline module on copies of them (GRUB's own update-grub runs in the fleet VMs)."""

import json
import os
import shutil

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cmdline as cl
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kernel_cmdline

from conftest import FIXTURES

GRUB = os.path.join(FIXTURES, "grub")


def read(*parts):
    with open(os.path.join(GRUB, *parts)) as fh:
        return fh.read()


def test_apply_args_replaces_in_place_and_appends():
    args = ["ro", "memmap=2G!8G", "quiet", "memmap=1G!4G"]
    assert cl.apply_args(args, {"memmap": "1G!5G", "kho": "on"}, ["quiet"]) == ["ro", "memmap=1G!5G", "kho=on"]


def test_rhel_file_edit_keeps_everything_else():
    text = read("rhel9", "etc", "default", "grub")
    new, found = cl.edit_text(text, {"crashkernel": "512M"}, ["rhgb"])
    assert found == {"crashkernel", "rhgb"}
    old_lines, new_lines = text.splitlines(), new.splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert changed == [(old_lines[5], 'GRUB_CMDLINE_LINUX="crashkernel=512M resume=/dev/mapper/rhel-swap '
                        'rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap quiet"')]
    assert len(old_lines) == len(new_lines)


def test_ubuntu_dropin_defines_memmap():
    text = read("ubuntu2404", "etc", "default", "grub.d", "50-cloudimg-settings.cfg")
    new, found = cl.edit_text(text, {"memmap": "1G!5G"}, [])
    assert found == {"memmap"}
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0 memmap=1G!5G"' in new
    assert new.count("\n") == text.count("\n") and "# Set the default commandline" in new


def test_references_are_kept_and_single_quotes_become_double():
    new = cl.edit_text("GRUB_CMDLINE_LINUX='$GRUB_CMDLINE_LINUX a=1 b'  # note\n", {"a": "2"}, [])[0]
    assert new == 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX a=2 b"  # note\n'


def test_unquoted_and_export():
    new = cl.edit_text("export GRUB_CMDLINE_LINUX=quiet\n", {}, ["quiet"])[0]
    assert new == 'export GRUB_CMDLINE_LINUX=""\n'


@pytest.mark.parametrize("text,why", [
    ('GRUB_CMDLINE_LINUX="a\n b"\n', "does not end on this line"),
    ("GRUB_CMDLINE_LINUX=a\\\n", "continued on the next line"),
    ('GRUB_CMDLINE_LINUX="$(cat /x) a"\n', "command substitution"),
    ('GRUB_CMDLINE_LINUX="a" ; echo hi\n', "text after the value"),
])
def test_unsafe_forms_are_refused(text, why):
    with pytest.raises(cl.CmdlineError, match=why):
        cl.edit_text(text, {"a": "1"}, [])


def test_dropin_accumulates():
    first = cl.dropin_text(None, ["memmap=1G!5G"])
    assert first.endswith('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX memmap=1G!5G"\n')
    second = cl.dropin_text(first, ["kho=on"])
    assert second.endswith('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX memmap=1G!5G kho=on"\n')
    assert cl.dropin_text(None, []) is None


def test_missing_and_unwanted():
    assert cl.missing_and_unwanted(["a=1", "b", "c=2"], {"a": "1", "b": None}, ["c"]) == ([], ["c=2"])
    assert cl.missing_and_unwanted(["a=1", "a=2"], {"a": "1"}, []) == (["a=1"], [])


def test_grub_cfg_linux_lines_skip_recovery():
    cfg = ("menuentry 'Debian GNU/Linux' {\n\tlinux\t/boot/vmlinuz-6.12 root=UUID=x ro memmap=1G!5G quiet\n}\n"
           "submenu 'Advanced' {\n menuentry 'Debian, with Linux 6.12 (recovery mode)' {\n"
           "\tlinux\t/boot/vmlinuz-6.12 root=UUID=x ro single\n }\n}\n")
    assert cl.linux_lines(cfg) == [["root=UUID=x", "ro", "memmap=1G!5G", "quiet"]]


def test_grubby_info():
    entries = cl.parse_grubby_info(read("rhel9", "grubby-info-all.txt"))
    assert [e["index"] for e in entries] == [0, 1]
    assert entries[0]["args"].endswith("memmap=2G!8G")
    assert entries[1]["kernel"].startswith("/boot/vmlinuz-0-rescue")


# ------------------------------------------------------------------ the module on copied trees

def tree(tmp_path, name, running="BOOT_IMAGE=/boot/vmlinuz root=UUID=x ro quiet"):
    root = tmp_path / name
    shutil.copytree(os.path.join(GRUB, name), root)
    (root / "proc").mkdir()
    (root / "proc" / "cmdline").write_text(running + "\n")
    return root


def run(capsys, **args):
    args.setdefault("bootloader", "grub")
    args.setdefault("update_bootloader", False)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            kernel_cmdline.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_module_adds_to_dropin_and_is_idempotent(tmp_path, capsys):
    root = tree(tmp_path, "ubuntu2404")
    rc, out = run(capsys, root=str(root), args={"kho": "on", "liveupdate": "on"})
    assert rc == 0 and out["changed"] and out["reboot_required"]
    assert out["files"] == ["/etc/default/grub.d/99-guestmemfs-liveupdate.cfg"]
    dropin = (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").read_text()
    assert dropin.endswith('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX kho=on liveupdate=on"\n')
    assert out["configured"] == "kho=on liveupdate=on console=tty1 console=ttyS0 memmap=4G!12G"
    rc, out = run(capsys, root=str(root), args={"kho": "on", "liveupdate": "on"})
    assert rc == 0 and out["changed"] is False and out["reboot_required"] is True


def test_module_replaces_where_defined_with_backup(tmp_path, capsys):
    root = tree(tmp_path, "ubuntu2404", running="root=UUID=x ro memmap=1G!5G")
    rc, out = run(capsys, root=str(root), args={"memmap": "1G!5G"})
    assert rc == 0 and out["changed"] and out["reboot_required"] is False
    cfg = (root / "etc/default/grub.d/50-cloudimg-settings.cfg").read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0 memmap=1G!5G"' in cfg
    assert not (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").exists()
    [backup] = out["backup_files"]
    assert "memmap=4G!12G" in open(backup).read() and not backup.endswith(".cfg")


def test_module_removes_from_every_file(tmp_path, capsys):
    root = tree(tmp_path, "ubuntu2404")
    rc, out = run(capsys, root=str(root), remove=["memmap", "splash"])
    assert rc == 0 and out["changed"]
    assert "memmap" not in out["configured"] and "splash" not in out["configured"]
    assert sorted(out["files"]) == ["/etc/default/grub", "/etc/default/grub.d/50-cloudimg-settings.cfg"]


def test_check_mode_and_diff_change_nothing(tmp_path, capsys):
    root = tree(tmp_path, "rhel9")
    before = (root / "etc/default/grub").read_text()
    rc, out = run(capsys, root=str(root), args={"memmap": "1G!5G"}, remove=["rhgb"],
                  _ansible_check_mode=True, _ansible_diff=True)
    assert rc == 0 and out["changed"]
    assert (root / "etc/default/grub").read_text() == before
    assert not (root / "etc/default/grub.d").exists()
    headers = [d["after_header"] for d in out["diff"]]
    assert headers == ["/etc/default/grub", "/etc/default/grub.d/99-guestmemfs-liveupdate.cfg"]


@pytest.mark.parametrize("args,msg", [
    ({"args": {"a": "1"}, "remove": ["a"]}, "both set and removed: a"),
    ({"args": {"a b": "1"}}, "invalid argument name"),
    ({"args": {"a": "x y"}}, "has spaces"),
    ({"args": {"a": False}}, "use remove"),
    ({"args": {}, "remove": []}, "nothing to do"),
])
def test_bad_input_changes_nothing(tmp_path, capsys, args, msg):
    root = tree(tmp_path, "rhel9")
    before = (root / "etc/default/grub").read_text()
    rc, out = run(capsys, root=str(root), **args)
    assert rc == 1 and msg in out["msg"]
    assert (root / "etc/default/grub").read_text() == before


def test_unsafe_config_is_refused_untouched(tmp_path, capsys):
    root = tree(tmp_path, "rhel9")
    (root / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX="$(cat /etc/args) memmap=2G!8G"\n')
    rc, out = run(capsys, root=str(root), args={"memmap": "1G!5G"})
    assert rc == 1 and "command substitution" in out["msg"]
    assert "$(cat /etc/args)" in (root / "etc/default/grub").read_text()


def test_later_override_is_detected(tmp_path, capsys):
    root = tree(tmp_path, "ubuntu2404")
    (root / "etc/default/grub.d/99-zz-site.cfg").write_text('GRUB_CMDLINE_LINUX="nomodeset"\n')
    rc, out = run(capsys, root=str(root), args={"kho": "on"})
    assert rc == 1 and "still lack ['kho=on']" in out["msg"]


def test_debian_trixie_fleet_config(tmp_path, capsys):
    # /etc/default/grub recorded from a fleet VM (Debian trixie's shipped file) and the fleet's drop-in.
    root = tree(tmp_path, "debian-trixie", running="BOOT_IMAGE=/boot/vmlinuz root=UUID=x ro console=tty0 "
                "console=ttyS0,115200 quiet")
    rc, out = run(capsys, root=str(root), args={"memmap": "640M!5504M"})
    assert rc == 0 and out["changed"] and out["reboot_required"]
    assert out["configured"] == "console=tty0 console=ttyS0,115200 memmap=640M!5504M quiet"
    assert out["files"] == ["/etc/default/grub.d/99-guestmemfs-liveupdate.cfg"]
    assert (root / "etc/default/grub").read_text() == read("debian-trixie", "etc", "default", "grub")


def test_facts_report_configured_against_running(tmp_path):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import gather
    import subprocess

    def run(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return r.returncode, r.stdout, r.stderr
    root = tree(tmp_path, "debian-trixie", running="root=UUID=x ro console=tty0 console=ttyS0,115200 quiet")
    f = gather(str(root), run=run)["cmdline"]
    assert f["configured"] == "console=tty0 console=ttyS0,115200 quiet" and f["reboot_required"] is False
    (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").write_text(
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX memmap=640M!5504M"\n')
    assert gather(str(root), run=run)["cmdline"]["reboot_required"] is True


# ------------------------------------------------------------------ arguments through a backend

def test_luo_backend_sets_its_flags_on_debian_trixie(tmp_path, capsys):
    root = tree(tmp_path, "debian-trixie", running="BOOT_IMAGE=/boot/vmlinuz root=UUID=x ro console=tty0 "
                "console=ttyS0,115200 quiet")
    rc, out = run(capsys, root=str(root), backend="luo", backend_size="6G")
    assert rc == 0 and out["changed"] and out["reboot_required"]
    assert out["configured"] == "console=tty0 console=ttyS0,115200 kho=on liveupdate=on quiet"
    assert out["files"] == ["/etc/default/grub.d/99-guestmemfs-liveupdate.cfg"]
    rc, out = run(capsys, root=str(root), backend="luo")
    assert rc == 0 and out["changed"] is False


def test_luo_backend_with_scratch_on_ubuntu_and_explicit_args_agreeing(tmp_path, capsys):
    root = tree(tmp_path, "ubuntu2404", running="root=UUID=x ro kho=on liveupdate=on kho_scratch=64M,1G,512M")
    rc, out = run(capsys, root=str(root), backend="luo", kho_scratch="64M,1G,512M", args={"kho": "on"},
                  remove=["memmap"])
    assert rc == 0 and out["changed"] and out["reboot_required"] is False
    assert out["configured"] == "kho=on liveupdate=on kho_scratch=64M,1G,512M console=tty1 console=ttyS0"


def test_luo_backend_on_rhel_grub_defaults(tmp_path, capsys):
    root = tree(tmp_path, "rhel9")
    rc, out = run(capsys, root=str(root), backend="luo", _ansible_check_mode=True)
    assert rc == 0 and out["changed"]
    assert out["configured"].split()[-2:] == ["kho=on", "liveupdate=on"]


def test_guestmemfs_backend_sets_its_carveout(tmp_path, capsys):
    root = tree(tmp_path, "ubuntu2404")
    rc, out = run(capsys, root=str(root), backend="guestmemfs", backend_size="512M", remove=["memmap"])
    assert rc == 0 and out["configured"] == "guestmemfs=512M kho_scratch=256M console=tty1 console=ttyS0"


def test_pmem_backend_places_its_carveout_from_the_firmware_map(tmp_path, capsys):
    root = tree(tmp_path, "debian-trixie")
    shutil.copytree(os.path.join(FIXTURES, "trixie-fleet-host", "sys"), str(root / "sys"))
    rc, out = run(capsys, root=str(root), backend="pmem", backend_size="640M")
    assert rc == 0 and "memmap=640M!5504M" in out["configured"].split()


@pytest.mark.parametrize("args,msg", [
    ({"backend": "luo", "args": {"kho": "off"}}, "the luo backend sets kho=on, not kho=off"),
    ({"backend": "luo", "remove": ["liveupdate"]}, "the luo backend sets it (liveupdate=on), it cannot be removed"),
    ({"backend": "luo", "kho_scratch": "1.5G,1G,1G"}, "backend luo: kho_scratch=1.5G,1G,1G: use N% or three sizes"),
    ({"backend": "luo", "kho_scratch": "0%"}, "0% scale leaves no scratch"),
    ({"backend": "pmem", "kho_scratch": "200%"}, "kho_scratch is for the luo and guestmemfs backends, not pmem"),
    ({"backend": "guestmemfs"}, "backend_size is required for the guestmemfs backend"),
    ({"backend": "guestmemfs", "backend_size": "3M"}, "multiple of 2 MiB"),
    ({"backend": "pmem", "backend_size": "1G"}, "/sys/firmware/memmap) is unknown"),
    ({"backend": "luo", "backend_size": "lots"}, "not a size"),
    ({"kho_scratch": "200%"}, "kho_scratch needs backend"),
])
def test_backend_refusals_change_nothing(tmp_path, capsys, args, msg):
    root = tree(tmp_path, "debian-trixie")
    before = (root / "etc/default/grub").read_text()
    rc, out = run(capsys, root=str(root), **args)
    assert rc == 1 and msg in out["msg"], out["msg"]
    assert (root / "etc/default/grub").read_text() == before
    assert not (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").exists()


# ------------------------------------------------- configs as cloud images and sites ship them

CLOUD_MAIN = """# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet  splash"   # two spaces, kept
GRUB_CMDLINE_LINUX="console=tty0   memmap=2G!8G\tnoresume"
"""

CLOUD_DROPIN = """# Cloud Image specific Grub settings for Generic Cloud Images
# CLOUD_IMG: This file was created/modified by the Cloud Image build process

# Set the recordfail timeout
GRUB_RECORDFAIL_TIMEOUT=0

# Append what the cloud needs to what the main file has
GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX  console=ttyS0,115200n8 memmap=4G!12G"
"""


def cloud_tree(tmp_path, dropins):
    root = tmp_path / "cloud"
    (root / "etc/default/grub.d").mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz root=UUID=x ro\n")
    (root / "etc/default/grub").write_text(CLOUD_MAIN)
    for name, text in dropins.items():
        (root / "etc/default/grub.d" / name).write_text(text)
    return root


def test_a_value_in_the_main_file_and_an_appending_dropin_ends_up_once_where_it_wins(tmp_path, capsys):
    root = cloud_tree(tmp_path, {"50-cloudimg-settings.cfg": CLOUD_DROPIN})
    rc, out = run(capsys, root=str(root), args={"memmap": "1G!5G"})
    assert rc == 0 and out["changed"], out
    assert sorted(out["files"]) == ["/etc/default/grub", "/etc/default/grub.d/50-cloudimg-settings.cfg"]
    assert (root / "etc/default/grub").read_text() == CLOUD_MAIN.replace(
        'GRUB_CMDLINE_LINUX="console=tty0   memmap=2G!8G\tnoresume"',
        'GRUB_CMDLINE_LINUX="console=tty0\tnoresume"')  # a word goes with the space before it
    assert (root / "etc/default/grub.d/50-cloudimg-settings.cfg").read_text() == CLOUD_DROPIN.replace(
        "memmap=4G!12G", "memmap=1G!5G")
    assert not (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").exists()
    assert out["configured"] == "console=tty0 noresume console=ttyS0,115200n8 memmap=1G!5G quiet splash"
    rc, out = run(capsys, root=str(root), args={"memmap": "1G!5G"})
    assert rc == 0 and out["changed"] is False


def test_an_assignment_a_later_dropin_replaces_is_left_alone(tmp_path, capsys):
    replacing = ('GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0"\n'
                 'GRUB_CMDLINE_LINUX="console=ttyS0  memmap=4G!12G"\n')
    root = cloud_tree(tmp_path, {"50-cloudimg-settings.cfg": replacing})
    rc, out = run(capsys, root=str(root), args={"memmap": "1G!5G"})
    assert rc == 0 and out["files"] == ["/etc/default/grub.d/50-cloudimg-settings.cfg"], out
    assert (root / "etc/default/grub").read_text() == CLOUD_MAIN
    assert (root / "etc/default/grub.d/50-cloudimg-settings.cfg").read_text() == replacing.replace(
        "memmap=4G!12G", "memmap=1G!5G")
    assert out["configured"] == "console=ttyS0 memmap=1G!5G console=tty1 console=ttyS0"


def test_an_unparsable_assignment_without_managed_arguments_is_left_alone(tmp_path, capsys):
    site = ('# site tuning, computed at update-grub time\n'
            'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT $(echo nosoftlockup)"\n'
            "GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX mitigations=auto\" ; export GRUB_CMDLINE_LINUX\n")
    root = cloud_tree(tmp_path, {"40-site.cfg": site})
    rc, out = run(capsys, root=str(root), args={"kho": "on"}, remove=["noresume"])
    assert rc == 0 and out["changed"], out
    assert (root / "etc/default/grub.d/40-site.cfg").read_text() == site
    assert (root / "etc/default/grub").read_text() == CLOUD_MAIN.replace("   memmap=2G!8G\tnoresume", "   memmap=2G!8G")
    assert (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").read_text() == (
        cl.DROPIN_HEADER + 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX kho=on"\n')
    assert out["configured"] == "console=tty0 memmap=2G!8G mitigations=auto kho=on quiet splash nosoftlockup"
    # the same line holding an argument the module manages is refused, nothing changed
    before = dict((p.name, p.read_text()) for p in (root / "etc/default/grub.d").iterdir())
    rc, out = run(capsys, root=str(root), remove=["mitigations"])
    assert rc == 1 and "text after the value" in out["msg"]
    assert dict((p.name, p.read_text()) for p in (root / "etc/default/grub.d").iterdir()) == before


def test_spacing_inside_a_value_is_kept():
    text = "GRUB_CMDLINE_LINUX=' a=1  b\tc=3 '  # note\nGRUB_CMDLINE_LINUX_DEFAULT=quiet\n"
    assert cl.edit_text(text, {"c": "4"}, ["a"])[0] == (
        "GRUB_CMDLINE_LINUX=' b\tc=4 '  # note\nGRUB_CMDLINE_LINUX_DEFAULT=quiet\n")
    assert cl.edit_text(text, {"d": "1"}, [])[0] == text
    assert cl.edit_text(text, {}, ["quiet"])[0] == "GRUB_CMDLINE_LINUX=' a=1  b\tc=3 '  # note\nGRUB_CMDLINE_LINUX_DEFAULT=\"\"\n"
