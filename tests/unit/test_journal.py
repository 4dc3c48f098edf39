"""The host journal: what a re-run of the live update does on a host, from its journal alone, and
the guard that never kexecs a host whose VMs are not saved."""

import json
import os
import struct

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, facts, hostupdate, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.journal import next_step
from conftest import bzimage

BOOT_A, BOOT_B = "boot-a", "boot-b"


def j(phase, vms=None, boot=BOOT_A, **kw):
    d = {"phase": phase, "update_id": "u1", "from_boot_id": boot, "vms": vms or {}}
    d.update(kw)
    return d


def step(journal, boot=BOOT_A, running="7.3.4", target="7.3.5", alive=lambda pid: False):
    return next_step(journal, boot, running, target, pid_alive=alive)[0]


def test_fresh_host_starts():
    assert step({}) == "start"


def test_host_on_target_with_nothing_in_flight_is_done():
    assert step({}, running="7.3.5", target="7.3.5") == "done"
    assert step(j("restored", {"vm1": {"state": "restored"}}), running="7.3.5", target="7.3.5") == "done"


def test_rebuild_of_the_running_release_is_a_new_kernel():
    # A fix built with the same localversion, or a distribution update that kept its ABI name.
    done = next_step({}, BOOT_A, "7.3.4-lu1", "7.3.4-lu1", running_build="#1 SMP Mon",
                     target_build="#1 SMP Mon")
    assert done[0] == "done"
    again = next_step({}, BOOT_A, "7.3.4-lu1", "7.3.4-lu1", running_build="#1 SMP Mon",
                      target_build="#2 SMP Tue")
    assert again[0] == "start" and "same release" in again[1]


def test_finished_update_to_another_kernel_starts_again():
    # An operator staged a newer kernel after the last update: a new update, not a resume.
    assert step(j("restored", {"vm1": {"state": "restored"}}), boot=BOOT_B) == "start"


def test_saved_on_this_boot_goes_to_kexec_without_saving_again():
    for phase in ("saved", "handover", "kexec"):
        assert step(j(phase, {"vm1": {"state": "saved"}})) == "kexec"


def test_saved_then_new_boot_waits_for_the_hosts_own_restore():
    for phase in ("saved", "kexec", "booted", "verified"):
        assert step(j(phase, {"vm1": {"state": "restoring"}}), boot=BOOT_B) == "wait"


def test_save_still_running_is_waited_for():
    assert step(j("saving", {"vm1": {"state": "saving"}}, saver_pid=42), alive=lambda pid: pid == 42) == "wait_save"


def test_save_that_died_is_rolled_back():
    assert step(j("saving", {"vm1": {"state": "saved"}, "vm2": {"state": "saving"}}, saver_pid=42)) == "rollback"


def test_reboot_during_save_not_finalised_at_boot_is_blocked_not_waited_for():
    # The boot-time verify finalises such a save; still ``saving`` means it did not: waiting never ends.
    reason = next_step(j("saving", {"vm1": {"state": "saved"}}), BOOT_B, "7.3.4", "7.3.5")
    assert reason[0] == "blocked" and "agent verify" in reason[1]


def test_held_vm_blocks_everything_even_on_target():
    journal = j("held", {"vm1": {"state": "restored"}, "vm2": {"state": "held"}}, boot=BOOT_A)
    assert step(journal, boot=BOOT_B, running="7.3.5", target="7.3.5") == "blocked"
    reason = next_step(journal, BOOT_B, "7.3.5", "7.3.5")[1]
    assert "vm2 (held)" in reason and "agent verify" in reason


def test_restore_failed_blocks():
    assert step(j("verified", {"vm1": {"state": "restore_failed"}}), boot=BOOT_B) == "blocked"


def test_a_vm_its_agent_did_not_start_is_final_and_blocks():
    # Its unit refused to start QEMU after its memory verified (a bridge that never came): nothing
    # more comes from this update unless an operator acts, so a controller must not wait for it.
    journal_ = j("verified", {"vm1": {"state": "restored"}, "vm2": {"state": "not_started", "verified_boot_id": BOOT_B}})
    assert journal.vm_done("not_started")
    assert journal.update_progress(journal_, BOOT_B, journal_["update_id"])[0] == "done"
    reason = next_step(journal_, BOOT_B, "7.3.5", "7.3.5")
    assert reason[0] == "blocked" and "vm2 (not_started)" in reason[1]


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host's journal, VM configs and state files under tmp_path; boot id BOOT_A."""
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    # No libvirt domain here, and this machine's /proc and /run unread (test_preservability_libvirt.py).
    monkeypatch.setattr(hostupdate, "libvirt_refusals", lambda: [])
    boot = {"id": BOOT_A}
    monkeypatch.setattr(journal, "boot_id", lambda: boot["id"])
    conf = tmp_path / "vms"
    conf.mkdir()
    for name in ("vm1", "vm2"):
        mem = tmp_path / (name + ".ram")
        mem.write_bytes(b"\0" * 4096)
        (conf / (name + ".json")).write_text(json.dumps({
            "name": name, "memory_bytes": 4096, "mem_path": str(mem),
            "state": str(tmp_path / (name + ".state")), "qmp": str(tmp_path / (name + ".qmp"))}))
    return {"dir": tmp_path, "conf": str(conf), "boot": boot}


def saved_journal(host, **vm_states):
    vms = {}
    for name, state in vm_states.items():
        path = str(host["dir"] / (name + ".state"))
        if state == "saved":
            open(path, "w").close()
        vms[name] = {"state": state, "state_path": path}
    hostupdate.update_journal(lambda d: d.update(j("saved", vms)))


def test_kexec_guard_refuses_a_host_whose_vm_is_not_saved(host):
    saved_journal(host, vm1="saved", vm2="running")
    calls = []
    err = hostupdate.kexec_now(calls.append, conf_dir=host["conf"])
    assert err and "vm2 is running" in err
    assert calls == []
    assert hostupdate.load_journal()["phase"] == "saved"


def test_kexec_guard_refuses_a_missing_state_file(host):
    saved_journal(host, vm1="saved", vm2="saved")
    os.unlink(str(host["dir"] / "vm2.state"))
    err = hostupdate.kexec_now(lambda argv: 0, conf_dir=host["conf"])
    assert "vm2 is saved (state file" in err


def test_kexec_guard_refuses_on_another_boot(host):
    saved_journal(host, vm1="saved", vm2="saved")
    host["boot"]["id"] = BOOT_B
    err = hostupdate.kexec_now(lambda argv: 0, conf_dir=host["conf"])
    assert "not saved on this boot" in err


def test_kexec_guard_refuses_memory_still_mapped(host):
    saved_journal(host, vm1="saved", vm2="saved")
    import mmap
    with open(str(host["dir"] / "vm1.ram"), "r+b") as fh:
        m = mmap.mmap(fh.fileno(), 4096)
        try:
            err = hostupdate.kexec_now(lambda argv: 0, conf_dir=host["conf"])
        finally:
            m.close()
    assert "vm1's memory is still mapped by" in err


def test_kexec_guard_refuses_guestmemfs_vms_without_the_handover(host, monkeypatch):
    saved_journal(host, vm1="saved", vm2="saved")
    root = host["dir"] / "root"
    mounts, active = root / "proc/self/mounts", root / "sys/kernel/kho/active"
    mounts.parent.mkdir(parents=True)
    active.parent.mkdir(parents=True)
    mounts.write_text("/dev/vda1 / ext4 rw 0 0\nguestmemfs %s guestmemfs rw,relatime 0 0\n" % host["dir"])
    active.write_text("0\n")
    monkeypatch.setattr(hostupdate, "ROOT", str(root))
    gm = get_backend("guestmemfs")
    for name in ("vm1", "vm2"):  # their configurations name their backend (vm_definition)
        path = os.path.join(host["conf"], name + ".json")
        with open(path) as fh:
            conf = json.load(fh)
        with open(path, "w") as fh:
            json.dump(dict(conf, backend="guestmemfs"), fh)

    def on_guestmemfs():
        return gm.on_mount([cpr.VM.load(n, host["conf"]) for n in ("vm1", "vm2")], str(root))
    assert on_guestmemfs() == ["vm1", "vm2"]
    calls = []
    err = hostupdate.kexec_now(calls.append, conf_dir=host["conf"])
    assert "vm1, vm2 on guestmemfs but its KHO handover is not active" in err and calls == []
    active.write_text("1\n")
    err = hostupdate.kexec_now(calls.append, conf_dir=host["conf"])
    assert err is None or "guestmemfs" not in err
    # On another filesystem (a deeper mount over the same directory) the VMs are not guestmemfs's.
    mounts.write_text("guestmemfs %s guestmemfs rw 0 0\ntmpfs %s tmpfs rw 0 0\n" % (host["dir"].parent, host["dir"]))
    assert on_guestmemfs() == []


def test_finish_marks_rollback_and_restore(host):
    saved_journal(host, vm1="saved", vm2="saved")
    hostupdate.update_journal(journal.set_vm("vm1", state="restored"))
    hostupdate.finish_if_done()
    assert hostupdate.load_journal()["phase"] == "saved"  # vm2 still pending
    hostupdate.update_journal(journal.set_vm("vm2", state="restored"))
    hostupdate.finish_if_done()
    assert hostupdate.load_journal()["phase"] == "rolled_back"  # same boot it saved on


def test_finish_after_kexec_is_restored_or_held(host):
    saved_journal(host, vm1="saved", vm2="saved")
    host["boot"]["id"] = BOOT_B
    hostupdate.update_journal(journal.set_vm("vm1", state="restored"))
    hostupdate.update_journal(journal.set_vm("vm2", state="held"))
    hostupdate.finish_if_done()
    assert hostupdate.load_journal()["phase"] == "held"
    # The documented recovery resumes vm2: the update closes as restored.
    hostupdate.update_journal(journal.set_vm("vm2", state="restored"))
    hostupdate.finish_if_done()
    assert hostupdate.load_journal()["phase"] == "restored"


def test_finish_after_kexec_with_a_vm_not_started_is_held(host):
    saved_journal(host, vm1="saved", vm2="saved")
    host["boot"]["id"] = BOOT_B
    hostupdate.update_journal(journal.set_vm("vm1", state="restored"))
    hostupdate.update_journal(journal.set_vm("vm2", state="not_started", verified_boot_id=BOOT_B))
    hostupdate.finish_if_done()
    assert hostupdate.load_journal()["phase"] == "held"


def test_an_update_counts_one_ending_however_often_it_is_closed(host):
    # The metrics' updates_total: a held update checked again (every VM unit's start, the verify
    # service, each re-run) is still one held update; its recovery does not end it a second time.
    saved_journal(host, vm1="saved", vm2="saved")
    host["boot"]["id"] = BOOT_B
    hostupdate.update_journal(journal.set_vm("vm1", state="restored"))
    hostupdate.update_journal(journal.set_vm("vm2", state="held"))
    for _rerun in range(3):
        hostupdate.finish_if_done()
    assert hostupdate.load_journal()["totals"]["updates"] == {"held": 1}
    hostupdate.update_journal(journal.set_vm("vm2", state="restored"))
    hostupdate.finish_if_done()
    hostupdate.finish_if_done()
    j = hostupdate.load_journal()
    assert j["phase"] == "restored" and j["totals"]["updates"] == {"held": 1}
    assert "last_success_ts" not in j["totals"]  # it ended held: no success to report


def test_image_release_reads_the_header_not_the_name(tmp_path):
    bzimage(tmp_path / "vmlinuz-misnamed", "7.3.4+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP")
    assert facts.image_release(str(tmp_path / "vmlinuz-misnamed")) == "7.3.4+deb13-amd64"
    assert facts.image_version(str(tmp_path / "vmlinuz-misnamed")) == ("7.3.4+deb13-amd64", "#1 SMP")
    bzimage(tmp_path / "vmlinuz-debian", "6.12.48+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP "
            "PREEMPT_DYNAMIC Debian 6.12.48-1 (2025-09-20)")
    assert facts.image_version(str(tmp_path / "vmlinuz-debian"))[1] == "#1 SMP PREEMPT_DYNAMIC Debian 6.12.48-1 (2025-09-20)"
    (tmp_path / "notakernel").write_bytes(b"\0" * 0x400)
    assert facts.image_release(str(tmp_path / "notakernel")) is None
    assert facts.image_release(str(tmp_path / "missing")) is None


def test_staged_kernels_sort_by_version(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    for rel in ("6.9.1-amd64", "6.12.117+deb13-amd64", "7.3.4+deb13-amd64", "6.1.0-28-amd64"):
        (boot / ("vmlinuz-" + rel)).write_bytes(b"")
    (boot / "initrd.img-7.3.4+deb13-amd64").write_bytes(b"")
    staged = facts.staged_kernels(str(tmp_path))
    assert [s[0] for s in staged] == ["6.1.0-28-amd64", "6.9.1-amd64", "6.12.117+deb13-amd64", "7.3.4+deb13-amd64"]
    assert staged[-1][2].endswith("initrd.img-7.3.4+deb13-amd64") and staged[0][2] is None


def test_a_kernel_image_cut_short_is_refused(tmp_path):
    # Built like a bzImage: 4 setup sectors after the boot sector, 0x1000 paragraphs of kernel.
    data = bytearray(0x400)
    data[0x1F1] = 4
    data[0x1F4:0x1F8] = struct.pack("<I", 0x1000)
    data[0x202:0x206] = b"HdrS"
    whole = bytes(data) + b"\0" * (5 * 512 + 0x1000 * 16 - len(data))
    (tmp_path / "vmlinuz-whole").write_bytes(whole)
    (tmp_path / "vmlinuz-cut").write_bytes(whole[:len(whole) // 2])
    assert facts.image_problem(str(tmp_path / "vmlinuz-whole")) is None
    (tmp_path / "vmlinuz-crc").write_bytes(whole[:-12])  # syssize rounds up: a few bytes short is whole
    assert facts.image_problem(str(tmp_path / "vmlinuz-crc")) is None
    assert "is cut short: 34048 bytes, its header says 68096" in facts.image_problem(str(tmp_path / "vmlinuz-cut"))
    (tmp_path / "vmlinuz-none").write_bytes(b"\0" * 0x400)
    assert "not a bzImage" in facts.image_problem(str(tmp_path / "vmlinuz-none"))


def test_no_unit_test_reaches_the_real_kexec():
    from conftest import RealHostTouched
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import luo
    with pytest.raises(RealHostTouched):
        luo.reboot_kexec()
    with pytest.raises(RealHostTouched):
        luo.kexec_file_load("/boot/vmlinuz")
    assert hostupdate.ROOT != "/" and not os.path.exists(os.path.join(hostupdate.ROOT, "sys/kernel/kexec_loaded"))
