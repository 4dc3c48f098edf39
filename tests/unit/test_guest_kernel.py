"""The fleet's real guest's kernel: scripts/guest-kernel prints the small kernel, or with
GUESTMEMFS_GUEST_KERNEL_VARIANT=novirtio the one with guest-novirtio.config too (the guest without
virtio devices), and the fragments it builds them from agree with each other."""

import os
import subprocess

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import kernel_build

from conftest import ROOT

FILES = os.path.join(ROOT, "roles", "kernel_build", "files")


def fragment(*names):
    text = ""
    for name in names:
        with open(os.path.join(FILES, name)) as fh:
            text += fh.read() + "\n"
    return dict(kernel_build.parse_fragment(text, " + ".join(names)))


def test_the_novirtio_fragment_adds_e1000_ahci_and_a_second_serial_port_without_contradicting_the_others():
    small = fragment("liveupdate-small.config", "fleet-small.config")
    both = fragment("liveupdate-small.config", "fleet-small.config", "guest-novirtio.config")
    added = dict((k, v) for k, v in both.items() if k not in small)
    assert added == {"CONFIG_ETHERNET": "y", "CONFIG_NET_VENDOR_INTEL": "y", "CONFIG_E1000": "y", "CONFIG_ATA": "y",
                     "CONFIG_SATA_AHCI": "y", "CONFIG_SCSI": "y", "CONFIG_BLK_DEV_SD": "y", "CONFIG_ATA_SFF": "n",
                     "CONFIG_SERIAL_8250_NR_UARTS": "4", "CONFIG_SERIAL_8250_RUNTIME_UARTS": "4"}
    # The virtio drivers stay: the same kernel runs the guest with them.
    assert all(both[k] == "y" for k in ("CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_CONSOLE"))


def test_guest_kernel_prints_the_variant_asked_for(tmp_path):
    for sub, name in (("a", "vmlinuz-7.3.4-small1"), ("b", "vmlinuz-7.3.4-small1nv")):
        (tmp_path / "out" / sub).mkdir(parents=True)
        (tmp_path / "out" / sub / name).write_bytes(b"")

    def guest_kernel(variant):
        env = dict(os.environ, GUESTMEMFS_KERNEL_BUILD_DIR=str(tmp_path), GUESTMEMFS_GUEST_KERNEL_VARIANT=variant)
        return subprocess.run([os.path.join(ROOT, "scripts", "guest-kernel")], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
    assert guest_kernel("").stdout == "%s/out/a/vmlinuz-7.3.4-small1\n" % tmp_path
    assert guest_kernel("novirtio").stdout == "%s/out/b/vmlinuz-7.3.4-small1nv\n" % tmp_path
    bad = guest_kernel("virtio")
    assert bad.returncode == 2 and "empty (the default) or novirtio" in bad.stderr
