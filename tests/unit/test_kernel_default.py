"""Pinning the cold-boot kernel: GRUB entry ids from a generated grub.cfg of a trixie fleet host
with two kernels, and the kernel_default module on a copy of it."""

import json
import os
import shutil

import pytest

from ansible.module_utils.testing import patch_module_args
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cmdline as cl
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kernel_default

from conftest import FIXTURES

HOST = os.path.join(FIXTURES, "grub", "debian-trixie-two-kernels")
UUID = "fc9bc002-9396-4e77-8feb-53efeae2a5ef"
OLD = "6.12.117+deb13-amd64"


def grub_cfg():
    with open(os.path.join(HOST, "boot", "grub", "grub.cfg")) as fh:
        return fh.read()


def test_menu_entries_by_id_path():
    entries = cl.grub_menu_entries(grub_cfg())
    assert [(e["release"], e["recovery"]) for e in entries] == [
        ("7.3.4-lu1", False), ("7.3.4-lu1", False), ("7.3.4-lu1", True), (OLD, False), (OLD, True)]
    assert entries[0]["path"] == "gnulinux-simple-" + UUID
    # The top entry follows the newest kernel: the submenu's entry is the stable choice.
    assert cl.grub_default_path(entries, "7.3.4-lu1") == \
        "gnulinux-advanced-%s>gnulinux-7.3.4-lu1-advanced-%s" % (UUID, UUID)
    assert cl.grub_default_path(entries, OLD) == "gnulinux-advanced-%s>gnulinux-%s-advanced-%s" % (UUID, OLD, UUID)
    assert cl.grub_default_path(entries, "5.10.0") is None
    # With GRUB_DISABLE_SUBMENU=y every entry is at the top: the release's own entry, not the simple one.
    flat = [dict(e, path=e["path"].split(">")[-1]) for e in entries]
    assert cl.grub_default_path(flat, "7.3.4-lu1") == "gnulinux-7.3.4-lu1-advanced-" + UUID
    assert cl.grub_cfg_generated(grub_cfg()) and not cl.grub_cfg_generated("menuentry 'x' {\n}\n")
    assert cl.grub_set_default(grub_cfg()) == "0"


def run(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            kernel_default.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_module_pins_the_old_kernel(tmp_path, capsys):
    root = tmp_path / "host"
    shutil.copytree(HOST, str(root))
    dropin = root / "etc" / "default" / "grub.d" / cl.DEFAULT_DROPIN_NAME
    rc, out = run(capsys, root=str(root), release=OLD, bootloader="grub", update_bootloader=False,
                  _ansible_check_mode=True)
    assert rc == 0 and out["changed"] and not dropin.exists()
    rc, out = run(capsys, root=str(root), release=OLD, bootloader="grub", update_bootloader=False)
    assert rc == 0 and out["changed"] and out["previous_default"] == "0"
    assert out["files"] == ["/etc/default/grub.d/" + cl.DEFAULT_DROPIN_NAME]
    assert 'GRUB_DEFAULT="gnulinux-advanced-%s>gnulinux-%s-advanced-%s"\n' % (UUID, OLD, UUID) in dropin.read_text()
    rc, out = run(capsys, root=str(root), release=OLD, bootloader="grub", update_bootloader=False)
    assert rc == 0 and out["changed"] is False


def test_module_refuses_a_kernel_without_entry(tmp_path, capsys):
    root = tmp_path / "host"
    shutil.copytree(HOST, str(root))
    rc, out = run(capsys, root=str(root), release="5.10.0-30-amd64", bootloader="grub", update_bootloader=False)
    assert rc == 1 and "has no normal boot entry for kernel 5.10.0-30-amd64" in out["msg"]


# A stand-in for update-grub: sources the default files as grub-mkconfig does and writes the
# recorded grub.cfg with the resulting GRUB_DEFAULT (or fails, with FAKE_GRUB_FAIL set).
FAKE_UPDATE_GRUB = """#!/bin/sh
[ -z "$FAKE_GRUB_FAIL" ] || { echo "grub-probe: error: failed to get canonical path" >&2; exit 1; }
. "$FAKE_ROOT/etc/default/grub"
for f in "$FAKE_ROOT"/etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done
sed "s|^   set default=\\"0\\"|   set default=\\"$GRUB_DEFAULT\\"|" "$FAKE_ROOT/recorded-grub.cfg" > "$FAKE_ROOT/boot/grub/grub.cfg"
"""


@pytest.fixture
def fake_grub(tmp_path, monkeypatch):
    root = tmp_path / "host"
    shutil.copytree(HOST, str(root))
    shutil.copy(str(root / "boot" / "grub" / "grub.cfg"), str(root / "recorded-grub.cfg"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "update-grub").write_text(FAKE_UPDATE_GRUB)
    (bindir / "update-grub").chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ["PATH"]))
    monkeypatch.setenv("FAKE_ROOT", str(root))
    return root


def test_module_pins_through_update_grub(fake_grub, capsys):
    path = "gnulinux-advanced-%s>gnulinux-%s-advanced-%s" % (UUID, OLD, UUID)
    rc, out = run(capsys, root=str(fake_grub), release=OLD, bootloader="grub")
    assert rc == 0 and out["changed"] and out["default_entry"] == path
    assert cl.grub_set_default((fake_grub / "boot" / "grub" / "grub.cfg").read_text()) == path
    rc, out = run(capsys, root=str(fake_grub), release=OLD, bootloader="grub")
    assert rc == 0 and out["changed"] is False and out["previous_default"] == path


def test_module_puts_the_dropin_back_when_update_grub_fails(fake_grub, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_GRUB_FAIL", "1")
    rc, out = run(capsys, root=str(fake_grub), release=OLD, bootloader="grub")
    assert rc == 1 and "the drop-in was put back" in out["msg"] and "grub-probe" in out["stderr"]
    assert not (fake_grub / "etc" / "default" / "grub.d" / cl.DEFAULT_DROPIN_NAME).exists()


def test_module_diff_shows_the_pinning_dropin(tmp_path, capsys):
    root = tmp_path / "host"
    shutil.copytree(HOST, str(root))
    rc, out = run(capsys, root=str(root), release=OLD, bootloader="grub", update_bootloader=False,
                  _ansible_check_mode=True, _ansible_diff=True)
    dropin = "/etc/default/grub.d/" + cl.DEFAULT_DROPIN_NAME
    assert rc == 0 and out["changed"]
    assert out["diff"]["before_header"] == dropin and out["diff"]["before"] == ""
    assert 'GRUB_DEFAULT="gnulinux-advanced-%s>gnulinux-%s-advanced-%s"' % (UUID, OLD, UUID) in out["diff"]["after"]
    rc, out = run(capsys, root=str(root), release=OLD, bootloader="grub", update_bootloader=False)
    assert "diff" not in out
