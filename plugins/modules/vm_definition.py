#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm_definition
short_description: Check VM definitions and write each VM's configuration on its hypervisor
version_added: 0.2.0
description:
  - Checks every definition first (name, memory, vCPUs, versioned machine type, CPU model, disks,
    NICs, serial log, guest agent, direct kernel boot, extra arguments) and refuses, before anything
    changes, a definition that cannot run under live update - for example extra arguments that bring
    their own RAM, machine, monitor or C(-incoming).
  - Then writes each VM's configuration (the checked definition, the backend and where its RAM is)
    to I(conf_dir)C(/NAME.json) and a systemd drop-in for its C(guestmemfs-vm@NAME) unit (the mounts
    its disks and logs need, the bridges or taps its NICs attach to, its CPU quota).
  - A running VM keeps the argv it was started with; a changed definition takes effect at its next
    cold start (C(restart_needed)), and a live update restores it with the argv it runs with.
  - Configurations of VMs no longer listed are left in place (their VM may still run) and reported
    in C(unlisted).
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  vms:
    description:
      - VM definitions, each with C(name) and C(memory), and optionally C(vcpus), C(machine), C(accel),
        C(cpu), C(disks) (C(path), C(format) raw or qcow2, C(interface) virtio, scsi or sata (AHCI, at most
        6, not read-only), C(cache), C(readonly), C(serial)), C(nics) (C(type) bridge, tap or user;
        C(bridge) or C(ifname); C(mac); C(model), e.g. e1000), C(serial_log), C(guest_agent),
        C(guest_agent_port) (virtio-serial or isa-serial), C(kernel), C(initrd), C(append),
        C(extra_args), C(cpu_quota), C(qemu) and C(unpreservable) (refuse, skip or shutdown).
      - See the role M(guestmemfs.liveupdate.qemu_vm) and C(docs/vms.md) for each key.
    type: list
    elements: dict
    required: true
  defaults:
    description: Values for keys a definition leaves out (production's are C(accel=kvm), no CPU quota).
    type: dict
    default: {}
  backend:
    description: The memory backend that holds the VMs' RAM.
    type: str
    choices: [pmem, guestmemfs, luo]
    required: true
  mem_dir:
    description: The backend's mount (ignored by backends without a filesystem).
    type: path
    default: /mnt/vmmem
  conf_dir:
    description: Where the configurations are written.
    type: path
    default: /etc/guestmemfs-liveupdate/vms
  unit_dir:
    description: Where each VM unit's drop-in directory is.
    type: path
    default: /etc/systemd/system
  argv_dir:
    description: Where the agent records the argv each VM was started with.
    type: path
    default: /var/lib/guestmemfs-liveupdate/argv
  qemu_user:
    description:
      - The unprivileged user each VM's QEMU runs as, with C(-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny);
        the agent hands it its QMP socket, taps and (luo) memfd as descriptors and gives it its memory
        file, disks and serial log. The user must exist (the role M(guestmemfs.liveupdate.qemu_vm) creates it).
      - C(root) runs QEMU as root without the sandbox, as before confinement existed (unsafe - a
        compromised QEMU owns the host); definitions whose C(extra_args) a confined QEMU cannot run
        (scripts, helpers, C(exec:), C(vhost=on), C(fd=)) are refused otherwise.
      - A running VM keeps how it was launched (a live update restores it so) until its next cold start.
    type: str
    default: guestmemfs-qemu
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - QEMU 10.0 or newer
attributes:
  check_mode:
    support: full
    description: Reports what would be written and changes nothing.
  diff_mode:
    support: full
    description: Shows each configuration file before and after.
  idempotent:
    support: full
    description: The same definitions write nothing the second time.
  platform:
    support: full
    platforms: posix
    description: Linux hypervisors.
notes:
  - The role M(guestmemfs.liveupdate.qemu_vm) runs this module; use it directly only to check definitions.
seealso:
  - module: guestmemfs.liveupdate.vm_cpr
"""

EXAMPLES = r"""
- name: Write the VMs' configuration
  guestmemfs.liveupdate.vm_definition:
    backend: pmem
    mem_dir: /mnt/vmmem
    vms:
      - name: web1
        memory: 8G
        vcpus: 4
        machine: pc-q35-10.0
        cpu: host
        disks:
          - {path: /var/lib/vms/web1.qcow2, format: qcow2, cache: none}
        nics:
          - {type: bridge, bridge: br0, mac: "52:54:00:12:34:56"}
        guest_agent: true
"""

RETURN = r"""
vms:
  description: Per VM - C(changed), C(restart_needed) (its recorded argv differs from the one its
    definition now gives), C(argv) (a cold start's argv) and C(summary).
  returned: always
  type: dict
bridges:
  description: The bridges the VMs' NICs attach to (QEMU's bridge helper must allow them).
  returned: always
  type: list
  elements: str
unlisted:
  description: VMs with a configuration on the host but no definition in I(vms) (left in place).
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import BACKENDS, get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cpr import RUN_DIR


def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except (IOError, OSError):
        return None


def write(path, text, mode):
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d, 0o755 if mode == 0o644 else 0o700)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def configurations(vms, defaults, backend, mem_dir, qemu_user=confine.DEFAULT_USER):
    """{name: configuration} for every definition; VMDefError before anything is written."""
    b = get_backend(backend)
    out = {}
    for vm in vmdef.normalize_all(vms, defaults):
        conf = dict(vm, backend=backend, mem_path=b.vm_mem_path(vm["name"], mem_dir), qemu_user=qemu_user)
        if confine.confined({"user": qemu_user}):
            vmdef.check_confinable(conf)
            if b.hands_memory_fd:
                conf["mem_fd"] = True
        out[vm["name"]] = conf
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vms=dict(type="list", elements="dict", required=True),
            defaults=dict(type="dict", default={}),
            backend=dict(type="str", choices=sorted(BACKENDS), required=True),
            mem_dir=dict(type="path", default="/mnt/vmmem"),
            conf_dir=dict(type="path", default="/etc/guestmemfs-liveupdate/vms"),
            unit_dir=dict(type="path", default="/etc/systemd/system"),
            argv_dir=dict(type="path", default=vmdef.ARGV_DIR),
            qemu_user=dict(type="str", default=confine.DEFAULT_USER),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        if not vmdef.NAME_RE.match(p["qemu_user"]) and p["qemu_user"] != confine.ROOT:
            raise vmdef.VMDefError("qemu_user %r is not a system user name (%s)" % (p["qemu_user"], vmdef.NAME_RULE))
        confs = configurations(p["vms"], p["defaults"], p["backend"], p["mem_dir"], p["qemu_user"])
    except vmdef.VMDefError as exc:
        module.fail_json(msg="%s. Nothing was changed." % exc)
    changed = False
    result, diffs = {}, []
    for name, conf in sorted(confs.items()):
        files = [(os.path.join(p["conf_dir"], name + ".json"), json.dumps(conf, indent=1, sort_keys=True) + "\n", 0o600),
                 (os.path.join(p["unit_dir"], "guestmemfs-vm@%s.service.d" % name, "10-definition.conf"),
                  vmdef.units_dropin(conf), 0o644)]
        vm_changed = False
        for path, text, mode in files:
            before = read(path)
            if before != text:
                vm_changed = True
                diffs.append({"before_header": path, "after_header": path, "before": before or "", "after": text})
                if not module.check_mode:
                    write(path, text, mode)
        argv = vmdef.build_argv(conf, RUN_DIR)
        try:
            recorded = vmdef.load_argv(name, p["argv_dir"])
        except vmdef.VMDefError as exc:
            module.fail_json(msg=str(exc))
        result[name] = {"changed": vm_changed, "argv": argv, "summary": vmdef.summary(conf),
                        "restart_needed": bool(recorded) and recorded != argv}
        changed = changed or vm_changed
    listed = set(confs)
    unlisted = []
    if os.path.isdir(p["conf_dir"]):
        unlisted = sorted(f[:-5] for f in os.listdir(p["conf_dir"]) if f.endswith(".json") and f[:-5] not in listed)
    bridges = sorted(set(n["bridge"] for c in confs.values() for n in c["nics"] if n["type"] == "bridge"))
    module.exit_json(changed=changed, vms=result, bridges=bridges, unlisted=unlisted, diff=diffs)


if __name__ == "__main__":
    main()
