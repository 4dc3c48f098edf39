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
