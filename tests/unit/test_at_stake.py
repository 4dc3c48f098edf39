"""Issue 19 item 6: destructive paths refuse while any VM has a saved state or an unfinished
update (held, saving, saved, restoring, an update in flight): dropping a memfd, the holder's own
kexec, mkfs on the backend's device, the carve-out's cold reboot, re-recording the manifest."""

import os
import shutil

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, facts, journal, luo, manifest
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import write_json
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.memfd_holder import Holder, HolderError
from ansible_collections.guestmemfs.liveupdate.plugins.modules import memory_backend, memory_manifest

from conftest import FIXTURES, run_main

BOOT = "11111111-1111-1111-1111-111111111111"


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(journal, "boot_id", lambda: BOOT)
    monkeypatch.setattr(cpr, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(manifest, "MANIFEST_PATH", str(tmp_path / "manifest.json"))
    return tmp_path


def held(host, state="held", phase="held"):
    write_json(journal.JOURNAL, {"update_id": "u1", "phase": phase, "from_boot_id": "other-boot",
                                 "vms": {"vm1": {"state": state}}})


def test_at_stake_names_held_saved_and_state_files(host):
    assert journal.at_stake() == []
    write_json(journal.JOURNAL, {"phase": "restored", "vms": {"vm1": {"state": "restored"}}})
    assert journal.at_stake() == []
    held(host)
    assert any("vm1" in p and "held" in p for p in journal.at_stake())
    write_json(journal.JOURNAL, {"phase": "restored", "vms": {"vm1": {"state": "restored"}}})
    os.makedirs(cpr.STATE_DIR)
    open(os.path.join(cpr.STATE_DIR, "vm2.state"), "w").close()
    assert any("vm2" in p and "saved state" in p for p in journal.at_stake())


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")
def test_holder_drop_refuses_a_held_vms_memfd(host):
    h = Holder(dev_path=str(host / "no-liveupdate"), link_dir=str(host / "luo"), store=False)
    try:
        h.ensure("vm1", 4 << 20)
        held(host)
        with pytest.raises(HolderError, match="held"):
            h.drop("vm1", [])
        assert "vm1" in h.vms
    finally:
        for fd in h.vms.values():
            os.close(fd)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")
def test_holder_kexec_refuses_vms_not_saved_on_this_boot(host, monkeypatch):
    kexecs = []
    monkeypatch.setattr(luo, "reboot_kexec", lambda: kexecs.append(1))

    class Session:
        retrieved = False
    h = Holder(dev_path=str(host / "no-liveupdate"), link_dir=str(host / "luo"), store=False)
    try:
        h.ensure("vm1", 4 << 20)
        h.session, h.tokens = Session(), {"vm1": 1}
        write_json(journal.JOURNAL, {"phase": "preflight", "vms": {}})  # preserved, never saved
        with pytest.raises(HolderError, match="not saved"):
            h.kexec()
        write_json(journal.JOURNAL, {"phase": "saved", "from_boot_id": BOOT,
                                     "vms": {"vm1": {"state": "running"}}})
        with pytest.raises(HolderError, match="vm1 is running"):
            h.kexec()
        assert kexecs == []
    finally:
        for fd in h.vms.values():
            os.close(fd)


def pmem_tree(host):
    root = host / "host"
    (root / "sys/block/pmem0").mkdir(parents=True)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mounts").write_text("/dev/root / ext4 rw 0 0\n")
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("")
    (root / "dev").mkdir()
    (root / "dev/pmem0").write_bytes(b"\0" * 65536)
    return root


def fake_commands(monkeypatch, blkid):
    calls = []

    def run_command(self, cmd, *a, **kw):
        calls.append(cmd)
        if "blkid" in cmd[0]:
            return blkid
        return 0, "", ""
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, *a, **kw: "/usr/sbin/" + name)
    return calls


def test_memory_backend_never_mkfs_a_device_blkid_could_not_read(host, monkeypatch, capsys):
    root = pmem_tree(host)
    calls = fake_commands(monkeypatch, (2, "", "error: /dev/pmem0: Permission denied"))
    rc, out = run_main(capsys, memory_backend, {"backend": "pmem", "path": "/mnt/vmmem", "root": str(root),
                                                "device": "/dev/pmem0", "state": "present"})
    assert rc == 1 and "not formatting" in out["msg"]
    assert not [c for c in calls if "mkfs" in c[0]]


def test_memory_backend_never_mkfs_while_a_vm_is_held(host, monkeypatch, capsys):
    root = pmem_tree(host)
    held(host)
    calls = fake_commands(monkeypatch, (2, "", ""))
    rc, out = run_main(capsys, memory_backend, {"backend": "pmem", "path": "/mnt/vmmem", "root": str(root),
                                                "device": "/dev/pmem0", "state": "present"})
    assert rc == 1 and "vm1" in out["msg"] and "held" in out["msg"]
    assert not [c for c in calls if "mkfs" in c[0]]


def test_manifest_record_never_reapproves_a_held_vms_memory(host, capsys):
    mem = host / "vm1.ram"
    mem.write_bytes(b"x" * 8192)
    held(host)
    rc, out = run_main(capsys, memory_manifest, {"action": "record", "files": {"vm1": str(mem)},
                                                 "path": str(host / "manifest.json")})
    assert rc == 1 and "held" in out["msg"]
    assert not (host / "manifest.json").exists()


def test_facts_report_vms_at_stake_for_the_cold_reboot(host):
    root = host / "host"
    shutil.copytree(os.path.join(FIXTURES, "guestmemfs-host"), str(root))
    assert facts.gather(str(root))["vms_at_stake"] == []
    write_json(str(root / journal.JOURNAL.lstrip("/")), {"phase": "held", "vms": {"vm1": {"state": "held"}}})
    assert any("vm1" in p for p in facts.gather(str(root))["vms_at_stake"])


def test_the_cold_reboot_refuses_while_vms_are_at_stake():
    text = open(os.path.join(os.path.dirname(memory_backend.__file__), "..", "..", "roles", "memory_backend",
                             "tasks", "main.yml")).read()
    assert "vms_at_stake" in text


def test_manifest_record_in_check_mode_reports_changed_and_writes_nothing(host, capsys):
    mem = host / "vm1.ram"
    mem.write_bytes(b"x" * 8192)
    rc, out = run_main(capsys, memory_manifest, {"action": "record", "files": {"vm1": str(mem)},
                                                 "path": str(host / "manifest.json"), "_ansible_check_mode": True})
    assert rc == 0 and out["changed"] is True
    assert not (host / "manifest.json").exists()
