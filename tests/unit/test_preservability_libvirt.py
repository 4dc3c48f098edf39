"""libvirt-managed QEMU domains on a host: found from libvirtd's status file and from QEMU's argv,
both recorded on a fleet host running Debian trixie's libvirt 11.3 (docs/libvirt.md), and refused
by the preflight (vm_preservability) and by the host's own update (save and kexec) with the reason."""

import os
import shutil

import pytest
from conftest import FIXTURES, run_main

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo, hostupdate, journal
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import preservability as P
from ansible_collections.guestmemfs.liveupdate.plugins.modules import vm_preservability

# `virsh start vm1` of the domain XML in docs/libvirt.md: /proc/2583/{cmdline,comm} of its QEMU and
# /run/libvirt/qemu/vm1.{xml,pid}, copied as they were.
RECORDED = os.path.join(FIXTURES, "libvirt-11.3")
UUID = "d89db4cc-c336-4a9a-b00d-96172b5df5ab"
VM1 = {"name": "vm1", "uuid": UUID, "id": "1", "pid": 2583, "state": "running",
       "memory_backing": {"source": "file", "access": "shared"},
       "status": "/run/libvirt/qemu/vm1.xml", "argv": True}
REFUSAL = ("libvirt runs QEMU domain vm1 (pid 2583, uuid %s, /run/libvirt/qemu/vm1.xml): a kexec would "
           "end it and its memory. libvirt cannot carry it: it never sets migration mode cpr-reboot nor "
           "x-ignore-shared (its own restore of such a state fails), its save and managedsave copy all "
           "guest RAM into the image and stop the domain, and it deletes the domain's memory file in "
           "memory_backing_dir whenever its QEMU stops. Shut the domain down before the update and start "
           "it after (virsh shutdown vm1, virsh start vm1), or move it to a guestmemfs_vms definition; "
           "docs/libvirt.md" % UUID)


def tree(tmp_path, proc=True, run=True):
    """The recording, or part of it, as a host root."""
    root = tmp_path / "root"
    if proc:
        shutil.copytree(os.path.join(RECORDED, "proc"), str(root / "proc"))
    if run:
        shutil.copytree(os.path.join(RECORDED, "run"), str(root / "run"))
    root.mkdir(exist_ok=True)
    return str(root)


def test_the_recorded_domain_is_found_by_its_status_and_its_argv():
    assert hostinfo.libvirt_domains(RECORDED) == [VM1]


def test_a_domain_is_found_by_its_argv_alone(tmp_path):
    # A libvirtd whose status is elsewhere (a session daemon): QEMU's argv still says libvirt.
    assert hostinfo.libvirt_domains(tree(tmp_path, run=False)) == [dict(
        VM1, id=None, memory_backing=None, status=None)]


def test_a_status_file_without_its_qemu_names_no_running_domain(tmp_path):
    assert hostinfo.libvirt_domains(tree(tmp_path, proc=False)) == []


def test_the_collections_own_qemu_is_not_libvirts(tmp_path):
    root = tmp_path / "root"
    (root / "proc" / "900").mkdir(parents=True)
    (root / "proc" / "900" / "cmdline").write_bytes(b"\0".join([
        b"qemu-system-x86_64", b"-name", b"vm1", b"-nodefaults", b"-machine", b"pc-q35-10.0,memory-backend=ram0",
        b"-object", b"memory-backend-file,id=ram0,size=256M,mem-path=/mnt/vmmem/vm1.ram,share=on"]) + b"\0")
    assert hostinfo.libvirt_domains(str(root)) == []
    assert hostinfo.libvirt_domains(str(tmp_path / "nothing")) == []


def test_the_host_is_refused_with_what_libvirt_lacks_and_what_to_do():
    assert P.host_problems({"backend": "pmem", "meminfo": {}, "libvirt": [VM1]}) == [
        {"vm": None, "check": "libvirt", "blocks": True, "detail": REFUSAL}]


def test_host_facts_read_libvirt_under_the_root():
    facts = P.host_facts("pmem", proc=os.path.join(RECORDED, "proc"), device="/nonexistent", root=RECORDED)
    assert facts["libvirt"] == [VM1]


def test_the_preflight_module_refuses_the_host(tmp_path, monkeypatch, capsys):
    root = tree(tmp_path)
    monkeypatch.setattr(vm_preservability, "ROOT", root)
    monkeypatch.setattr(vm_preservability, "PROC", os.path.join(root, "proc"))
    monkeypatch.setattr(vm_preservability, "LIVEUPDATE_DEVICE", str(tmp_path / "liveupdate"))
    confs = tmp_path / "vms"
    confs.mkdir()
    rc, out = run_main(capsys, vm_preservability, {"conf_dir": str(confs), "argv_dir": str(tmp_path / "argv")})
    assert rc == 1
    assert out["msg"] == "host not updated: host: " + REFUSAL
    assert out["host"]["problems"] == [{"vm": None, "check": "libvirt", "blocks": True, "detail": REFUSAL}]
    assert out["preservable"] is False


@pytest.fixture
def agent_host(tmp_path, monkeypatch):
    """The host agent's view: the recorded libvirt domain under ROOT, one VM of the collection
    configured (not running), an idle journal."""
    root = tree(tmp_path)
    os.makedirs(os.path.join(root, "sys", "kernel"))
    with open(os.path.join(root, "sys", "kernel", "kexec_loaded"), "w") as fh:
        fh.write("1\n")
    monkeypatch.setattr(hostupdate, "ROOT", root)
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(journal, "boot_id", lambda: "boot-a")
    conf = tmp_path / "conf"
    conf.mkdir()
    mem = tmp_path / "vm9.ram"
    mem.write_bytes(b"\0" * 4096)
    (conf / "vm9.json").write_text('{"name": "vm9", "memory_bytes": 4096, "mem_path": "%s", "qmp": "%s", '
                                   '"state": "%s"}' % (mem, tmp_path / "vm9.qmp", tmp_path / "vm9.state"))
    return str(conf)


def test_the_agents_save_refuses_before_pausing_anything(agent_host):
    with pytest.raises(hostupdate.UpdateError) as exc:
        hostupdate.save_all(lambda argv: 0, conf_dir=agent_host)
    assert str(exc.value) == REFUSAL + ". Nothing was paused"


def test_the_agents_kexec_refuses(agent_host):
    err = hostupdate.kexec_now(lambda argv: 0, conf_dir=agent_host)
    assert err.startswith("not kexecing: ")
    assert REFUSAL in err


# -- what the refusal says, as the recorded runs show it (runs/, docs/libvirt.md) -------------------

def run_log(name):
    with open(os.path.join(RECORDED, "runs", name)) as fh:
        return fh.read()


def test_recorded_libvirt_knows_no_cpr_reboot_nor_x_ignore_shared():
    # grep -a -c in the binaries of trixie's 11.3 (installed) and trixie-backports' 12.9 (unpacked).
    lines = run_log("cpr-grep2.log").splitlines()
    libvirt = [line for line in lines if "libvirt" in line or "virsh" in line]
    assert len(libvirt) == 6 and all("cpr-reboot=0 cpr-transfer=0 x-ignore-shared=0" in line for line in libvirt)
    assert "qemu-system-x86_64 (10.0.13): cpr-reboot=3 x-ignore-shared=1" in lines


def test_recorded_libvirt_deletes_the_memory_file_when_qemu_stops():
    log = run_log("e2.log")
    assert "/mnt/vmmem/libvirt/libvirt/qemu/1-vm1/pc.ram" in log  # there while QEMU ran
    after = log.split("virsh domstate --reason vm1", 1)[1]
    assert "shut off (shutdown)" in after
    # The domain's directory is gone: the listing of its parent is empty.
    assert "/mnt/vmmem/libvirt/libvirt/qemu:\ntotal 0\n" in after and "1-vm1" not in after


def test_recorded_libvirt_12_9_deletes_the_memory_file_too():
    # trixie-backports' 12.9 installed over 11.3 (its qemu driver left unconfigured by the qemu.conf
    # prompt, its files in place), libvirtd restarted: the same QMP save and quit (runs/e6-12.9.log).
    log = run_log("e6-12.9.log")
    assert "Using library: libvirt 12.9.0" in log and "Using API: QEMU 12.9.0" in log
    assert '"mem-path":"/mnt/vmmem/libvirt/libvirt/qemu/1-vm1/pc.ram"' in log
    after = log.split('{"execute":"quit"}', 1)[1]
    assert "shut off (shutdown)" in after and "1-vm1" not in after


def test_recorded_libvirt_save_copies_the_ram_and_its_restore_makes_a_new_file():
    log = run_log("e5.log")
    assert '"state":false,"capability":"x-ignore-shared"' in log  # as libvirt runs the domain
    assert "34552\t/mnt/vmmem/libvirt/libvirt/qemu/4-vm1/pc.ram" in log  # RAM the guest touched (KiB)
    assert "-rw------- 1 root root 29197421 " in log and "shut off (saved)" in log  # ~28 MiB of it saved
    assert "262144\t/mnt/vmmem/libvirt/libvirt/qemu/5-vm1/pc.ram" in log  # restored into a new file
    assert log.rstrip().endswith("..")  # and destroy deleted it: the parent lists only . and ..


def test_recorded_libvirts_restore_of_an_x_ignore_shared_state_fails():
    log = run_log("e4.log")
    assert "Capability x-ignore-shared is off, but received capability is on" in log
    assert "shut off (saved)" in log and "Failed to restore domain" in log


def test_recorded_manual_path_kept_the_guest_and_the_uuid():
    # QMP save behind libvirt, a hard link kept the RAM, a hook linked it back, virsh create --paused
    # with -incoming defer, QMP migrate-incoming, virsh resume: same UUID, running, guest not rebooted.
    log = run_log("e3.log")
    assert log.count("UUID:           %s" % UUID) == 3
    assert "running (unpaused)" in log and '"status":"running","running":true' in log
    assert "<taint flag='custom-argv'/>" in log and "<taint flag='custom-monitor'/>" in log
    assert "Freeing initrd memory" in log  # where the guest's boot was at the save
    serial = run_log("e3-serial-after-restore.log")
    assert "Linux version" not in serial and "virtio_blk virtio1" in serial  # its boot went on


def test_recorded_live_run_on_the_fleet_host_found_the_domain_and_refused():
    # plugins/ copied to the host with vm1 running under libvirtd 11.3: hostinfo.libvirt_domains("/"),
    # host_problems(host_facts("pmem")), the agent's save_all and kexec_now (runs/live-detection.log).
    log = run_log("live-detection.log")
    live = REFUSAL.replace("pid 2583", "pid 3973")
    assert '"pid": 3973' in log and '"status": "/run/libvirt/qemu/vm1.xml"' in log
    assert "libvirt True " + live in log
    assert "agent save: " + live + ". Nothing was paused" in log
    assert "agent kexec: not kexecing: " in log and "; " + live + "; " in log
