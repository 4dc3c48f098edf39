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
