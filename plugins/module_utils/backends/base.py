# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The interface every memory backend implements: the data the modules, roles and templates ask
(``spec``) and the hooks the host agent calls. Nothing outside ``backends/`` asks a backend's name."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import abc
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import journal, luo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import MiB


class BackendError(Exception):
    """A request the backend cannot satisfy; the message says why and what to do."""


class Backend(abc.ABC):
    name = None
    # Kernel options (any one of each tuple) the running and the next kernel must have.
    required_kernel_options = ()
    # Granule of a carve-out and of each VM file.
    size_align = 2 * MiB
    # Largest single VM memory file, None when unlimited.
    max_file_bytes = None
    max_file_why = ""  # appended to the refusal of a larger VM
    # A backend without a filesystem (luo: one memfd per VM, held by the host agent) has nothing
    # to mount, no fstab entry and no VM files; callers check this before mount_spec/fstype.
    has_filesystem = True
    fstype = None
    # Whether the backend takes its memory out of the kernel's RAM at boot; luo's memory is
    # ordinary shmem, so its plan sizes VM memory, not a carve-out.
    carves_out = True
    # Whether its handover needs a KHO scratch area (``kho_scratch=``, sized by ``scratch_bytes``
    # for a carve-out, by the luo rule otherwise).
    takes_kho_scratch = False
    # Whether it preserves VM memory as memfds through /dev/liveupdate (LUO), held by the memfd holder.
    luo_preserved = False
    # Whether a kernel built for it needs KHO, with its options checked as the handover's (kernel_build).
    build_implies_kho = False

    def overhead_bytes(self, size):
        """Host RAM the backend consumes outside the carve-out for a carve-out of ``size`` (for a
        backend that carves nothing: besides the ``size`` bytes of VM memory it holds)."""
        return 0

    @abc.abstractmethod
    def cmdline_args(self, size, firmware_ram_ranges=None, kho_scratch=None):
        """Boot arguments that carve out ``size`` bytes (placed in ``firmware_ram_ranges`` where the
        backend places it), with the KHO scratch ``kho_scratch`` where the backend's handover needs
        one; BackendError when it cannot."""

    def owns_arg(self, arg):
        """Whether a cmdline argument is one this backend manages (to replace or remove it)."""
        return any(arg == a or arg.startswith(a + "=") for a in self.cmdline_names)

    cmdline_names = ()

    def next_kernel_args(self, running_args):
        """The arguments the kexec target's cmdline must carry, from the running ones.

        The default keeps all of them: a backend whose region must be reserved again (pmem) needs
        that; a backend whose region rides the handover overrides this to drop what would carve a
        second region (guestmemfs).
        """
        return list(running_args)

    @abc.abstractmethod
    def mount_spec(self, mount_point, device=None):
        """(source, fstype, options) for the backend's filesystem at ``mount_point``; BackendError
        for a backend without a filesystem."""

    # Whether a confined QEMU gets the VM's memory as a descriptor from the agent (its path is one
    # only root can follow) rather than opening the file itself.
    hands_memory_fd = False

    def vm_mem_path(self, name, mem_dir):
        """Where VM ``name``'s RAM is, for QEMU's memory-backend-file: one file per VM on the mount."""
        return "%s/%s.ram" % (mem_dir.rstrip("/"), name)

    # -- what roles, playbooks and unit templates ask (``spec``, the backend_spec filter)
    # Unit templates of the qemu_vm role the backend needs installed, enabled and started.
    units = ()
    # Units each VM unit, and the verify unit, Want and come After (never Requires: a restart of
    # such a unit must not stop the VMs).
    vm_unit_wants = ()
    verify_unit_wants = ()
    # Units of the qemu_vm role that only act at boot: installed and enabled, never started by the
    # role (pmem's early mount, which would otherwise mount what an operator unmounted on purpose).
    boot_units = ()
    # Whether each VM's memory is made by the backend's own service once its units run (qemu_vm
    # role) rather than as files on the mount (memory_backend role).
    memory_from_service = False
    # A handover prepared before the kernel is loaded and aborted when the update stops before
    # the kexec (kho_handover).
    prepares_handover = False
    # The boot argument whose region the handover carries to the next kernel: a host whose region
    # came that way needs no cold reboot although its cmdline lacks the argument.
    handover_region_arg = None
    # Kernel options the kernel_build role asks beyond required_kernel_options (the collection's
    # LUO kernel's extras, built for every backend whose kernel is not the RFC's).
    build_extra_options = ("CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD", "CONFIG_KEXEC_HANDOVER_DEBUGFS")

    def spec(self):
        """The backend as data, for YAML and templates (filter guestmemfs.liveupdate.backend_spec)."""
        return {"name": self.name, "has_filesystem": self.has_filesystem, "carves_out": self.carves_out,
                "fstype": self.fstype, "requires_mount": self.has_filesystem, "units": list(self.units),
                "vm_unit_wants": list(self.vm_unit_wants), "verify_unit_wants": list(self.verify_unit_wants),
                "boot_units": list(self.boot_units),
                # the glob under / of the device its filesystem is on (pmem's early mount waits for it)
                "block_devices": self.block_devices,
                "memory_from_service": self.memory_from_service, "prepares_handover": self.prepares_handover,
                "handover_region_arg": self.handover_region_arg,
                # Each VM's RAM, with {name} and {mem_dir} to fill in (tests and playbooks that read it).
                "vm_mem_path": self.vm_mem_path("{name}", "{mem_dir}"),
                "build_extra_options": list(self.build_extra_options),
                "required_kernel_options": [list(alts) for alts in self.required_kernel_options]}

    def plan_scratch(self, host, policy):
        """(bytes, where the number comes from) of the KHO scratch area a cold boot of ``host`` (the
        sizing playbook's facts) reserves beside the backend's memory under sizing ``policy``; (0,
        None) for a backend without one. BackendError or ValueError for a policy it refuses."""
        return 0, None

    # -- memory_backend and vm_memory (the mount and the VM files)
    # A glob under the host's root for the block device the filesystem is made on (None: no device).
    block_devices = None
    no_device_why = ""
    mkfs = None  # argv without the device
    # (file in /etc/modules-load.d, its text): drivers the mount needs early at boot, or None.
    modules_load = None
    fstab_options = "nofail"
    prewrite_files = False

    def mount_refusal(self, root="/"):
        """Why the backend must not be mounted on this boot, or None."""
        return None

    def unmount_refusal(self, mount):
        """Why ``mount`` (facts' backend_mount), if it is this backend's filesystem, must stay mounted."""
        return None

    def file_change_refusal(self, mounted, root="/"):
        """Why no VM memory file may be created or resized now, or None."""
        return None

    def service_memory(self):
        """A backend without a filesystem: {name: bytes} of the VM memory its service holds."""
        raise BackendError("the %s backend's VM memory lives on its filesystem" % self.name)

    def make_service_memory(self, name, size):
        """A backend without a filesystem: have its service make ``size`` bytes for VM ``name``."""
        raise BackendError("the %s backend's VM memory lives on its filesystem" % self.name)

    def resize_refusal(self, name, have, want):
        """Why VM ``name``'s memory of ``have`` bytes is not made ``want`` bytes in place."""
        return "VM %s: its memory is %d bytes, not %d; a VM's memory is not resized in place" % (name, have, want)

    # -- the kexec module's preflight (pure: facts in, refusals out)
    # Whether the target kernel's config is read and given to ``target_problems``.
    checks_target_kernel = False

    def mount_problems(self, mount, path):
        """Why the backend's mount (facts' backend_mount) cannot carry the VMs across a kexec."""
        return []

    def load_problems(self, host_facts):
        """Why loading the next kernel now would lose the VMs' memory (guestmemfs_facts' facts)."""
        return []

    def next_cmdline_problems(self, running_args, next_args):
        """Why the next kernel's cmdline would lose the VMs' memory."""
        return []

    def target_problems(self, running_kho, release, config, places, next_args, load_cmd):
        """Why the target kernel cannot take the VMs' memory over (see checks_target_kernel)."""
        return []

    # -- the host agent (module_utils/hostupdate) calls these for the VMs on this backend, read
    # from each VM's recorded configuration; ``vms`` are cpr.VM objects, ``root`` where the live
    # host's kernel files are (tests: a tree), ``j`` the update's journal.

    # Order among the backends of one host's VMs for the kexec itself (the lowest does it): a
    # backend whose kexec must come from a process of its own goes first.
    kexec_order = 100

    def before_pause(self, vms, update_id):
        """Before any VM pauses: what must happen so the VMs' memory outlives the kexec;
        {name: token} to record in the manifest. BackendError leaves every VM running."""
        return {}

    def abort(self, j):
        """Undo ``before_pause`` on this boot (the update stopped before the kexec)."""

    def kexec_problems(self, vms, j, root="/"):
        """Why the kexec would lose these VMs' memory now (the guard's refusals)."""
        return []

    def kexec(self, vms, j, run, root="/"):
        """Kexec into the loaded kernel. Returns an error text, or does not return (or returns
        None) when the kexec started. The default: journal it, sync, reboot(LINUX_REBOOT_CMD_KEXEC)
        from this process, without systemd's orderly shutdown. It is safe once the guard passed:
        every VM's QEMU quit after its save (no process maps its memory), each state and the
        journal are fsynced, and the sync writes back everything else; the filesystems are not
        unmounted and replay their (empty) journal at the next mount. The shutdown would add only
        blackout (tens of seconds: stopping every unit, unmounting the backend)."""
        journal.set_phase("kexec", kexec_ts=time.time(), kexec_via="reboot(LINUX_REBOOT_CMD_KEXEC)")
        try:
            luo.reboot_kexec()  # syncs first; returns only on failure
        except luo.LuoError as exc:
            return "the kexec did not start: %s" % exc
        return "reboot(LINUX_REBOOT_CMD_KEXEC) returned: the kexec did not start"

    def after_update(self, j):
        """Once every VM of an update is final on the new boot."""

    def start_refusal(self, vm, root="/"):
        """(exit code, text) when ``vm``'s unit must not start it on this boot, else None."""
        return None

    def file_size(self, vm_bytes):
        """The size a VM's memory file gets for ``vm_bytes`` of guest RAM."""
        rem = vm_bytes % self.size_align
        return vm_bytes + (self.size_align - rem if rem else 0)
