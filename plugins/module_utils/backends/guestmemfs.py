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

import os

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo, kho
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
    takes_kho_scratch = True
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

    def plan_scratch(self, host, policy):
        return self.scratch_bytes(policy.get("kho_scratch")), "kho_scratch" if policy.get("kho_scratch") else "default"

    def cmdline_args(self, size, firmware_ram_ranges=None, kho_scratch=None):
        if size <= 0 or size % self.size_align:
            raise BackendError("a guestmemfs carve-out must be a positive multiple of 2 MiB, not %d" % size)
        return ["guestmemfs=%s" % format_size(size), "kho_scratch=%s" % format_size(self.scratch_bytes(kho_scratch))]

    def next_kernel_args(self, running_args):
        return [a for a in running_args if not self.owns_arg(a)]

    def mount_spec(self, mount_point, device=None):
        return "guestmemfs", self.fstype, "defaults"

    # Stops the VMs before the shutdown drops guestmemfs' dentries (see that unit).
    units = ("guestmemfs-umount-guard.service",)
    vm_unit_wants = units
    prepares_handover = True
    handover_region_arg = "guestmemfs"
    build_extra_options = ()  # the RFC kernel has none of the LUO extras

    def mount_refusal(self, root="/"):
        return kho.guestmemfs_region_refusal(root)

    def unmount_refusal(self, mount):
        if mount.get("fstype") != self.fstype:
            return None
        # d_genocide in kill_litter_super takes a reference the RFC's lookup never gave: the umount
        # spins in the kernel forever, holding the super block, and every later sync hangs on it.
        return ("the guestmemfs RFC's umount never returns once a file on it was opened by path (then every sync on "
                "the host hangs too). Leave it mounted; it goes away with the next kexec or reboot")

    def file_change_refusal(self, mounted, root="/"):
        if hostinfo.kho_active(root):
            # The RFC returns success for a create or truncate after the activation and corrupts the
            # directory the next kernel inherits.
            return ("the KHO handover is active (/sys/kernel/kho/active is 1): no guestmemfs file may be created or "
                    "resized until it ends (the kexec, or kho_handover state=inactive after unloading the kernel)")
        return kho.guestmemfs_region_refusal(root) if mounted else None

    def load_problems(self, host_facts):
        if host_facts["kho"]["interface"] != "rfc":
            return ["no KHO interface (/sys/kernel/kho/active): the guestmemfs handover cannot happen"]
        if not host_facts["kho"]["active"]:
            # kexec_file_load copies the handover into the image it loads: one loaded before the
            # activation carries none, and its kexec loses every guestmemfs file.
            return ["KHO is not active: activate the handover first (kho_handover), then load; a kernel "
                    "loaded before the activation carries no guestmemfs files"]
        return []

    # -- the host agent
    # Before reboot(2): systemd's shutdown would hang on the RFC's umount.
    kexec_order = 50

    def on_mount(self, vms, root="/"):
        """The names of ``vms`` whose memory file lies on a guestmemfs mount."""
        mounts = hostinfo.mounts(root)
        out = []
        for vm in vms:
            m = hostinfo.mount_containing(mounts, vm.mem_path or "/")
            if m and m["fstype"] == self.fstype:
                out.append(vm.name)
        return out

    def kexec_problems(self, vms, j, root="/"):
        on_mount = self.on_mount(vms, root)
        if on_mount and not hostinfo.kho_active(root):
            # Without the handover the next kernel boots with guestmemfs empty: every file is lost.
            return ["%s on guestmemfs but its KHO handover is not active (%s): activate it, load the kernel "
                    "again, then kexec" % (", ".join(on_mount), hostinfo.KHO_ACTIVE)]
        return []

    # The kexec is the default one (reboot(2) without systemd's shutdown), which guestmemfs needs:
    # systemd's shutdown unmounts guestmemfs, and the RFC's umount never returns once a file was
    # opened by path (then sync hangs too, on the same super block), so the kexec would never come.

    def start_refusal(self, vm, root="/"):
        if not self.on_mount([vm], root):
            return None
        refusal = kho.guestmemfs_region_refusal(root)
        if refusal:
            return 6, "%s NOT started: %s. Its memory file %s and any saved state are kept." % (
                vm.name, refusal, vm.mem_path)
        refusal = file_refusal(vm)
        if refusal:
            return 7, refusal
        return None


def file_refusal(vm):
    """Why ``vm`` must not start on its guestmemfs file, or None. QEMU would create a missing file
    itself, and on the RFC that file keeps size 0 and no blocks: the VM then runs on blocks no file
    owns (measured after a cold boot, where the region starts empty). Only vm_memory's create +
    truncate, or the handover, gives a file its blocks."""
    try:
        have = os.stat(vm.mem_path).st_size
    except OSError:
        have = None
    want = GuestmemfsBackend().file_size(vm.memory_bytes)  # what vm_memory makes: whole 2 MiB blocks
    if have == want:
        return None
    size = "is missing" if have is None else "has %d bytes" % have
    rounded = "" if want == vm.memory_bytes else " rounded up to whole 2 MiB blocks (%d)" % want
    return ("%s NOT started: its guestmemfs file %s %s, not the VM's %d bytes%s (after a cold boot the region "
            "starts empty). Any saved state is kept. Recover: run the prepare playbook (vm_memory creates and sizes "
            "the file), then start the unit" % (vm.name, vm.mem_path, size, vm.memory_bytes, rounded))
