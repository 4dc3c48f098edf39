"""What the default scenario leaves on each fleet hypervisor (testinfra, over Ansible)."""

import json
import re


def test_kernel_has_kexec_file(host):
    release = host.check_output("uname -r")
    config = host.file(f"/boot/config-{release}").content_string
    assert "CONFIG_KEXEC_FILE=y" in config


def test_qemu_is_new_enough_for_cpr_reboot(host):
    out = host.check_output("qemu-system-x86_64 --version")
    major, minor = map(int, re.search(r"version (\d+)\.(\d+)", out).groups())
    assert (major, minor) >= (10, 0)


def test_packages_installed(host):
    for name in ("kexec-tools", "qemu-system-x86", "ndctl"):
        assert host.package(name).is_installed


def test_came_back_from_kexec(host):
    before = host.file("/var/lib/molecule-boot-before-kexec").content_string.strip()
    now = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    assert before and now and before != now
    # kexec skips firmware and GRUB: the kernel came up with the command line kexec passed on.
    assert "BOOT_IMAGE=" not in host.file("/proc/cmdline").content_string


def test_facts_module_reports_this_host(host):
    result = host.ansible("guestmemfs.liveupdate.guestmemfs_facts", "mount_point=/", check=False)
    facts = result["ansible_facts"]["guestmemfs"]
    assert facts["kexec_file"] is True
    assert facts["boot_id"] == host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    assert facts["memory"]["total_bytes"] > 3 * 2**30
    assert facts["backend_mount"]["mounted"] is True
    assert json.dumps(facts)


def test_hostname_from_inventory(host):
    assert host.check_output("hostname") == host.backend.get_hostname()


def test_pmem_carveout_on_running_and_configured_cmdline(host):
    running = host.file("/proc/cmdline").content_string.split()
    memmap = [a for a in running if a.startswith("memmap=")]
    assert memmap and "!" in memmap[0]
    dropin = host.file("/etc/default/grub.d/99-guestmemfs-liveupdate.cfg").content_string
    assert memmap[0] in dropin
    assert memmap[0] in host.file("/boot/grub/grub.cfg").content_string


def test_pmem_mounted_with_dax_from_fstab(host):
    mounts = [line.split() for line in host.file("/proc/mounts").content_string.splitlines()]
    entry = next(m for m in mounts if m[1] == "/mnt/vmmem")
    assert entry[0].startswith("/dev/pmem") and entry[2] == "ext4" and "dax=always" in entry[3].split(",")
    assert "/mnt/vmmem ext4 dax" in host.file("/etc/fstab").content_string
    assert "nd_pmem" in host.file("/etc/modules-load.d/guestmemfs-liveupdate-pmem.conf").content_string


def test_vm_memory_files(host):
    for name in ("vm1", "vm2"):
        f = host.file(f"/mnt/vmmem/{name}.ram")
        assert f.exists and f.size == 256 * 2**20 and f.mode == 0o600


def test_pmem_contents_survived_kexec(host):
    # side_effect kexec'd with --reuse-cmdline, so memmap= was on the next kernel's cmdline too: the
    # filesystem on the carve-out was mounted again from fstab and the pattern reads back intact.
    assert host.mount_point("/mnt/vmmem").exists
    before = host.file("/var/lib/molecule-marker.sha256").content_string.strip()
    assert len(before) == 64
    assert host.check_output("sha256sum /mnt/vmmem/kexec-marker").split()[0] == before
