#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_default
short_description: Pin the kernel a cold boot starts
version_added: 0.1.0
description:
  - Makes I(release) (by default the running kernel) the default boot entry, so that installing a
    newer kernel package does not change what a cold boot (a power loss, a fallback) starts. On
    Debian, installing a C(linux-image) package runs C(update-grub), and with the stock
    C(GRUB_DEFAULT=0) the newest kernel becomes the default.
  - GRUB 2 (I(bootloader=grub)) - writes C(GRUB_DEFAULT) as the entry's id path
    (C(gnulinux-advanced-UUID>gnulinux-RELEASE-advanced-UUID), read from the generated
    C(grub.cfg); ids, unlike titles and positions, stay when kernels are added) into the drop-in
    C(/etc/default/grub.d/98-guestmemfs-default.cfg), runs C(update-grub) and checks that the new
    C(grub.cfg) starts with that default. A failure puts the drop-in back.
  - RHEL family (I(bootloader=grubby)) - C(grubby --set-default /boot/vmlinuz-RELEASE).
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  release:
    description: The kernel release to boot by default (C(uname -r) form); the running one when omitted.
    type: str
  bootloader:
    description: As in M(guestmemfs.liveupdate.kernel_cmdline); C(auto) picks grubby with BLS entries, else GRUB.
    type: str
    choices: [auto, grub, grubby]
    default: auto
  update_bootloader:
    description: Run C(update-grub) after a change (and first, when C(grub.cfg) has no entry for I(release) yet).
    type: bool
    default: true
  root:
    description: Directory holding C(etc/default) and C(boot/grub) instead of C(/) (tests).
    type: path
    default: /
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - GRUB 2 with C(update-grub) or C(grub-mkconfig), or C(grubby) with BLS entries
attributes:
  check_mode:
    support: full
    description: Reports the entry and whether it would change; writes nothing.
  diff_mode:
    support: full
    description: Shows the default entry before and after (GRUB - the drop-in that pins it).
  idempotent:
    support: full
    description: A default already pinned is not written again.
  platform:
    support: full
    platforms: posix
    description: Linux with GRUB 2 (Debian, Ubuntu) or grubby (RHEL family).
seealso:
  - module: guestmemfs.liveupdate.kernel_cmdline
  - name: Building and installing the live-update kernel
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/kernel-build.md
"""

EXAMPLES = r"""
- name: Keep the running kernel as the cold-boot default before installing a new one
  guestmemfs.liveupdate.kernel_default:

- name: Make the live-update kernel the default
  guestmemfs.liveupdate.kernel_default:
    release: 7.3.4-lu1
"""

RETURN = r"""
release:
  description: The kernel release pinned.
  returned: always
  type: str
default_entry:
  description: GRUB - the C(GRUB_DEFAULT) id path; grubby - the kernel path.
  returned: always
  type: str
previous_default:
  description: The default before (GRUB - the C(set default) of the old C(grub.cfg)).
  returned: always
  type: str
bootloader:
  description: The bootloader configuration used.
  returned: always
  type: str
files:
  description: Files changed (or that would change in check mode).
  returned: always
  type: list
  elements: str
cmd:
  description: The bootloader command that ran, if any.
  returned: when a bootloader command ran
  type: list
  elements: str
"""

import os
import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cmdline as cl
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.hostfiles import HostFiles

GRUB_CFG = "/boot/grub/grub.cfg"


class Host(HostFiles):
    def update_grub(self):
        m = self.module
        if m.get_bin_path("update-grub"):
            cmd = [m.get_bin_path("update-grub")]
        elif m.get_bin_path("grub-mkconfig"):
            cmd = [m.get_bin_path("grub-mkconfig"), "-o", self.path(GRUB_CFG)]
        else:
            m.fail_json(msg="neither update-grub nor grub-mkconfig is installed", rc=127, cmd=["update-grub"],
                        stdout="", stderr="")
        rc, out, err = m.run_command(cmd)
        return cmd, rc, out, err


def fail(module, result, msg, **details):
    """fail_json with the result so far; ``details`` (rc, cmd, output) take precedence."""
    merged = dict(result)
    merged.update(details)
    module.fail_json(msg=msg, **merged)


def pin_grub(host, release, result):
    m = host.module
    cfg = host.read(GRUB_CFG)
    if cfg is None:
        fail(m, result, "%s does not exist: is GRUB 2 installed? (bootloader=grub)" % GRUB_CFG)
    result["previous_default"] = cl.grub_set_default(cfg) or ""
    path = cl.grub_default_path(cl.grub_menu_entries(cfg), release)
    # A hand-written grub.cfg (an image's first boot) has no entry ids to pin: generate it first.
    if (path is None or not cl.grub_cfg_generated(cfg)) and m.params["update_bootloader"] and not m.check_mode:
        cmd, rc, out, err = host.update_grub()
        result["cmd"] = cmd
        if rc != 0:
            fail(m, result, "%s failed" % cmd[0], rc=rc, stdout=out, stderr=err, cmd=cmd)
        cfg = host.read(GRUB_CFG) or ""
        path = cl.grub_default_path(cl.grub_menu_entries(cfg), release)
    if path is None:
        fail(m, result, "%s has no normal boot entry for kernel %s: is /boot/vmlinuz-%s installed?"
             % (GRUB_CFG, release, release))
    result["default_entry"] = path
    dropin = "/etc/default/grub.d/" + cl.DEFAULT_DROPIN_NAME
    before = host.read(dropin)
    after = cl.default_dropin_text(path)
    stale = cl.grub_set_default(cfg) != path
    result["files"] = [dropin] if before != after else []
    result["changed"] = before != after or (stale and m.params["update_bootloader"])
    result["diff"] = dict(before_header=dropin, after_header=dropin, before=before or "", after=after)
    if m.check_mode or not result["changed"]:
        return
    host.write(dropin, after)
    if not m.params["update_bootloader"]:
        return
    cmd, rc, out, err = host.update_grub()
    result["cmd"] = cmd
    now = cl.grub_set_default(host.read(GRUB_CFG) or "")
    if rc != 0 or now != path:
        host.write(dropin, before)
        host.update_grub()
        why = "failed" if rc != 0 else ("did not write set default=\"%s\" (found %r: does a later "
                                        "/etc/default/grub.d file set GRUB_DEFAULT?)" % (path, now))
        fail(m, result, "%s %s; the drop-in was put back and grub.cfg regenerated" % (cmd[0], why),
             rc=rc, stdout=out, stderr=err, cmd=cmd)


def pin_grubby(host, release, result):
    m = host.module
    grubby = m.get_bin_path("grubby", required=True)
    rc, out, err = m.run_command([grubby, "--default-kernel"])
    if rc != 0:
        fail(m, result, "grubby --default-kernel failed", rc=rc, stdout=out, stderr=err,
             cmd=[grubby, "--default-kernel"])
    kernel = "/boot/vmlinuz-%s" % release
    result["previous_default"] = out.strip()
    result["default_entry"] = kernel
    result["changed"] = out.strip() != kernel
    result["diff"] = dict(before_header="grubby --default-kernel", after_header="grubby --default-kernel",
                          before=out.strip() + "\n", after=kernel + "\n")
    if m.check_mode or not result["changed"]:
        return
    cmd = [grubby, "--set-default", kernel]
    rc, out, err = m.run_command(cmd)
    result["cmd"] = cmd
    if rc != 0:
        fail(m, result, "grubby --set-default failed (is %s installed?)" % kernel, rc=rc, stdout=out,
             stderr=err, cmd=cmd)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            release=dict(type="str"),
            bootloader=dict(type="str", choices=["auto", "grub", "grubby"], default="auto"),
            update_bootloader=dict(type="bool", default=True),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    host = Host(module)
    release = module.params["release"] or platform.release()
    if "/" in release or any(c.isspace() for c in release):
        module.fail_json(msg="release %r is not a kernel release" % release)
    bootloader = module.params["bootloader"]
    if bootloader == "auto":
        if module.get_bin_path("grubby") and os.path.isdir(host.path("/boot/loader/entries")):
            bootloader = "grubby"
        elif os.path.exists(host.path("/etc/default/grub")):
            bootloader = "grub"
        else:
            module.fail_json(msg="no supported bootloader config: neither grubby with BLS entries nor /etc/default/grub")
    result = dict(changed=False, release=release, bootloader=bootloader, files=[], default_entry="",
                  previous_default="")
    if bootloader == "grub":
        pin_grub(host, release, result)
    else:
        pin_grubby(host, release, result)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
