# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Legacy persistent memory: ``memmap=SIZE!OFFSET`` turns a RAM range into /dev/pmemN on a stock
kernel. Its contents survive kexec only if the next kernel reserves the same range again, so the
kexec target's cmdline must carry the same ``memmap=`` (kexec_file_load hands over the firmware
e820, where the range is plain RAM)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from operator import itemgetter

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import Backend, BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import (
    GiB, MiB, align_down, align_up, format_size, human, parse_size)

# Legacy pmem is hot-added as ZONE_DEVICE memory in whole sections (128 MiB on x86_64).
SECTION = 128 * MiB
# Keep below-4G memory (DMA32, firmware, the kernel's usual load address) out of the carve-out.
LOW_LIMIT = 4 * GiB


class PmemBackend(Backend):
    name = "pmem"
    required_kernel_options = (("CONFIG_X86_PMEM_LEGACY",), ("CONFIG_BLK_DEV_PMEM",), ("CONFIG_FS_DAX",),
                               ("CONFIG_KEXEC_FILE",))
    size_align = SECTION
    fstype = "ext4"
    cmdline_names = ("memmap",)
    # memory_backend: the filesystem is made on /dev/pmemN, whose drivers load early.
    block_devices = "sys/block/pmem*"
    no_device_why = ("no /dev/pmem* device: the running kernel has no memmap=SIZE!OFFSET carve-out. Set it with "
                     "kernel_cmdline and cold-reboot (the memory_backend role does both with "
                     "memory_backend_reboot_ok=true)")
    mkfs = ("mkfs.ext4", "-q", "-F", "-L", "vmmem", "-m", "0")
    modules_load = ("guestmemfs-liveupdate-pmem.conf",
                    "# guestmemfs.liveupdate: legacy pmem early, so /dev/pmem* exists before its mount\nnd_e820\nnd_pmem\n")
    # At boot the mount is made as soon as the kernel has the device, not once udev's coldplug got to
    # it (the unit's own comment says how); fstab's entry stays the fallback.
    boot_units = ("guestmemfs-pmem-mount.service",)
    # The restore after a kexec waits for this mount. Seen on a loaded host: /dev/pmem0's by-uuid link
    # came 68 s into the boot, after a 60 s device timeout had failed the mount and with it every VM
    # unit. Wait long; nofail keeps the boot itself from waiting.
    fstab_options = "dax,noatime,nofail,x-systemd.device-timeout=15min"
    # vm_memory writes each file's new pages once: pre-written, not only truncated, is what survives best.
    prewrite_files = True

    def overhead_bytes(self, size):
        # fsdax with map=mem keeps a struct page (64 B) per 4 KiB page of pmem in RAM: 16 MiB/GiB.
        return size // 64

    def place(self, size, firmware_ram_ranges):
        """The offset of a ``size``-byte region: the top of the highest System RAM range above
        4 GiB that holds it, section-aligned. Deterministic, so a re-plan gives the same answer."""
        for start, end in sorted(firmware_ram_ranges, key=itemgetter(0), reverse=True):
            lo = max(align_up(start, SECTION), LOW_LIMIT)
            offset = align_down(end + 1 - size, SECTION)
            if offset >= lo:
                return offset
        largest = max([e + 1 - max(s, LOW_LIMIT) for s, e in firmware_ram_ranges] or [0])
        raise BackendError("no System RAM range above 4 GiB holds %s (largest: %s)"
                           % (human(size), human(max(largest, 0))))

    def cmdline_args(self, size, firmware_ram_ranges=None, kho_scratch=None):
        if kho_scratch not in (None, ""):
            raise BackendError("kho_scratch=%s: the pmem backend has no KHO handover" % kho_scratch)
        if size <= 0 or size % SECTION:
            raise BackendError("a pmem carve-out must be a positive multiple of 128 MiB, not %d" % size)
        if not firmware_ram_ranges:
            raise BackendError("the firmware memory map (/sys/firmware/memmap) is unknown: "
                               "cannot place memmap=")
        return ["memmap=%s!%s" % (format_size(size), format_size(self.place(size, firmware_ram_ranges)))]

    @staticmethod
    def parse_memmap(value):
        """'1G!4G' -> (size, offset) for a persistent-memory memmap=, None for other forms."""
        if "!" not in value:
            return None
        size, _sep, offset = value.partition("!")
        return parse_size(size, "memmap size"), parse_size(offset, "memmap offset")

    def mount_spec(self, mount_point, device=None):
        if not device:
            raise BackendError("the pmem backend needs its block device (e.g. /dev/pmem0)")
        return device, self.fstype, "dax,noatime"

    def mount_problems(self, mount, path):
        if mount.get("dax"):
            return []
        return ["%s is mounted without DAX (options %s): VM memory would sit in the page cache and not survive "
                "kexec" % (path, ",".join(mount.get("options", [])))]

    def next_cmdline_problems(self, running_args, next_args):
        running = [a for a in running_args if a.startswith("memmap=") and "!" in a]
        if not running:
            return ["the running cmdline has no memmap=SIZE!OFFSET: this boot has no pmem carve-out"]
        if [a for a in next_args if a.startswith("memmap=") and "!" in a] != running:
            asked = " ".join(a for a in next_args if a.startswith("memmap="))
            return ["the next cmdline's memmap= (%s) differs from the running one (%s): the next kernel would "
                    "overwrite the VMs' memory" % (asked, " ".join(running))]
        return []
