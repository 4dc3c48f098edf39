#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guestmemfs_facts
short_description: Report what a hypervisor has for kexec live update
version_added: 0.1.0
description:
  - Reads C(/proc), C(/sys) and C(/boot) and returns the C(guestmemfs) fact.
  - Memory in total and per NUMA node, huge page sizes, the running kernel command line, the options
    of the running kernel's config that decide which backends work (kexec_file, KHO, LUO,
    guestmemfs, legacy pmem, DAX), which KHO interface is present and its state, and optionally a
    memory backend's mount with its capacity, usage and VM memory files.
  - Changes nothing on the host.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  mount_point:
    description:
      - Directory where the memory backend is (or will be) mounted.
      - When given, the fact carries C(backend_mount) with the mount's state and the files in it.
    type: path
  root:
    description:
      - Directory to read the kernel files under instead of C(/).
      - Meant for tests that replay a recorded host.
    type: path
    default: /
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
requirements:
  - Linux with C(/proc) and C(/sys)
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  facts:
    support: full
  idempotent:
    support: full
    description: Reading the facts changes nothing.
  platform:
    support: full
    platforms: posix
notes:
  - Runs on Linux hypervisors with Python 3.6 or newer; stdlib only.
seealso:
  - module: ansible.builtin.setup
"""

EXAMPLES = r"""
- name: Read the hypervisor's live-update facts
  guestmemfs.liveupdate.guestmemfs_facts:
    mount_point: /mnt/pmem

- name: Refuse a kernel without kexec_file_load
  ansible.builtin.assert:
    that: ansible_facts.guestmemfs.kexec_file
    fail_msg: the running kernel lacks CONFIG_KEXEC_FILE

- name: Refuse a host whose running kernel cannot preserve memfds (luo backend)
  ansible.builtin.assert:
    that: ansible_facts.guestmemfs.kho.liveupdate_device
    fail_msg: no /dev/liveupdate - boot a KHO+LUO kernel with kho=on liveupdate=on
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: dict
  contains:
    guestmemfs:
      description: What this hypervisor has.
      returned: always
      type: dict
      contains:
        kernel_release:
          description: C(uname -r) of the running kernel.
          type: str
          sample: 6.12.117+deb13-amd64
        boot_id:
          description: This boot's random id; a kexec changes it.
          type: str
        memory:
          description: C(total_bytes), C(available_bytes), C(numa_nodes) (each C(node), C(total_bytes),
            C(free_bytes)) and C(hugepage_sizes) in bytes.
          type: dict
        cmdline:
          description: The running command line, as text (C(running)), as a list (C(args)) and as a
            dict of name to list of values (C(options)); on GRUB hosts also the command line the GRUB
            default files configure for normal entries (C(configured)), whether a configured
            argument is not running (C(reboot_required)) and C(drift) - each memory backend's
            argument that runs (the carve-out) but is missing from the configuration; the next cold
            boot would boot without it and destroy every VM's memory.
          type: dict
        kernel_config:
          description: Each option that matters for live update, with C(n) when unset; null when no
            config was found.
          type: dict
          sample: {"CONFIG_KEXEC_FILE": "y", "CONFIG_KEXEC_HANDOVER": "y", "CONFIG_LIVEUPDATE": "y",
                   "CONFIG_LIVEUPDATE_MEMFD": "y", "CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT": "n"}
        kernel_config_source:
          description: Where the config was read from.
          type: str
          sample: /boot/config-6.12.117+deb13-amd64
        kexec_file:
          description: Whether the running kernel has kexec_file_load.
          type: bool
        kexec_loaded:
          description: Whether a kexec kernel is loaded now.
          type: bool
        guestmemfs_fs:
          description: Whether guestmemfs is in C(/proc/filesystems).
          type: bool
        kho:
          description:
            - Kexec handover (KHO) and the Live Update Orchestrator (LUO).
            - C(interface) - C(rfc) (the guestmemfs RFC's KHO v2, C(/sys/kernel/kho)), C(mainline)
              (C(CONFIG_KEXEC_HANDOVER), or its debugfs directory or C(/dev/liveupdate) seen) or null.
            - C(active) - the RFC's C(/sys/kernel/kho/active) (null on mainline); C(scratch_len) - the
              RFC's scratch length (RFC only).
            - C(handover) (RFC, once active) and C(incoming_handover) (RFC, after a KHO kexec) - what the
              handover's device tree (C(/sys/kernel/kho/dt), C(/sys/firmware/kho/dt)) carries - C(path),
              C(bytes), C(compatible), C(nodes) and C(guestmemfs) (C(regions) as C(base), C(bytes),
              C(flags); C(num_inodes)), or C(error) for a blob that does not parse.
            - C(enabled) - mainline KHO is on at this boot - true when debugfs C(kho/) or
              C(/dev/liveupdate) exists, else what the config and C(kho_flag) decide; null when
              neither is known.
            - C(kho_flag), C(liveupdate_flag) - C(kho=) and C(liveupdate=) on C(/proc/cmdline) as the
              kernel reads them (the last valid value wins; C(kho) defaults to
              C(CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT), C(liveupdate) to off).
            - C(kho_scratch) - the C(kho_scratch=) value on C(/proc/cmdline), or null.
            - C(liveupdate_device) - C(/dev/liveupdate) exists (KHO and LUO both on).
            - C(incoming) - this boot came from a KHO kexec; C(incoming_evidence) - what showed it -
              C(setup_data N type SETUP_KEXEC_KHO) (an entry of type C(0xa) under
              C(/sys/kernel/boot_params/setup_data), which kexec_file_load adds on x86; no debugfs
              needed), C(debugfs kho/in), or the RFC's C(/sys/firmware/kho/dt).
            - C(scratch_bytes) - the KHO scratch areas' total size from debugfs
              C(kho/out/scratch_len), null without debugfs. Fixed at the cold boot and handed down by
              every kexec after it.
          type: dict
          sample: {"interface": "mainline", "active": null, "enabled": true, "incoming": true,
                   "incoming_evidence": "setup_data 1 type SETUP_KEXEC_KHO", "liveupdate_device": true,
                   "kho_flag": true, "liveupdate_flag": true, "kho_scratch": null, "scratch_bytes": null}
        qemu_processes:
          description: Running QEMU system emulators (each C(pid), C(comm)); a cold reboot would kill them.
          type: list
          elements: dict
        vms_at_stake:
          description: What a cold reboot, a mkfs of the backend or a new manifest would destroy, one
            text each - an update in flight, a VM the journal has not finished with (saving, saved,
            restoring, held, restore_failed, not_started), a saved state file. Empty when nothing is at stake.
          type: list
          elements: str
        backend_mount:
          description: With I(mount_point), C(mounted), C(source), C(fstype), C(dax), C(size_bytes),
            C(free_bytes), C(used_bytes) and C(files) (each C(name), C(size_bytes), C(allocated_bytes)).
          type: dict
          returned: when I(mount_point) is given
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import gather


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mount_point=dict(type="path"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    if not os.path.isdir(module.params["root"]):
        module.fail_json(msg="root %s is not a directory" % module.params["root"])
    facts = gather(root=module.params["root"], mount_point=module.params["mount_point"],
                   run=module.run_command)
    module.exit_json(changed=False, ansible_facts={"guestmemfs": facts})


if __name__ == "__main__":
    main()
