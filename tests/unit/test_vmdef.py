"""VM definitions: each refusal before anything changes, the exact argv a definition gives, and a
restore that uses the argv the VM was started with, never one rebuilt from a changed definition."""

import json
import re

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostupdate, journal, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.modules import vm_definition

from test_backends import run

REAL = {
    "name": "web1", "memory": "256M", "vcpus": 2, "machine": "pc-q35-10.0", "accel": "tcg", "cpu": "max",
    "disks": [{"path": "/var/lib/vms/web1.qcow2", "format": "qcow2"},
              {"path": "/var/lib/vms/data.raw", "format": "raw", "interface": "scsi", "cache": "writeback",
               "serial": "data1"}],
    "nics": [{"type": "bridge", "bridge": "br0", "mac": "52:54:00:12:34:56"}],
    "guest_agent": True,
    "kernel": "/var/lib/guest/vmlinuz", "initrd": "/var/lib/guest/initrd.img", "append": "console=ttyS0 memmap=8M$32M",
}


def conf(qemu_user=None, **kw):
    c = dict(vmdef.normalize(dict(REAL, **kw)), mem_path="/mnt/vmmem/web1.ram", backend="pmem")
    if qemu_user:  # what vm_definition adds from its qemu_user option
        c["qemu_user"] = qemu_user
    return c


def unconfined_start(name):
    """The argv's first part for a 2-vCPU 256M TCG VM ``name`` (RAM in /mnt/vmmem), up to its serial log."""
    return [
        "qemu-system-x86_64", "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "pc-q35-10.0,memory-backend=ram0", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "256M",
        "-object", "memory-backend-file,id=ram0,size=256M,mem-path=/mnt/vmmem/%s.ram,share=on" % name,
        "-qmp", "unix:/run/g/%s.qmp,server=on,wait=off" % name,
        "-chardev", "file,id=serial0,path=/var/log/guestmemfs-liveupdate/%s.serial.log,append=on" % name,
        "-serial", "chardev:serial0"]


def test_argv_is_exactly_what_the_definition_says_plus_what_live_update_needs():
    assert vmdef.build_argv(conf(), "/run/g") == unconfined_start("web1") + [
        "-drive", "file=/var/lib/vms/web1.qcow2,format=qcow2,if=none,id=disk0,cache=none",
        "-device", "virtio-blk-pci,drive=disk0,id=disk0-dev",
        "-drive", "file=/var/lib/vms/data.raw,format=raw,if=none,id=disk1,cache=writeback",
        "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=disk1,bus=scsi0.0,id=disk1-dev,serial=data1",
        "-netdev", "bridge,id=net0,br=br0", "-device", "virtio-net-pci,netdev=net0,id=net0-dev,mac=52:54:00:12:34:56",
        "-chardev", "socket,id=qga0,path=/run/g/web1.qga,server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        "-kernel", "/var/lib/guest/vmlinuz", "-initrd", "/var/lib/guest/initrd.img",
        "-append", "console=ttyS0 memmap=8M$32M"]


def test_production_defaults_are_kvm_host_cpu_no_quota_no_kernel():
    c = vmdef.normalize({"name": "db", "memory": "4G"})
    assert (c["accel"], c["cpu"], c["cpu_quota"], c["kernel"], c["vcpus"]) == ("kvm", "host", None, None, 1)
    argv = vmdef.build_argv(dict(c, mem_path="/m/db.ram"), "/run/g")
    assert argv[argv.index("-accel") + 1] == "kvm" and "-kernel" not in argv
    assert "CPUQuota" not in vmdef.units_dropin(dict(c, mem_path="/m/db.ram"))


def test_tap_and_user_nics():
    c = conf(nics=[{"type": "tap", "ifname": "tap-web1", "mac": "52:54:00:00:00:02"}, {"type": "user"}])
    argv = vmdef.build_argv(c, "/run/g")
    assert "tap,id=net0,ifname=tap-web1,script=no,downscript=no" in argv
    assert "user,id=net1" in argv and "virtio-net-pci,netdev=net1,id=net1-dev" in argv


# A guest without any virtio device (docs/qemu-update.md: a QEMU of 11.1 refuses the 1024-entry rings
# Debian's 10.0.13 gives every virtqueue): e1000 NIC, disks on AHCI, the agent on the second 16550.
NOVIRTIO = {
    "name": "vm1", "memory": "256M", "vcpus": 2, "machine": "pc-q35-10.0", "accel": "tcg", "cpu": "max",
    "disks": [{"path": "/var/lib/vms/vm1.raw", "format": "raw", "interface": "sata", "serial": "vm1-root"},
              {"path": "/var/lib/vms/vm1-data.qcow2", "format": "qcow2", "interface": "sata"}],
    "nics": [{"type": "bridge", "bridge": "br0", "mac": "52:54:00:78:01:01", "model": "e1000"}],
    "guest_agent": True, "guest_agent_port": "isa-serial",
}


def test_a_guest_without_virtio_has_an_e1000_nic_sata_disks_and_its_agent_on_an_isa_serial_port():
    c = dict(vmdef.normalize(NOVIRTIO), mem_path="/mnt/vmmem/vm1.ram", backend="pmem")
    assert vmdef.build_argv(c, "/run/g") == unconfined_start("vm1") + [
        "-drive", "file=/var/lib/vms/vm1.raw,format=raw,if=none,id=disk0,cache=none",
        "-device", "ich9-ahci,id=ahci0", "-device", "ide-hd,drive=disk0,bus=ahci0.0,id=disk0-dev,serial=vm1-root",
        "-drive", "file=/var/lib/vms/vm1-data.qcow2,format=qcow2,if=none,id=disk1,cache=none",
        "-device", "ide-hd,drive=disk1,bus=ahci0.1,id=disk1-dev",
        "-netdev", "bridge,id=net0,br=br0", "-device", "e1000,netdev=net0,id=net0-dev,mac=52:54:00:78:01:01",
        "-chardev", "socket,id=qga0,path=/run/g/vm1.qga,server=on,wait=off",
        "-device", "isa-serial,chardev=qga0,id=qga0-dev"]
    assert not any("virtio" in a for a in vmdef.build_argv(c, "/run/g"))


def test_a_confined_isa_serial_agent_listens_on_the_handed_socket():
    c = dict(vmdef.normalize(NOVIRTIO), mem_path="/mnt/vmmem/vm1.ram", backend="pmem", qemu_user="guestmemfs-qemu")
    argv = vmdef.build_argv(c, "/run/g")
    at = argv.index("socket,id=qga0,fd=5,server=on,wait=off")
    assert argv[at - 1:at + 3] == ["-chardev", "socket,id=qga0,fd=5,server=on,wait=off",
                                   "-device", "isa-serial,chardev=qga0,id=qga0-dev"]


def test_sata_ports_are_counted_among_sata_disks_only_and_the_agent_port_defaults_to_virtio_serial():
    c = conf(disks=[{"path": "/v/a.raw", "format": "raw"}, {"path": "/v/b.raw", "format": "raw", "interface": "sata"}])
    argv = vmdef.build_argv(c, "/run/g")
    assert argv.count("ich9-ahci,id=ahci0") == 1 and "ide-hd,drive=disk1,bus=ahci0.0,id=disk1-dev" in argv
    assert c["guest_agent_port"] == "virtio-serial"
    # A configuration written before the key existed builds the virtio-serial channel it always had.
    old = dict(conf())
    del old["guest_agent_port"]
    assert vmdef.build_argv(old, "/run/g") == vmdef.build_argv(conf(), "/run/g")
    # The agent's port alone, without guest_agent: the defaults may name it for every VM.
    assert "qga0" not in " ".join(vmdef.build_argv(conf(guest_agent=False, guest_agent_port="isa-serial"), "/run/g"))


@pytest.mark.parametrize("change,msg", [
    ({"name": "Web 1"}, "a VM name is"),
    ({"name": "../etc"}, "a VM name is"),
    ({"memory": "lots"}, "not a size"),
    ({"memory": "1000K"}, "whole number of MiB"),
    ({"vcpus": 0}, "vcpus must be"),
    ({"machine": "q35"}, "not a versioned machine type"),
    ({"accel": "hvf"}, "accel must be one of kvm, tcg"),
    ({"disks": [{"path": "web1.qcow2", "format": "qcow2"}]}, "absolute path"),
    ({"disks": [{"path": "/a,b", "format": "raw"}]}, "','"),
    ({"disks": [{"path": "/a"}]}, "needs path and format"),
    ({"disks": [{"path": "/a", "format": "vmdk"}]}, "format must be one of raw, qcow2"),
    ({"disks": [{"path": "/a", "format": "raw", "bus": "ide"}]}, "unknown keys bus"),
    ({"disks": [{"path": "/a", "format": "raw"}, {"path": "/a", "format": "raw"}]}, "appears twice"),
    ({"nics": [{"type": "bridge", "bridge": "br0"}]}, "needs a fixed mac"),
    ({"nics": [{"type": "bridge", "bridge": "br0", "mac": "53:54:00:12:34:56"}]}, "not a unicast MAC"),
    ({"nics": [{"type": "bridge", "mac": "52:54:00:12:34:56"}]}, "needs bridge"),
    ({"nics": [{"type": "tap", "mac": "52:54:00:12:34:56"}]}, "needs ifname"),
    ({"nics": [{"type": "vhost-user", "mac": "52:54:00:12:34:56"}]}, "type must be one of bridge, tap, user"),
    ({"extra_args": ["-m", "8G"]}, "-m contradicts live update"),
    ({"extra_args": ["-object", "memory-backend-ram,id=mem1,size=1G"]}, "contradicts live update"),
    ({"extra_args": ["-incoming", "tcp:0:4444"]}, "-incoming contradicts"),
    ({"extra_args": ["-qmp", "tcp:0:4444"]}, "owns the VM's QMP socket"),
    ({"extra_args": ["-machine", "q35"]}, "machine type is the definition's"),
    ({"extra_args": ["-device", "e1000\n[Service]"]}, "newline"),
    ({"append": "console=ttyS0\nExecStartPre=/bin/evil"}, "newline"),
    ({"kernel": None}, "initrd and append need kernel"),
    ({"cpu_quota": "fast"}, "cpu_quota must be a percentage"),
    ({"unpreservable": "ignore"}, "unpreservable must be one of refuse, skip, shutdown"),
    ({"hugepages": True}, "unknown keys in the definition: hugepages"),
    ({"disks": [{"path": "/a", "format": "raw", "interface": "ide"}]},
     "disks[0].interface must be one of virtio, scsi, sata, not 'ide'"),
    ({"disks": [{"path": "/a", "format": "raw", "interface": "sata", "readonly": True}]},
     "disks[0] on sata cannot be read-only"),
    ({"disks": [{"path": "/d%d" % i, "format": "raw", "interface": "sata"} for i in range(7)]},
     "disks[6]: at most 6 sata disks"),
    ({"guest_agent_port": "virtio-console"}, "guest_agent_port must be one of virtio-serial, isa-serial"),
])
def test_a_definition_that_cannot_run_under_live_update_is_refused(change, msg):
    with pytest.raises(vmdef.VMDefError) as exc:
        vmdef.normalize(dict(REAL, **change))
    assert msg in str(exc.value)


def test_across_vms_names_disks_and_macs_are_unique():
    a = dict(REAL)
    with pytest.raises(vmdef.VMDefError, match="defined twice"):
        vmdef.normalize_all([a, dict(a)])
    with pytest.raises(vmdef.VMDefError, match="disk /var/lib/vms/web1.qcow2 is used by both web1 and web2"):
        vmdef.normalize_all([a, dict(a, name="web2", nics=[])])
    with pytest.raises(vmdef.VMDefError, match="MAC 52:54:00:12:34:56 is used by both"):
        vmdef.normalize_all([a, dict(a, name="web2", disks=[])])


def test_unit_dropin_orders_the_vm_after_its_mounts_not_after_its_bridges_udev_devices():
    text = vmdef.units_dropin(conf(cpu_quota="150%"))
    assert "RequiresMountsFor=/var/lib/guest /var/lib/vms /var/log/guestmemfs-liveupdate\n" in text
    # the agent waits for the bridge itself (confine.wait_for_interfaces), not for udev to reach it
    assert "sys-subsystem-net-devices" not in text
    # The quota is not the unit's: it would hold the restore inside the blackout (cpu_quota.py).
    assert "CPUQuota" not in text


def module_args(tmp_path, vms, **kw):
    args = {"vms": vms, "backend": "pmem", "mem_dir": "/mnt/vmmem", "conf_dir": str(tmp_path / "conf"),
            "unit_dir": str(tmp_path / "units"), "argv_dir": str(tmp_path / "argv")}
    args.update(kw)
    return args


def test_module_refuses_a_bad_definition_and_writes_nothing(tmp_path, capsys):
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [REAL, dict(REAL, name="bad", machine="pc")]))
    assert rc == 1 and "VM bad: machine 'pc' is not a versioned machine type" in out["msg"]
    assert "Nothing was changed" in out["msg"] and not (tmp_path / "conf").exists()


def test_module_writes_configuration_and_dropin_idempotently_and_reports_restart_needed(tmp_path, capsys):
    args = module_args(tmp_path, [REAL], defaults={"cpu_quota": "20%"})
    rc, out = run(capsys, vm_definition, args)
    assert rc == 0 and out["changed"] and out["bridges"] == ["br0"]
    written = json.loads((tmp_path / "conf" / "web1.json").read_text())
    assert written["mem_path"] == "/mnt/vmmem/web1.ram" and written["backend"] == "pmem"
    assert written["cpu_quota"] == "20%" and written["vcpus"] == 2
    dropin = tmp_path / "units" / "guestmemfs-vm@web1.service.d" / "10-definition.conf"
    assert "CPUQuota" not in dropin.read_text()  # set at run time (cpu_quota.py)
    rc, out = run(capsys, vm_definition, args)
    assert rc == 0 and not out["changed"] and not out["vms"]["web1"]["restart_needed"]
    # The VM was started with this argv; the operator then adds a NIC: the running VM keeps its argv.
    (tmp_path / "argv").mkdir()
    (tmp_path / "argv" / "web1.json").write_text(json.dumps({"argv": out["vms"]["web1"]["argv"]}))
    more = dict(REAL, nics=REAL["nics"] + [{"type": "bridge", "bridge": "br1", "mac": "52:54:00:12:34:57"}])
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [more]))
    assert rc == 0 and out["changed"] and out["vms"]["web1"]["restart_needed"]


def test_module_luo_puts_ram_on_the_holders_memfd(tmp_path, capsys):
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [REAL], backend="luo"))
    assert rc == 0
    written = json.loads((tmp_path / "conf" / "web1.json").read_text())
    assert written["mem_path"] == "/run/guestmemfs-liveupdate/luo/web1"


def test_module_check_mode_changes_nothing(tmp_path, capsys):
    rc, out = run(capsys, vm_definition, dict(module_args(tmp_path, [REAL]), _ansible_check_mode=True))
    assert rc == 0 and out["changed"] and not (tmp_path / "conf").exists()


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(hostupdate, "ARGV_DIR", str(tmp_path / "argv"))
    monkeypatch.setattr(journal, "boot_id", lambda: "boot-a")
    execs = []

    def fake_exec(prog, argv):
        execs.append(argv)
        raise SystemExit(0)
    monkeypatch.setattr(hostupdate.os, "execvp", fake_exec)
    # its bridge br0 is this machine's only as far as the wait for it goes (test_confine_qemu: a real one)
    monkeypatch.setattr(hostupdate.confine, "_interface_exists", lambda name: name == "br0")
    (tmp_path / "conf").mkdir()
    c = conf()
    c["state"] = str(tmp_path / "web1.state")
    (tmp_path / "conf" / "web1.json").write_text(json.dumps(c))
    return {"dir": tmp_path, "conf": str(tmp_path / "conf"), "execs": execs, "c": c}


def test_cold_start_records_its_argv_and_restore_uses_it_not_a_changed_definition(host):
    with pytest.raises(SystemExit):
        hostupdate.vm_run("web1", conf_dir=host["conf"])
    started = host["execs"][0]
    assert vmdef.load_argv("web1", hostupdate.ARGV_DIR) == started and "-incoming" not in started
    # The definition changes while the VM runs (more memory, another CPU model) ...
    changed = dict(host["c"], memory_bytes=512 << 20, cpu="qemu64")
    (host["dir"] / "conf" / "web1.json").write_text(json.dumps(changed))
    # ... the save journals the argv the VM runs with ...
    vm = hostupdate.cpr.VM.load("web1", host["conf"])
    assert hostupdate.started_argv(vm) == (started, "recorded")
    open(host["c"]["state"], "w").close()
    rec = {"state": "restoring", "argv": started, "verified_boot_id": "boot-a"}  # verified on this boot
    hostupdate.update_journal(lambda j: j.update({"vms": {"web1": rec}}))
    # ... and the restore starts exactly that, with -incoming defer.
    with pytest.raises(SystemExit):
        hostupdate.vm_run("web1", conf_dir=host["conf"])
    assert host["execs"][1] == started + ["-incoming", "defer"]


SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def test_a_confined_argv_names_the_handed_descriptors_and_the_sandbox_and_nothing_else_changes():
    assert vmdef.build_argv(conf(qemu_user="guestmemfs-qemu"), "/run/g") == [
        "qemu-system-x86_64", "-name", "web1", "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "pc-q35-10.0,memory-backend=ram0", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "256M",
        "-object", "memory-backend-file,id=ram0,size=256M,mem-path=/mnt/vmmem/web1.ram,share=on",
        "-sandbox", SANDBOX,
        "-chardev", "socket,id=qmp0,fd=4,server=on,wait=off", "-mon", "chardev=qmp0,mode=control",
        "-chardev", "file,id=serial0,path=/var/log/guestmemfs-liveupdate/web1.serial.log,append=on",
        "-serial", "chardev:serial0",
        "-drive", "file=/var/lib/vms/web1.qcow2,format=qcow2,if=none,id=disk0,cache=none",
        "-device", "virtio-blk-pci,drive=disk0,id=disk0-dev",
        "-drive", "file=/var/lib/vms/data.raw,format=raw,if=none,id=disk1,cache=writeback",
        "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=disk1,bus=scsi0.0,id=disk1-dev,serial=data1",
        "-netdev", "tap,id=net0,fd=6", "-device", "virtio-net-pci,netdev=net0,id=net0-dev,mac=52:54:00:12:34:56",
        "-chardev", "socket,id=qga0,fd=5,server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        "-kernel", "/var/lib/guest/vmlinuz", "-initrd", "/var/lib/guest/initrd.img",
        "-append", "console=ttyS0 memmap=8M$32M"]
    want = {"user": "guestmemfs-qemu", "nics": {"6": {"bridge": "br0"}}}
    assert vmdef.launch(conf(qemu_user="guestmemfs-qemu")) == want


def test_root_is_the_unconfined_argv_of_before_and_no_launch():
    assert vmdef.build_argv(conf(qemu_user="root"), "/run/g") == vmdef.build_argv(conf(), "/run/g")
    assert vmdef.launch(conf(qemu_user="root")) is None and vmdef.launch(conf()) is None


def test_a_confined_luo_vm_maps_the_memfd_the_agent_hands_over_and_tap_nics_are_handed_too():
    c = dict(conf(qemu_user="u1", nics=[{"type": "tap", "ifname": "tap-web1", "mac": "52:54:00:00:00:02"},
                                        {"type": "user"}]),
             mem_path="/run/guestmemfs-liveupdate/luo/web1", mem_fd=True)
    argv = vmdef.build_argv(c, "/run/g")
    assert "memory-backend-file,id=ram0,size=256M,mem-path=/proc/self/fd/3,share=on" in argv
    assert argv[argv.index("tap,id=net0,fd=6") - 1] == "-netdev" and "user,id=net1" in argv
    assert vmdef.launch(c) == {"user": "u1", "nics": {"6": {"tap": "tap-web1"}}}


@pytest.mark.parametrize("arg,why", [
    ("tap,id=x,ifname=t0,script=/etc/qemu-ifup", "a tap script is a program QEMU would spawn"),
    ("tap,id=x,helper=/usr/lib/qemu/qemu-bridge-helper", "a network helper"),
    ("bridge,id=x,br=br1", "-netdev bridge spawns the setuid bridge helper"),
    ("tap,id=x,ifname=t0,vhost=on", "vhost-net needs /dev/vhost-net"),
    ("socket,id=c,fd=7", "the collection numbers the descriptors"),
    ("exec:cat", "exec: spawns a program"),
])
def test_extra_args_a_confined_qemu_cannot_run_are_refused_with_the_opt_out(arg, why):
    c = conf(qemu_user="guestmemfs-qemu", extra_args=["-netdev", arg])
    with pytest.raises(vmdef.VMDefError, match=re.escape(why)) as exc:
        vmdef.check_confinable(c)
    assert "extra_args[1]" in str(exc.value) and "guestmemfs_qemu_user: root" in str(exc.value)
    assert vmdef.check_confinable(conf(extra_args=["-netdev", "tap,id=x,ifname=t0,script=no,downscript=no"]))


@pytest.mark.parametrize("arg", ["-sandbox", "-runas", "-run-with", "-chroot", "-add-fd"])
def test_the_user_and_the_sandbox_are_the_collections(arg):
    with pytest.raises(vmdef.VMDefError, match="contradicts live update"):
        conf(extra_args=[arg, "x"])


def test_unit_dropin_makes_the_disks_and_the_serial_log_writable_under_the_hardened_unit():
    assert vmdef.units_dropin(conf(cpu_quota="150%")) == (
        "# Written by guestmemfs.liveupdate from the VM's definition.\n"
        "[Unit]\n"
        "RequiresMountsFor=/var/lib/guest /var/lib/vms /var/log/guestmemfs-liveupdate\n"
        "\n"
        "[Service]\n"
        "ReadWritePaths=-/var/lib/vms -/var/log/guestmemfs-liveupdate\n")
    text = vmdef.units_dropin(conf(disks=[{"path": "/dev/vg0/web1", "format": "raw"},
                                          {"path": "/home/ops/seed.raw", "format": "raw", "readonly": True}],
                                   serial_log="/tmp/web1.log", nics=[]))
    assert text.split("[Service]\n")[1] == ("ReadWritePaths=-/home/ops -/tmp\n"
                                            "DeviceAllow=/dev/vg0/web1 rw\n"
                                            "ProtectHome=no\n"
                                            "TemporaryFileSystem=\n")


def test_module_confines_by_default_and_hands_a_luo_memfd(tmp_path, capsys):
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [dict(REAL, nics=[])], backend="luo"))
    assert rc == 0
    written = json.loads((tmp_path / "conf" / "web1.json").read_text())
    assert (written["qemu_user"], written["mem_fd"]) == ("guestmemfs-qemu", True)
    argv = out["vms"]["web1"]["argv"]
    assert "-sandbox" in argv and "memory-backend-file,id=ram0,size=256M,mem-path=/proc/self/fd/3,share=on" in argv
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [dict(REAL, nics=[])], qemu_user="root"))
    written = json.loads((tmp_path / "conf" / "web1.json").read_text())
    assert rc == 0 and written["qemu_user"] == "root" and "mem_fd" not in written
    assert "-sandbox" not in out["vms"]["web1"]["argv"]


def test_module_refuses_what_a_confined_qemu_cannot_run_and_writes_nothing(tmp_path, capsys):
    vm = dict(REAL, extra_args=["-netdev", "bridge,id=x,br=br1"])
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [vm]))
    assert rc == 1 and "cannot run in a confined QEMU" in out["msg"] and "Nothing was changed" in out["msg"]
    assert not (tmp_path / "conf").exists()
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [vm], qemu_user="root"))
    assert rc == 0
    rc, out = run(capsys, vm_definition, module_args(tmp_path, [REAL], qemu_user="bad\nuser"))
    assert rc == 1 and "is not a system user name" in out["msg"]


@pytest.mark.parametrize("backend", ["pmem", "guestmemfs", "luo"])
def test_a_confined_argv_is_preservable_on_every_backend(backend):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import preservability
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
    b = get_backend(backend)
    c = dict(conf(qemu_user="guestmemfs-qemu"), backend=backend, mem_path=b.vm_mem_path("web1", "/mnt/vmmem"))
    if b.hands_memory_fd:
        c["mem_fd"] = True
    assert preservability.argv_problems(c, vmdef.build_argv(c, "/run/g"), backend) == []
    # the descriptor path is accepted only where the agent hands the memory over
    c.pop("mem_fd", None)
    argv = [a.replace("mem-path=%s," % c["mem_path"], "mem-path=/proc/self/fd/3,") for a in vmdef.build_argv(c, "/run/g")]
    found = preservability.argv_problems(c, argv, backend)
    assert "is not the VM's backend file" in " ".join(p["detail"] if isinstance(p, dict) else str(p) for p in found)
