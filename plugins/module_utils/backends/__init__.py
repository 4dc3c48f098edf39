# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory backends: where a VM's RAM lives and how it survives kexec. One file per backend."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.guestmemfs import GuestmemfsBackend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.luo import LuoBackend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.pmem import PmemBackend

# The registry: a new backend is one file in this directory plus its class here.
BACKENDS = dict((cls.name, cls) for cls in (PmemBackend, GuestmemfsBackend, LuoBackend))
# The backend of a host that names none (roles and playbooks get it through the backend_spec filter).
DEFAULT_BACKEND = PmemBackend.name


def get_backend(name):
    """The backend class for ``name``; ValueError naming the known ones otherwise."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError("unknown memory backend %r: use one of %s" % (name, ", ".join(sorted(BACKENDS))))


def preserves_through_luo(name):
    """Whether backend ``name`` (None or unknown: no) preserves VM memory through /dev/liveupdate,
    held by the collection's memfd holder (what the preservability checks ask)."""
    return bool(getattr(BACKENDS.get(name), "luo_preserved", False))


def backend_of(vm):
    """The backend holding ``vm``'s memory (a cpr.VM), from its recorded configuration."""
    # A configuration written before vm_definition recorded the backend has none; the qemu_vm role
    # rewrites every configuration together with this agent, so only such leftovers (and unit tests'
    # minimal configurations) take the default.
    return get_backend(vm.backend or DEFAULT_BACKEND)


def by_backend(vms):
    """[(backend, [vm, ...])] for ``vms``, in the order their kexecs take precedence."""
    groups = {}
    for vm in vms:
        b = backend_of(vm)
        groups.setdefault(b.name, (b, []))[1].append(vm)
    return sorted(groups.values(), key=lambda g: (g[0].kexec_order, g[0].name))


def boot_drift(running_args, configured_args):
    """Boot arguments of any memory backend that the running kernel has and the boot configuration
    does not (or has with another value), one text each: the next cold boot (a crash, a power cut)
    would boot without them, and a carve-out lost that way destroys every VM's memory. [] when none,
    and when there is no boot configuration to compare with (``configured_args`` None)."""
    if configured_args is None:
        return []
    owners = [b() for b in BACKENDS.values()]
    out = []
    for arg in running_args:
        if arg in configured_args or not any(b.owns_arg(arg) for b in owners):
            continue
        name = arg.split("=", 1)[0]
        there = [c for c in configured_args if c.split("=", 1)[0] == name]
        out.append("%s runs now but the boot configuration lacks it (%s): the next cold boot would boot "
                   "without it" % (arg, "configured: " + " ".join(there) if there else "absent"))
    return out
