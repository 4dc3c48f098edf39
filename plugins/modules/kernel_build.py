#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_build
short_description: Build a live-update kernel once and package it
version_added: 0.1.0
description:
  - Builds a kernel from a source tree (a git checkout at a ref, a tarball, or Debian's
    C(linux-source-X.Y) package), in this order - extract, apply the patch series, merge a config
    fragment onto a base config with the kernel's own C(scripts/kconfig/merge_config.sh -m) and
    C(make olddefconfig), check the required options, C(make -jN), and package with the kernel's
    own C(bindeb-pkg) or C(binrpm-pkg).
  - Required options - C(CONFIG_KEXEC_FILE) always; KHO (C(CONFIG_KEXEC_HANDOVER) in mainline,
    C(CONFIG_KEXEC_KHO) with the KHO v2 patches of the guestmemfs RFC, whichever the tree defines)
    with I(require_kho); the options of I(backend); and I(required_options). Each is added to the
    fragment as C(=y) unless the fragment sets it. When one did not survive C(olddefconfig) the
    module fails naming it and the dependency that dropped it, read from the tree's Kconfig files
    (its C(depends on) lines and enclosing C(if)/C(menu) blocks, a few levels deep, or the
    C(select)s of an option without prompt).
  - Idempotent by a hash of its inputs - source identity (git commit, tarball sha256 or package
    version), the patches' content, the base config's content, the fragment, the required options,
    the package target and I(localversion). The same inputs build nothing and return the earlier
    result (changed=false), read from a JSON stamp beside the packages in
    C(<build_dir>/out/<hash>/). The source tree in C(<build_dir>/src) is kept while source and
    patches stay the same, so a config change builds incrementally.
  - Progress - the whole build's output goes to C(<build_dir>/build.log) (returned as
    I(build_log)); follow it with C(tail -f). Run the task with C(async) and C(poll) so a long
    build does not hold the connection (see the examples).
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  build_dir:
    description:
      - Directory for the source tree, the log, the packages and the stamps. Created if missing,
        owner-only (C(0700)).
      - Refused, before anything is written, when it is a symlink, owned by another user or writable
        by others - a predictable path in C(/var/tmp) could have been made by someone else first.
    type: path
    required: true
  git_repo:
    description: A git repository (URL or path) to build from, at I(git_ref).
    type: str
  git_ref:
    description: Branch, tag or commit of I(git_repo).
    type: str
    default: HEAD
  tarball:
    description: A kernel source tarball (C(.tar.xz), C(.tar.gz), ...) with one top directory.
    type: path
  linux_source:
    description:
      - The series C(X.Y) of Debian's installed C(linux-source-X.Y) package; the tree is
        C(/usr/src/linux-source-X.Y.tar.xz).
    type: str
  patches:
    description: Patch files applied in this order with C(patch -p1).
    type: list
    elements: path
    default: []
  patch_dir:
    description: A directory whose C(*.patch) files are applied in sorted order.
    type: path
  patch_mbox:
    description: An mbox of patch mails (as from a mailing-list archive), applied in mbox order.
    type: path
  patch_fuzz:
    description:
      - The context lines a hunk may ignore (C(patch --fuzz)). C(0), the default, applies a hunk only
        where all its context matches, as C(git am) does; a series written for another tree may need
        C(1) or C(2), and the failure says so. Every hunk that applied with fuzz or at an offset is
        listed in I(patch_notes) and warned about - look at each before trusting the kernel.
    type: int
    default: 0
  base_config:
    description:
      - The config the fragment is merged onto. C(running) - C(/boot/config-$(uname -r)) of the
        build host; C(file) - I(base_config_file); C(defconfig) and C(tinyconfig) - the kernel's
        own targets.
    type: str
    choices: [running, file, defconfig, tinyconfig]
    default: defconfig
  base_config_file:
    description: The base config when I(base_config=file).
    type: path
  config_targets:
    description:
      - The kernel's own fragment targets applied after the base, for example C(kvm_guest.config).
    type: list
    elements: str
    default: []
  config_fragment:
    description: A config fragment file (C(CONFIG_X=y) lines) merged onto the base.
    type: path
  config_options:
    description: Fragment lines given inline (C(CONFIG_X=y), C(X=m), C(# CONFIG_X is not set)), merged after
      I(config_fragment).
    type: list
    elements: str
    default: []
  require_kho:
    description: Require KHO (C(CONFIG_KEXEC_HANDOVER) or C(CONFIG_KEXEC_KHO)).
    type: bool
    default: false
  backend:
    description:
      - Require the kernel options of this memory backend - C(pmem) (legacy pmem, LIBNVDIMM, FS_DAX),
        C(guestmemfs) (C(CONFIG_GUESTMEMFS_FS=y), KHO, FTRACE_KHO), C(luo) (KHO, LIVEUPDATE,
        LIVEUPDATE_MEMFD).
    type: str
    choices: [none, pmem, guestmemfs, luo]
    default: none
  required_options:
    description:
      - More options the result must have. C(X) or C(CONFIG_X) accepts C(y) or C(m); C(CONFIG_X=y)
        only that value.
    type: list
    elements: str
    default: []
  package:
    description: The kernel's packaging target.
    type: str
    choices: [bindeb-pkg, binrpm-pkg]
    default: bindeb-pkg
  localversion:
    description: Appended to the kernel release (make's C(LOCALVERSION)), for example C(-lu1).
    type: str
    default: ""
  jobs:
    description: Parallel make jobs; C(0) means one per CPU of the build host.
    type: int
    default: 0
  nice:
    description: Niceness the build's commands run with, so a build shares a busy host politely.
    type: int
    default: 0
  force:
    description: Build even when a stamp for the same inputs exists.
    type: bool
    default: false
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - The kernel's build dependencies (make, a C compiler, flex, bison, bc, libelf and OpenSSL headers);
    the C(guestmemfs.liveupdate.kernel_build) role installs them
attributes:
  check_mode:
    support: full
    description: Computes the input hash and reports whether a build would happen; changes nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: The same inputs build nothing the second time (a stamp beside the packages).
  platform:
    support: full
    platforms: posix
    description: A Linux build host with the kernel's build dependencies (make, gcc, bc, bison, flex,
      libelf, libssl, and for C(bindeb-pkg) debhelper, dpkg-dev, libdw-dev, rsync, cpio, kmod; for
      C(binrpm-pkg) rpmbuild).
notes:
  - The build takes from minutes (C(tinyconfig)) to an hour or more (a distribution config); use
    C(async).
  - Patches are operator input - the collection ships none.
  - With I(base_config=running) on Debian, C(CONFIG_SYSTEM_TRUSTED_KEYS) and
    C(CONFIG_SYSTEM_REVOCATION_KEYS) name certificates that only Debian's build has; they are
    emptied unless the fragment sets them.
seealso:
  - module: guestmemfs.liveupdate.kernel_default
  - name: Building the live-update kernel
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/kernel-build.md
"""

EXAMPLES = r"""
- name: Build a LUO kernel from Debian's linux-source-7.3, in the background (tail -f the build log)
  guestmemfs.liveupdate.kernel_build:
    linux_source: "7.3"
    build_dir: /var/tmp/kernel-build
    base_config: defconfig
    config_targets: [kvm_guest.config]
    config_fragment: /srv/kernel/liveupdate.config
    backend: luo
    localversion: -lu1
  async: 7200
  poll: 30
  register: kernel

- name: Build the guestmemfs RFC kernel from a tarball and a patch series
  guestmemfs.liveupdate.kernel_build:
    tarball: /srv/kernel/linux-source-6.12.tar.xz
    patch_dir: /srv/kernel/guestmemfs-rfc
    build_dir: /var/tmp/kernel-build-gmfs
    base_config: tinyconfig
    config_options:
      - CONFIG_RELOCATABLE=y
      - CONFIG_MISC_FILESYSTEMS=y
      - CONFIG_FTRACE=y
    backend: guestmemfs

- name: Build from git, fire and forget; check later with ansible.builtin.async_status
  guestmemfs.liveupdate.kernel_build:
    git_repo: https://git.example.org/linux.git
    git_ref: v7.3
    build_dir: /var/tmp/kernel-build-git
    require_kho: true
    required_options: [CONFIG_KEXEC_HANDOVER_DEBUGFS]
  async: 7200
  poll: 0
  register: kernel_job

- name: Wait for it
  ansible.builtin.async_status:
    jid: "{{ kernel_job.ansible_job_id }}"
  register: kernel
  until: kernel.finished
  retries: 240
  delay: 30
"""

RETURN = r"""
input_hash:
  description: sha256 of every input; the stamp's name.
  returned: always
  type: str
built:
  description: Whether this run built (false - the stamp of the same inputs was reused).
  returned: always
  type: bool
skipped_in_s:
  description: Seconds this run took to find that the same inputs were built already (hashing them).
  returned: when the build was skipped
  type: float
patch_notes:
  description: Each hunk that applied with fuzz or at an offset, as C(patch) reported it, with its patch.
  returned: when patches were applied in this run
  type: list
  elements: str
  sample: ["0003-kexec-Add-KHO-parsing-support.patch: Hunk #2 succeeded at 1190 with fuzz 1 (offset 12 lines)."]
waited_for_lock_s:
  description:
    - Seconds this run waited for another build in the same I(build_dir) to end (one build at a
      time per directory; the waiting run then finds that build's result if its inputs are the same).
  returned: when it waited a second or more
  type: float
kernel_release:
  description: C(make -s kernelrelease).
  returned: success, not in check mode unless the stamp exists
  type: str
  sample: 7.3.4-lu1
packages:
  description: The packages made.
  returned: success, not in check mode unless the stamp exists
  type: list
  elements: str
image_package:
  description: The kernel image package among I(packages) (C(linux-image-*), C(kernel-*)).
  returned: success, not in check mode unless the stamp exists
  type: str
vmlinuz:
  description: A copy of the built kernel image beside the packages.
  returned: success, not in check mode unless the stamp exists
  type: str
config:
  description: A copy of the resulting C(.config) beside the packages.
  returned: success, not in check mode unless the stamp exists
  type: str
output_dir:
  description: Where the packages, image, config and stamp are.
  returned: success, not in check mode unless the stamp exists
  type: str
build_log:
  description: The build's log; C(tail -f) it to follow a build.
  returned: always
  type: str
required:
  description: Each required option with the value it got.
  returned: success, not in check mode unless the stamp exists
  type: dict
changed_options:
  description:
    - Fragment options that C(olddefconfig) changed (also warned about), as C(name), C(wanted), C(got) and
      C(reason) (the dependency that changed it, read from the tree's Kconfig).
  returned: success, not in check mode unless the stamp exists
  type: list
  elements: dict
dropped:
  description: On failure, each required option that did not survive, with the unmet dependencies.
  returned: when required options were dropped
  type: list
  elements: dict
timings:
  description: Seconds per step (C(extract_and_patch), C(config), C(build_and_package)).
  returned: when built
  type: dict
source:
  description: The source kind and identity (commit, sha256 or package version).
  returned: always
  type: dict
"""

import fcntl
import hashlib
import json
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import kernel_build as kb
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.kernel_builder import Build, read_json, safe_build_dir

_LOCKS = {}


def _lock(build_dir):
    """Hold build_dir/.kernel_build.lock (flock) until this process ends; seconds waited."""
    key = os.path.realpath(build_dir)
    if key in _LOCKS:  # held already by this process (a test calling main() again)
        return 0.0
    fd = os.open(os.path.join(build_dir, ".kernel_build.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    _LOCKS[key] = fd
    t = time.time()
    fcntl.flock(fd, fcntl.LOCK_EX)
    return time.time() - t


def main():
    t0 = time.time()
    module = AnsibleModule(
        argument_spec=dict(
            build_dir=dict(type="path", required=True),
            git_repo=dict(type="str"),
            git_ref=dict(type="str", default="HEAD"),
            tarball=dict(type="path"),
            linux_source=dict(type="str"),
            patches=dict(type="list", elements="path", default=[]),
            patch_dir=dict(type="path"),
            patch_mbox=dict(type="path"),
            patch_fuzz=dict(type="int", default=0),
            base_config=dict(type="str", choices=["running", "file", "defconfig", "tinyconfig"], default="defconfig"),
            base_config_file=dict(type="path"),
            config_targets=dict(type="list", elements="str", default=[]),
            config_fragment=dict(type="path"),
            config_options=dict(type="list", elements="str", default=[]),
            require_kho=dict(type="bool", default=False),
            backend=dict(type="str", choices=["none", "pmem", "guestmemfs", "luo"], default="none"),
            required_options=dict(type="list", elements="str", default=[]),
            package=dict(type="str", choices=["bindeb-pkg", "binrpm-pkg"], default="bindeb-pkg"),
            localversion=dict(type="str", default=""),
            jobs=dict(type="int", default=0),
            nice=dict(type="int", default=0),
            force=dict(type="bool", default=False),
        ),
        required_one_of=[("git_repo", "tarball", "linux_source")],
        mutually_exclusive=[("git_repo", "tarball", "linux_source"), ("patches", "patch_dir", "patch_mbox")],
        required_if=[("base_config", "file", ("base_config_file",))],
        supports_check_mode=True,
    )
    p = module.params
    b = Build(module)
    if p["jobs"] < 0:
        b.fail("jobs must be 0 (one per CPU) or more")
    if not 0 <= p["patch_fuzz"] <= 3:
        b.fail("patch_fuzz must be 0 to 3 (context lines a hunk may ignore), not %d" % p["patch_fuzz"])
    if "/" in p["localversion"] or any(c.isspace() for c in p["localversion"]):
        b.fail("localversion %r may not contain spaces or slashes" % p["localversion"])
    for target in p["config_targets"]:
        if not target.endswith(".config"):
            b.fail("config_targets takes the kernel's fragment targets (NAME.config), not %r" % target)
    unsafe = safe_build_dir(p["build_dir"], create=not module.check_mode)
    if unsafe:
        b.fail(unsafe + ". Nothing was written")

    source = b.source()
    b.result["source"] = source
    patches = b.patch_list()
    base_text = b.base_config_text()
    fragment = b.fragment()
    required_spec = b.required()
    src_key = kb.input_hash(dict(source={k: v for k, v in source.items() if k not in ("path", "ref")},
                                 patches=[hashlib.sha256(d).hexdigest() for _label, d in patches]))
    digest = kb.input_hash(dict(
        src=src_key, base=[p["base_config"], hashlib.sha256(base_text.encode()).hexdigest() if base_text else None],
        targets=p["config_targets"], fragment=fragment,
        required=[[list(a), list(v)] for a, v, _why in required_spec],
        package=p["package"], localversion=p["localversion"]))
    b.result["input_hash"] = digest
    out_dir = os.path.join(p["build_dir"], "out", digest[:16])
    if not module.check_mode:
        # One build at a time per build directory (two playbook runs, two test checkouts sharing
        # a cache): the second waits, then finds the first one's stamp if the inputs are the same.
        waited = _lock(p["build_dir"])
        if waited >= 1:
            b.result["waited_for_lock_s"] = round(waited, 1)
    stamp = read_json(os.path.join(out_dir, "kernel_build.json"))
    if stamp.get("input_hash") == digest and not p["force"] and \
            all(os.path.exists(f) for f in stamp.get("packages", []) + [stamp.get("vmlinuz", "")]):
        # What a skipped rebuild costs: hashing the inputs (the source tarball above all).
        stamp.update(changed=False, built=False, build_log=b.log, source=source, skipped_in_s=round(time.time() - t0, 2),
                     **({"waited_for_lock_s": b.result["waited_for_lock_s"]} if "waited_for_lock_s" in b.result else {}))
        module.exit_json(**stamp)
    b.result["changed"] = True
    if module.check_mode:
        module.exit_json(msg="a build would run (no stamp for these inputs in %s)" % out_dir, **b.result)

    with open(b.log, "w") as fh:
        fh.write("kernel_build %s, inputs %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), digest))
    timings = {}
    t = time.time()
    b.prepare_tree(source, patches, src_key)
    timings["extract_and_patch"] = round(time.time() - t, 1)
    t = time.time()
    required, changed_options = b.configure(base_text, fragment, required_spec)
    timings["config"] = round(time.time() - t, 1)
    t = time.time()
    jobs = p["jobs"] or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    release, image, made = b.build_and_package(jobs)
    timings["build_and_package"] = round(time.time() - t, 1)

    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    packages = []
    for f in sorted(made):
        dest = os.path.join(out_dir, os.path.basename(f))
        shutil.move(f, dest)
        if dest.endswith((".deb", ".rpm")):
            packages.append(dest)
    vmlinuz = os.path.join(out_dir, "vmlinuz-%s" % release)
    config = os.path.join(out_dir, "config-%s" % release)
    shutil.copy2(os.path.join(b.src, image), vmlinuz)
    shutil.copy2(os.path.join(b.src, ".config"), config)
    image_pkgs = [f for f in packages if os.path.basename(f).startswith(("linux-image-", "kernel-"))
                  and "-dbg" not in os.path.basename(f) and "debuginfo" not in os.path.basename(f)]
    result = dict(input_hash=digest, kernel_release=release, packages=packages,
                  image_package=image_pkgs[0] if image_pkgs else "", vmlinuz=vmlinuz, config=config,
                  output_dir=out_dir, required=required, changed_options=changed_options, timings=timings,
                  built_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp = os.path.join(out_dir, ".kernel_build.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
    os.rename(tmp, os.path.join(out_dir, "kernel_build.json"))
    result.update(changed=True, built=True, build_log=b.log, source=source)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
