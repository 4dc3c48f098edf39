"""Issue 19 item 10: the carve-out on the running cmdline but gone from the boot configuration (an
operator's edit, a package's drop-in) means the next cold boot - a crash, a power cut - boots
without it and destroys every VM's memory. The host facts, kernel_cmdline, the kexec preflight and
update_step say so; the update refuses unless the operator allows it."""

import subprocess

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import boot_drift
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kexec, update_step

from conftest import bzimage, run_main
from test_cmdline import run as run_kernel_cmdline, tree
from test_kexec_luo import host as luo_host  # noqa: F401  # pylint: disable=unused-import

CARVED = "root=UUID=x ro console=tty0 console=ttyS0,115200 quiet memmap=1G!4G"


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return r.returncode, r.stdout, r.stderr


def test_drift_is_a_backends_running_argument_the_configuration_lacks():
    running = CARVED.split()
    assert boot_drift(running, running) == []
    assert boot_drift(running, None) == []  # no boot configuration to compare with
    [d] = boot_drift(running, ["root=UUID=x", "ro", "quiet"])
    assert "memmap=1G!4G" in d and "absent" in d
    [d] = boot_drift(running, ["memmap=2G!4G"])
    assert "memmap=1G!4G" in d and "memmap=2G!4G" in d
    # Arguments no backend owns are the bootloader's business, not drift.
    assert boot_drift(["BOOT_IMAGE=/boot/x", "nokaslr"], []) == []


def test_host_facts_report_the_drift(tmp_path):
    root = tree(tmp_path, "debian-trixie", running=CARVED)
    f = facts.gather(str(root), run=sh)["cmdline"]
    assert any("memmap=1G!4G" in d for d in f["drift"])
    (root / "etc/default/grub.d/99-guestmemfs-liveupdate.cfg").write_text(
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX memmap=1G!4G"\n')
    assert facts.gather(str(root), run=sh)["cmdline"]["drift"] == []


@pytest.fixture
def warned(monkeypatch):
    """The module's warnings (where they land in the result depends on what else the process loaded)."""
    from ansible.module_utils.basic import AnsibleModule
    texts = []
    monkeypatch.setattr(AnsibleModule, "warn", lambda self, text, *a, **kw: texts.append(text))
    return texts


def test_kernel_cmdline_reports_the_drift_it_leaves(tmp_path, capsys, warned):
    root = tree(tmp_path, "ubuntu2404", running="root=UUID=x ro memmap=4G!12G")
    rc, out = run_kernel_cmdline(capsys, root=str(root), args={"quiet": None}, remove=["memmap"])
    assert rc == 0 and any("memmap=4G!12G" in d for d in out["drift"])
    assert any("drift" in w for w in warned)


DRIFT = ["memmap=1G!4G runs now but the boot configuration lacks it (absent)"]


def test_the_kexec_preflight_refuses_drift_unless_allowed(luo_host, capsys, monkeypatch, warned):
    import os
    import shutil
    from test_kexec_luo import LUO_HOST
    shutil.copy(os.path.join(LUO_HOST, "boot/config-7.3.4-small1"), str(luo_host / "config-7.3.4-lu2"))
    monkeypatch.setattr(facts, "boot_drift", lambda root="/", run=None: DRIFT)
    args = {"backend": "luo", "kernel": str(luo_host / "vmlinuz-7.3.4-lu2"),
            "initrd": str(luo_host / "initrd.img-7.3.4-lu2"), "_ansible_check_mode": True}
    rc, out = run_main(capsys, kexec, args)
    assert rc == 1 and "boot configuration" in out["msg"] and "allow_boot_drift" in out["msg"]
    assert out["boot_drift"] == DRIFT
    rc, out = run_main(capsys, kexec, dict(args, allow_boot_drift=True))
    assert rc == 0 and out["boot_drift"] == DRIFT and any("memmap=1G!4G" in w for w in warned)


@pytest.fixture
def idle_host(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(update_step, "STAGED_FACT", str(tmp_path / "none.fact"))
    bzimage(tmp_path / "vmlinuz-9.9.9-new", "9.9.9-new (builder@host) #1 SMP")
    return tmp_path


def test_update_step_refuses_to_start_on_drift_unless_allowed(idle_host, capsys, monkeypatch):
    monkeypatch.setattr(facts, "boot_drift", lambda root="/", run=None: DRIFT)
    args = {"kernel": str(idle_host / "vmlinuz-9.9.9-new")}
    rc, out = run_main(capsys, update_step, args)
    assert rc == 0 and out["step"] == "blocked" and out["boot_drift"] == DRIFT
    assert "memmap=1G!4G" in out["reason"] and "guestmemfs_allow_boot_drift" in out["reason"]
    rc, out = run_main(capsys, update_step, dict(args, allow_boot_drift=True))
    assert out["step"] == "start" and out["boot_drift"] == DRIFT
    monkeypatch.setattr(facts, "boot_drift", lambda root="/", run=None: [])
    rc, out = run_main(capsys, update_step, args)
    assert out["step"] == "start" and out["boot_drift"] == []
