# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""guestmemfs (kernel RFC, 2024): ``guestmemfs=SIZE`` carves memory out at boot, the filesystem
is mounted with ``mount -t guestmemfs guestmemfs DIR``, and KHO carries its metadata across
kexec. The region rides the handover: repeating ``guestmemfs=`` on the kexec target's cmdline
would carve a second, unused region, so the next kernel's cmdline drops it.

The RFC's KHO v2 needs ``kho_scratch=SIZE`` on the cold boot: one CMA area the next kernel boots in
(its image, initramfs and early allocations), without which the activation fails with ENOMEM. The
area is taken from RAM beside the carve-out; the handover passes it on, so the kexec target's
cmdline drops it too."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import Backend, BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import GiB, MiB, format_size, parse_size


class GuestmemfsBackend(Backend):
    name = "guestmemfs"
    # KEXEC_KHO is the RFC's KHO v2; the FS registers its KHO notifier only with FTRACE_KHO.
    required_kernel_options = (("CONFIG_GUESTMEMFS_FS",), ("CONFIG_KEXEC_KHO",), ("CONFIG_FTRACE_KHO",),
                               ("CONFIG_KEXEC_FILE",))
    size_align = 2 * MiB  # guestmemfs allocates in 2 MiB blocks
    # One file's block map is one page of 8-byte entries: 512 blocks of 2 MiB. Measured on the RFC
    # kernel: 1 GiB exactly survives the handover; at 1 GiB + 2 MiB ftruncate still succeeds, the
    # 513th entry lands in the next page (another file's map: two files share a block; else an oops).
    max_file_bytes = 1 * GiB
    max_file_why = (": the RFC's block map holds 512 blocks of 2 MiB, and a larger file shares blocks with "
                    "another or oopses the kernel (give the VM at most 1 GiB)")
    fstype = "guestmemfs"
    cmdline_names = ("guestmemfs", "kho_scratch")
    # A Debian host's next kernel boots in the scratch area with its initramfs: 64 MiB is enough for a
    # tiny kernel and a small initramfs (measured), not for a distribution's.
    default_scratch = 256 * MiB

    def scratch_bytes(self, kho_scratch=None):
        """The KHO v2 scratch area for ``kho_scratch`` (a size; None: the default), in bytes."""
        if kho_scratch in (None, ""):
            return self.default_scratch
        try:
            size = parse_size(kho_scratch, "kho_scratch")
        except ValueError:
            size = 0
        if size < 16 * MiB or size % self.size_align:
            raise BackendError("kho_scratch=%s: the RFC's KHO takes one size, a multiple of 2 MiB and at least "
                               "16M (the next kernel boots in it)" % kho_scratch)
        return size

    def cmdline_args(self, size, firmware_ram_ranges=None, kho_scratch=None):
        if size <= 0 or size % self.size_align:
            raise BackendError("a guestmemfs carve-out must be a positive multiple of 2 MiB, not %d" % size)
        return ["guestmemfs=%s" % format_size(size), "kho_scratch=%s" % format_size(self.scratch_bytes(kho_scratch))]

    def next_kernel_args(self, running_args):
        return [a for a in running_args if not self.owns_arg(a)]

    def mount_spec(self, mount_point, device=None):
        return "guestmemfs", self.fstype, "defaults"
