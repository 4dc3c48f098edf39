#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kho_handover
short_description: Activate or abort the guestmemfs RFC kernel's KHO handover
version_added: 0.1.5
description:
  - On a kernel with the guestmemfs RFC and the KHO v2 series it was written on, C(echo 1 >
    /sys/kernel/kho/active) serialises the handover (guestmemfs's super block, inodes and the
    region) into a device tree that C(kexec_file_load) copies into the next kernel's image;
    C(echo 0) aborts it.
  - The order is what carries the memory over - activate, then load the kernel
    (M(guestmemfs.liveupdate.kexec) refuses to load for guestmemfs while KHO is inactive), then
    kexec. A kernel loaded before the activation carries no handover and its kexec loses every file,
    so I(state=active) refuses while a kernel is loaded. Activation does not stop the VMs (data
    written through their mappings afterwards survives), so it happens before they pause, off the
    blackout.
  - While active, creating or truncating a file in guestmemfs returns success but corrupts what the
    next kernel inherits (an RFC bug); M(guestmemfs.liveupdate.vm_memory) refuses to change files
    then. An activation with guestmemfs unmounted carries no files and is refused.
  - I(state=inactive) aborts - it writes 0, and refuses while a kernel is loaded (that image holds
    the handover that is being withdrawn; unload it first).
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  state:
    description: C(active) serialises the handover; C(inactive) aborts it.
    type: str
    choices: [active, inactive]
    default: active
  mount_point:
    description: Where guestmemfs is mounted; I(state=active) refuses unless it is mounted there.
    type: path
    default: /mnt/guestmemfs
  root:
    description: Directory holding C(proc) and C(sys) instead of C(/) (tests).
    type: path
    default: /
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - The guestmemfs RFC kernel with the RFC's KHO v2 (C(CONFIG_KEXEC_KHO), C(CONFIG_FTRACE_KHO))
attributes:
  check_mode:
    support: full
    description: Reports whether the state would change and why it would be refused; writes nothing.
  diff_mode:
    support: none
    description: The state is one bit, returned as I(active).
  idempotent:
    support: full
    description: A handover already in the wanted state is left as it is.
  platform:
    support: full
    platforms: posix
    description: Linux built with the KHO v2 series (C(CONFIG_KEXEC_KHO)) and guestmemfs.
notes:
  - Mainline KHO (Linux 6.16+) has no C(active) switch; the luo backend's holder hands its memfds over
    instead, and this module refuses such a kernel.
seealso:
  - module: guestmemfs.liveupdate.kexec
  - name: The guestmemfs backend on the RFC kernel
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/guestmemfs-rfc.md
"""

EXAMPLES = r"""
- name: Serialise the guestmemfs handover before loading the next kernel
  guestmemfs.liveupdate.kho_handover:
    state: active
    mount_point: /mnt/guestmemfs

- name: Abort it (after unloading the kernel) when the update stops before the kexec
  guestmemfs.liveupdate.kho_handover:
    state: inactive
"""

RETURN = r"""
active:
  description: Whether the handover is serialised now (in check mode - whether it would be).
  returned: always
  type: bool
dt_bytes:
  description: Size of the serialised device tree (C(/sys/kernel/kho/dt)), once active.
  returned: when active and not in check mode
  type: int
  sample: 426
scratch_len:
  description: The KHO scratch area the next kernel boots in (C(/sys/kernel/kho/scratch_len)).
  returned: always
  type: str
  sample: "0x4000000"
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import BACKENDS


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["active", "inactive"], default="active"),
            mount_point=dict(type="path", default="/mnt/guestmemfs"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    kho_dir = os.path.join(root, "sys/kernel/kho")
    active_path = os.path.join(kho_dir, "active")
    if not os.path.exists(active_path):
        module.fail_json(msg="no KHO v2 interface (%s is missing): this kernel is not the guestmemfs RFC's "
                             "(mainline KHO has no active switch)" % active_path)
    scratch = (hostinfo.read_file(root, "/sys/kernel/kho/scratch_len", "") or "").strip()
    active = bool(hostinfo.kho_active(root))
    loaded = bool(hostinfo.kexec_loaded(root))
    want = p["state"] == "active"
    result = dict(changed=False, active=active, scratch_len=scratch)

    if want:
        mount = hostinfo.find_mount(hostinfo.mounts(root), p["mount_point"])
        # The filesystems whose files this handover carries: those of the backends that prepare it.
        handed_over = set(cls.fstype for cls in BACKENDS.values() if cls.prepares_handover)
        if not mount or mount.get("fstype") not in handed_over:
            module.fail_json(msg="guestmemfs is not mounted at %s: an activation now would hand over no files; "
                                 "mount it first" % p["mount_point"], **result)
        if not active and loaded:
            module.fail_json(msg="a kernel is loaded for kexec already: loaded before the activation, it carries "
                                 "no handover and its kexec would lose every guestmemfs file. Unload it "
                                 "(kexec -u), activate, then load it again", **result)
    elif active and loaded:
        module.fail_json(msg="a kernel is loaded for kexec with this handover in it: unload it (kexec -u) "
                             "before aborting the handover", **result)

    if active != want:
        result.update(changed=True, active=want)
        if not module.check_mode:
            try:
                with open(active_path, "w") as fh:
                    fh.write("1" if want else "0")
            except (IOError, OSError) as exc:
                now = bool(hostinfo.kho_active(root))
                result.update(changed=now != active, active=now)
                module.fail_json(msg="writing %s to %s failed: %s%s" % (
                    "1" if want else "0", active_path, exc,
                    " (ENOMEM: boot with kho_scratch=SIZE so the next kernel has scratch memory)"
                    if getattr(exc, "errno", None) == 12 else ""), **result)
    if result["active"] and not module.check_mode:
        dt = os.path.join(kho_dir, "dt")
        if os.path.exists(dt):
            result["dt_bytes"] = os.path.getsize(dt) or len(open(dt, "rb").read())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
