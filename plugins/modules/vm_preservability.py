#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm_preservability
short_description: Tell, before anything pauses, which VMs of a host a live update can carry and why not
version_added: 0.1.0
description:
  - Reads every VM configured on the host (C(/etc/guestmemfs-liveupdate/vms/NAME.json)) and asks its
    running QEMU over QMP - its migration blockers in mode C(cpr-reboot) (the mode the save uses - QEMU
    keeps one blocker list per mode), its memory backends (type, C(share), C(mem-path), C(hugetlb)) and
    its devices.
  - A VM is preservable when all its RAM is on the VM's backend file and shared, QEMU reports no
    blocker, no device is passthrough or vhost, the restoring QEMU binary offers its machine type, and
    its disks, bridge or tap NICs and C(-kernel)/C(-initrd) files can be opened again.
  - Host checks - for the C(luo) backend, C(/dev/liveupdate) held by a process other than the
    collection's holder; C(CmaFree) above C(CmaTotal) in C(/proc/meminfo) (a KHO scratch area that came
    back as CMA, where long-term pinning fails) is reported as a warning.
  - A QEMU domain that libvirt runs on the host (its status in C(/run/libvirt/qemu/NAME.xml), or a
    QEMU whose argv libvirt wrote) refuses the host - libvirt sets neither migration mode
    C(cpr-reboot) nor C(x-ignore-shared), its save copies all guest RAM and stops the domain, and it
    deletes the domain's memory file when its QEMU stops, so a kexec would end the domain with its
    memory. The message names each domain and what the operator can do (shut it down around the
    update, or move it to a C(guestmemfs_vms) definition); C(docs/libvirt.md) has the evidence.
  - I(policy) decides, per VM that is not preservable, what the run does - C(refuse) fails naming each
    VM and why (the host is not updated), C(skip) leaves the host out of this run (C(skip=true), not
    failed), C(shutdown) lists the VM in C(shutdown_vms) (it is to be shut down cleanly before the
    kexec and cold-started after; this module does not do it).
  - The module only reads. To ask QEMU for the cpr-reboot blockers it sets the migration mode and the
    capabilities the save uses and puts the previous ones back; neither does anything until a
    migration starts.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  vms:
    description: VM names to check (default - every VM configured on the host).
    type: list
    elements: str
  qemu_binary:
    description:
      - The QEMU binary that will restore the VMs (after a QEMU upgrade, the new one). Default - each
        VM's own C(qemu) from its configuration.
    type: str
  policy:
    description:
      - VM name to C(refuse), C(skip) or C(shutdown), for VMs that are not preservable.
    type: dict
    default: {}
  default_policy:
    description: The policy of the VMs neither I(policy) nor their definition (C(unpreservable)) names.
    type: str
    choices: [refuse, skip, shutdown]
    default: refuse
  conf_dir:
    description: Where the VMs' configurations are.
    type: path
    default: /etc/guestmemfs-liveupdate/vms
  argv_dir:
    description: Where the agent recorded the argv each VM was started with.
    type: path
    default: /var/lib/guestmemfs-liveupdate/argv
  timeout:
    description: Seconds to wait for each QEMU's QMP answers.
    type: int
    default: 10
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - QEMU 10.0 or newer with a QMP socket per VM
attributes:
  check_mode:
    support: full
    description: Runs in check mode; it only reads.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Asking twice gives the same answer; nothing changes.
  platform:
    support: full
    platforms: posix
    description: Linux hypervisors whose VMs the M(guestmemfs.liveupdate.qemu_vm) role set up.
seealso:
  - module: guestmemfs.liveupdate.vm_cpr
  - name: Preservability
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/preservability.md
"""

EXAMPLES = r"""
- name: Which VMs can be carried by the live update
  guestmemfs.liveupdate.vm_preservability:
    qemu_binary: /usr/bin/qemu-system-x86_64
    policy:
      build-runner: shutdown
      legacy-db: skip
  register: preservability

- name: Say which VMs will be shut down
  ansible.builtin.debug:
    msg: "{{ preservability.shutdown_vms }}"
  when: preservability.shutdown_vms | length > 0
"""

RETURN = r"""
vms:
  description:
    - Per VM - C(preservable), C(problems) (each C(vm), C(check), C(detail)), C(policy), C(running) (false
      when no QMP socket exists, or only its file with nobody listening and nothing mapping the VM's memory -
      nothing to carry), C(machine) and C(qemu) (the restoring binary).
  returned: always
  type: dict
  sample:
    vm1:
      preservable: false
      running: true
      policy: refuse
      machine: pc-q35-10.0
      qemu: /usr/bin/qemu-system-x86_64
      problems:
        - vm: vm1
          check: migration_blocker
          detail: "QEMU blocks a cpr-reboot migration: Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
host:
  description: The host's C(problems) (they stop the update) and C(warnings) (reported only).
  returned: always
  type: dict
preservable:
  description: Whether the host and every VM checked can be live-updated as they are.
  returned: always
  type: bool
skip:
  description: True when a VM whose policy is C(skip) is not preservable - leave this host out of the run.
  returned: always
  type: bool
shutdown_vms:
  description: VMs that are not preservable and whose policy is C(shutdown).
  returned: always
  type: list
  elements: str
"""

import errno
import glob
import json
import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import preservability as pres
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cpr import RUN_DIR
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMP, QMPError

POLICIES = ["refuse", "skip", "shutdown"]
# Where the host is read; tests point these elsewhere.
SYS_NET = pres.SYS_NET
BRIDGE_CONF = pres.BRIDGE_CONF
PROC = "/proc"
ROOT = "/"  # where libvirt's domains are looked for (its /run/libvirt/qemu and /proc)
LIVEUPDATE_DEVICE = "/dev/liveupdate"


def connect_qmp(path, timeout):
    q = QMP(path, timeout=timeout)
    q.connect()
    return q


def ask(path, timeout):
    """QEMU's answers, or {"error": why} when it does not answer."""
    try:
        q = connect_qmp(path, timeout)
    except (QMPError, IOError, OSError) as exc:
        return {"error": str(exc)}
    try:
        return pres.ask_qemu(q)
    except (QMPError, IOError, OSError, ValueError) as exc:
        return {"error": str(exc)}
    finally:
        q.close()


def nobody_listens(path):
    """Whether UNIX socket ``path`` is a file left behind with nobody listening (ECONNREFUSED)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return False
    except (IOError, OSError) as exc:
        return exc.errno == errno.ECONNREFUSED
    finally:
        s.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vms=dict(type="list", elements="str"),
            qemu_binary=dict(type="str"),
            policy=dict(type="dict", default={}),
            default_policy=dict(type="str", choices=POLICIES, default="refuse"),
            conf_dir=dict(type="path", default="/etc/guestmemfs-liveupdate/vms"),
            argv_dir=dict(type="path", default=vmdef.ARGV_DIR),
            timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if vmdef.names_problem(p["vms"]):
        module.fail_json(msg=vmdef.names_problem(p["vms"]))
    bad = dict((n, v) for n, v in (p["policy"] or {}).items() if v not in POLICIES)
    if bad:
        module.fail_json(msg="policy: %s; use one of %s" % (
            ", ".join("%s=%r" % kv for kv in sorted(bad.items())), ", ".join(POLICIES)))
    confs = {}
    for path in sorted(glob.glob(os.path.join(p["conf_dir"], "*.json"))):
        try:
            with open(path) as fh:
                conf = json.load(fh)
        except (IOError, OSError, ValueError) as exc:
            module.fail_json(msg="cannot read the VM configuration %s: %s" % (path, exc))
        conf.setdefault("name", os.path.basename(path)[:-len(".json")])
        # The argv the VM runs with is the one recorded at its start (the restore reuses it).
        try:
            recorded = vmdef.load_argv(conf["name"], p["argv_dir"])
        except vmdef.VMDefError as exc:
            module.fail_json(msg=str(exc))
        if recorded:
            conf["argv"] = recorded
        confs[conf["name"]] = conf
    names = p["vms"] if p["vms"] is not None else sorted(confs)
    missing = [n for n in names if n not in confs]
    if missing:
        module.fail_json(msg="no configuration for VM %s in %s" % (", ".join(missing), p["conf_dir"]))

    def run(argv):
        return module.run_command(argv)

    machines = {}  # binary -> (set or None, why)
    vms = {}
    for name in names:
        conf = confs[name]
        binary = p["qemu_binary"] or conf.get("qemu") or "qemu-system-x86_64"
        # The run's policy for this VM, else its definition's (vm_definition's unpreservable), else the default.
        policy = (p["policy"] or {}).get(name) or conf.get("unpreservable") or p["default_policy"]
        qmp_path = conf.get("qmp") or os.path.join(RUN_DIR, name + ".qmp")
        if not os.path.exists(qmp_path):
            # Not running: nothing in memory to carry; the update leaves it as it is.
            vms[name] = {"preservable": True, "running": False, "problems": [], "policy": policy, "qemu": binary}
            continue
        if binary not in machines:
            try:
                machines[binary] = (pres.target_machines(binary, run=run), None)
            except (OSError, ValueError) as exc:
                machines[binary] = (None, str(exc))
        targets, why = machines[binary]
        answers = ask(qmp_path, p["timeout"])
        if "error" in answers and conf.get("mem_path") and nobody_listens(qmp_path) \
                and not users(conf["mem_path"], proc=PROC, mapped_only=True):
            # Its QEMU is gone (a stopped unit leaves the socket file) and nothing maps its memory:
            # as not running as without the file; a kexec loses nothing of it.
            vms[name] = {"preservable": True, "running": False, "problems": [], "policy": policy, "qemu": binary}
            continue
        env = pres.reopen_env(conf, sys_net=SYS_NET, bridge_conf=BRIDGE_CONF)
        problems = pres.vm_problems(dict(conf, _target_qemu=binary), answers, targets, conf.get("backend"), env=env)
        if why:
            problems.append(pres.problem(name, "machine", "the restoring QEMU cannot say which machine types "
                                                          "it offers: %s" % why))
        vms[name] = {"preservable": not problems, "running": True, "problems": problems, "policy": policy,
                     "qemu": binary, "machine": pres.machine_type(answers) if "error" not in answers
                     else conf.get("machine")}

    found = []
    for backend in sorted(set(c.get("backend") for c in confs.values() if c.get("backend"))):
        for hp in pres.host_problems(pres.host_facts(backend, proc=PROC, device=LIVEUPDATE_DEVICE, root=ROOT)):
            if hp not in found:
                found.append(hp)
    if not confs:
        found = pres.host_problems(pres.host_facts(None, proc=PROC, device=LIVEUPDATE_DEVICE, root=ROOT))
    host = {"problems": [h for h in found if h["blocks"]], "warnings": [h for h in found if not h["blocks"]]}
    for w in host["warnings"]:
        module.warn(w["detail"])

    def said(v):
        return "%s: %s" % (v, "; ".join(pr["detail"] for pr in vms[v]["problems"]))
    not_ok = [n for n in names if not vms[n]["preservable"]]
    refused = [n for n in not_ok if vms[n]["policy"] == "refuse"]
    skipped = [n for n in not_ok if vms[n]["policy"] == "skip"]
    shutdown = [n for n in not_ok if vms[n]["policy"] == "shutdown"]
    result = dict(changed=False, vms=vms, host=host, preservable=not not_ok and not host["problems"],
                  skip=bool(skipped) and not refused and not host["problems"], shutdown_vms=shutdown)
    if host["problems"] or refused:
        module.fail_json(msg="host not updated: %s" % ". ".join(
            ["host: %s" % h["detail"] for h in host["problems"]] + [said(n) for n in refused]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
