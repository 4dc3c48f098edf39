#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_cmdline
short_description: Add, replace and remove kernel command-line arguments persistently
version_added: 0.1.0
description:
  - Sets kernel arguments such as C(memmap=1G!5G), C(guestmemfs=10G) or C(kho=on) in the
    bootloader configuration, so that the next cold boot has them.
  - With I(backend), the memory backend's own boot arguments are set as well - C(luo) gives
    C(kho=on liveupdate=on) (and C(kho_scratch=) from I(kho_scratch)), C(guestmemfs) C(guestmemfs=SIZE)
    and C(pmem) C(memmap=SIZE!OFFSET) placed in the firmware memory map.
  - GRUB 2 on Debian and Ubuntu (I(bootloader=grub)) - an argument is replaced or removed in the file
    that defines it (C(/etc/default/grub) or a drop-in under C(/etc/default/grub.d/)); a new one is
    appended to C(GRUB_CMDLINE_LINUX) in the collection's drop-in C(99-guestmemfs-liveupdate.cfg).
  - An argument assigned in several places that all reach the command line (the main file and a drop-in
    sourced later that appends, such as a cloud image's C(50-cloudimg-settings.cfg)) keeps its value in
    the place sourced last and is removed from the others, so that exactly one remains. An assignment
    that a later one replaces is left as it is. An assignment the module cannot parse (a command
    substitution, text after the value) is left alone unless it holds an argument the module manages;
    then the module refuses. The spacing inside a value is kept.
    The result is checked by sourcing the files as grub-mkconfig does, then C(update-grub) runs and
    the generated C(grub.cfg) is checked too.
  - RHEL family (I(bootloader=grubby)) - C(grubby --update-kernel=ALL) edits every BLS entry, and
    C(GRUB_CMDLINE_LINUX) in C(/etc/default/grub) is edited the same way for kernels installed later.
  - Never leaves a half-written config - each file is written to a temporary file and renamed over
    the old one, a backup is kept, and if validation or the bootloader update fails every file is
    put back.
  - Reports C(reboot_required) when the running command line differs from the configured one in the
    managed arguments. It never reboots.
  - Reports C(drift) (and warns) when a memory backend's argument on the running command line (the
    carve-out) is missing from the configuration it leaves - the next cold boot would destroy every
    VM's memory.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  args:
    description:
      - Arguments that must be present, as name to value. Each ends up exactly once, replacing any
        other value of that name.
      - A flag without value (C(nokaslr)) takes C(null) or C(true).
    type: dict
  arg_list:
    description:
      - The same as I(args), given as C(name=value) or C(name) strings, for example the
        C(cmdline_args) of a carve-out plan.
    type: list
    elements: str
  remove:
    description:
      - Names of arguments that must be absent, with any value.
    type: list
    elements: str
    default: []
  backend:
    description:
      - A memory backend whose boot arguments are set too, as the backend makes them.
      - An argument of I(args) or I(arg_list) that the backend also sets must have the backend's value.
      - Arguments the backend owns but does not set (a C(kho_scratch=) when I(kho_scratch) is not
        given) are left as they are; name them in I(remove) to drop them.
    type: str
    choices: [pmem, guestmemfs, luo]
  backend_size:
    description:
      - For I(backend) C(pmem) and C(guestmemfs) (required there) - the carve-out's size, bytes or
        K/M/G/T. C(pmem) places it in the firmware memory map (C(/sys/firmware/memmap) under I(root)).
      - For C(luo) - the memory the VMs will hold; nothing is carved out and no argument depends on it.
    type: raw
  kho_scratch:
    description:
      - For I(backend=luo) - the C(kho_scratch=) value (C(N%) or C(lowmem,global,per-node) sizes),
        checked the way the kernel parses it; one it would ignore is refused.
      - For I(backend=guestmemfs) - the RFC's KHO v2 scratch area, one size (default 256M); the cold
        boot needs it, or the handover's activation fails with ENOMEM.
    type: str
  bootloader:
    description:
      - Which bootloader configuration to edit. C(auto) takes C(grubby) when the host has grubby and
        BLS entries, else C(grub) when C(/etc/default/grub) exists.
    type: str
    choices: [auto, grub, grubby]
    default: auto
  update_bootloader:
    description:
      - Run C(update-grub) (or C(grub-mkconfig)) after a change, and also when the generated
        C(grub.cfg) lacks the requested arguments. Only for I(bootloader=grub).
    type: bool
    default: true
  backup:
    description:
      - Keep a copy of each file before changing it (C(<file>.<pid>.<date>~)).
    type: bool
    default: true
  root:
    description:
      - Directory holding C(etc/default) and C(boot/grub) instead of C(/). For tests that replay a
        recorded host; C(/proc/cmdline) is then read from there as well.
    type: path
    default: /
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - GRUB 2 with C(update-grub) or C(grub-mkconfig) (Debian, Ubuntu), or C(grubby) with BLS entries (RHEL family)
attributes:
  check_mode:
    support: full
    description: Computes the change and the diff and writes nothing.
  diff_mode:
    support: full
    description: Shows each default file before and after.
  idempotent:
    support: full
    description: Arguments already configured are not written again.
  platform:
    support: full
    platforms: posix
    description: Linux with GRUB 2 (Debian, Ubuntu) or grubby (RHEL family).
notes:
  - The running command line changes only at the next boot; plan the reboot with
    C(reboot_required).
  - Values with spaces or quotes are refused.
seealso:
  - module: guestmemfs.liveupdate.memory_backend
  - name: Preparing hypervisors
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/host-preparation.md
"""

EXAMPLES = r"""
- name: Carve out legacy persistent memory for the pmem backend
  guestmemfs.liveupdate.kernel_cmdline:
    args:
      memmap: 1G!5G
  register: cmdline

- name: Switch a host to guestmemfs with KHO, dropping the pmem carve-out
  guestmemfs.liveupdate.kernel_cmdline:
    args:
      guestmemfs: 10G
      kho_scratch: 256M
      nokaslr:
    remove:
      - memmap

- name: Switch KHO and LUO on for the luo backend, with explicit scratch areas
  guestmemfs.liveupdate.kernel_cmdline:
    backend: luo
    kho_scratch: 64M,1G,512M

- name: Reboot only the hosts whose running cmdline lacks it
  ansible.builtin.reboot:
  when: cmdline.reboot_required and reboot_ok | default(false)
"""

RETURN = r"""
reboot_required:
  description: The running command line lacks a requested argument or still has a removed one.
  returned: always
  type: bool
running:
  description: The running command line (C(/proc/cmdline)).
  returned: always
  type: str
drift:
  description: The memory backends' arguments on the running command line (the carve-out) that the
    configuration this run leaves lacks, one text each; the next cold boot would boot without them.
  returned: always
  type: list
  elements: str
configured:
  description: The command line normal boot entries get after this run (GRUB - C(GRUB_CMDLINE_LINUX)
    and C(GRUB_CMDLINE_LINUX_DEFAULT); grubby - the default entry's args).
  returned: always
  type: str
bootloader:
  description: The bootloader configuration that was edited.
  returned: always
  type: str
  sample: grub
files:
  description: Files changed (or that would change in check mode).
  returned: always
  type: list
  elements: str
backup_files:
  description: Backups made of the changed files.
  returned: changed and backup
  type: list
  elements: str
cmd:
  description: The bootloader command that ran, if any.
  returned: when a bootloader command ran
  type: list
  elements: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cmdline as cl
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import facts
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import boot_drift, get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import parse_size
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.hostfiles import HostFiles as Host


def grub_files(host):
    return cl.grub_files(host.root)


def evaluate(host, texts):
    try:
        return cl.evaluate(host.run, texts)
    except cl.CmdlineError as exc:
        host.fail(str(exc), **exc.details)


def write_atomic(host, path, text):
    real = host.path(path)
    d = os.path.dirname(real)
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
    mode = os.stat(real).st_mode & 0o7777 if os.path.exists(real) else 0o644
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(real), dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        host.module.atomic_move(tmp, real)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def restore(host, originals):
    for path, text in originals.items():
        if text is None:
            if os.path.exists(host.path(path)):
                os.unlink(host.path(path))
        else:
            write_atomic(host, path, text)


def update_grub(host):
    cfg = host.path("/boot/grub/grub.cfg")
    if host.module.get_bin_path("update-grub"):
        cmd = [host.module.get_bin_path("update-grub")]
    elif host.module.get_bin_path("grub-mkconfig"):
        cmd = [host.module.get_bin_path("grub-mkconfig"), "-o", cfg]
    else:
        return None, 127, "", "neither update-grub nor grub-mkconfig is installed"
    rc, out, err = host.run(cmd)
    return cmd, rc, out, err


def plan_grub(host, set_args, remove):
    """-> (before, after, dropin, configured args)."""
    files, dropin = grub_files(host)
    before = dict((p, host.read(p)) for p in files)
    if before["/etc/default/grub"] is None:
        host.fail("/etc/default/grub does not exist: is GRUB 2 installed? (bootloader=grub)")
    try:
        after, _absent = cl.edit_files([(p, before[p]) for p in files], set_args, remove)
        linux, default = evaluate(host, after)
        missing, unwanted = cl.missing_and_unwanted(cl.parse_cmdline(linux + " " + default), set_args, remove)
        if missing:
            after[dropin] = cl.dropin_text(after.get(dropin), missing)
            linux, default = evaluate(host, after)
    except cl.CmdlineError as exc:
        host.fail("not editing the GRUB config: %s" % exc)
    configured = cl.parse_cmdline(linux + " " + default)
    missing, unwanted = cl.missing_and_unwanted(configured, set_args, remove)
    if missing or unwanted:
        host.fail("after editing, the GRUB config would still lack %s and still have %s: a file sourced "
                  "later, or a value built from other variables, sets them; fix it by hand (files: %s)"
                  % (missing or "nothing", unwanted or "nothing", ", ".join(p for p in files if before[p])))
    return before, after, configured


def apply_grub(host, set_args, remove, result):
    before, after, configured = plan_grub(host, set_args, remove)
    changed_files = [p for p in after if after[p] != before[p]]
    result["configured"] = " ".join(configured)
    result["files"] = changed_files
    if host.module._diff:
        result["diff"] = [dict(before_header=p, after_header=p, before=before[p] or "", after=after[p] or "")
                          for p in changed_files]
    grub_cfg = host.read("/boot/grub/grub.cfg")
    stale = grub_cfg is not None and any(
        cl.missing_and_unwanted(args, set_args, remove) != ([], []) for args in cl.linux_lines(grub_cfg))
    update = host.module.params["update_bootloader"] and (changed_files or stale)
    result["changed"] = bool(changed_files or update)
    if host.module.check_mode or not result["changed"]:
        return
    originals = dict((p, before[p]) for p in changed_files)
    if host.module.params["backup"]:
        result["backup_files"] = [host.module.backup_local(host.path(p)) for p in changed_files if before[p] is not None]
    for p in changed_files:
        if after[p] is None:
            os.unlink(host.path(p))
        else:
            write_atomic(host, p, after[p])
    if not update:
        return
    cmd, rc, out, err = update_grub(host)
    result["cmd"] = cmd
    if rc != 0:
        restore(host, originals)
        host.fail("%s failed; the default files were put back as they were and grub.cfg was not "
                  "replaced" % (cmd[0] if cmd else "update-grub"), rc=rc, stdout=out, stderr=err, cmd=cmd)
    lines = cl.linux_lines(host.read("/boot/grub/grub.cfg") or "")
    bad = [args for args in lines if cl.missing_and_unwanted(args, set_args, remove) != ([], [])]
    if not lines or bad:
        restore(host, originals)
        update_grub(host)
        host.fail("the generated grub.cfg does not carry the arguments (%s); the default files were put "
                  "back and grub.cfg regenerated from them" % (" ".join(bad[0]) if bad else "no linux lines"),
                  cmd=cmd, stdout=out, stderr=err, rc=rc)


def apply_grubby(host, set_args, remove, result):
    grubby = host.module.get_bin_path("grubby", required=True)
    rc, out, err = host.run([grubby, "--info=ALL"])
    if rc != 0:
        host.fail("grubby --info=ALL failed", rc=rc, stdout=out, stderr=err, cmd=[grubby, "--info=ALL"])
    entries = [e for e in cl.parse_grubby_info(out) if e.get("kernel", "").startswith("/")]
    stale = [e for e in entries if cl.missing_and_unwanted(cl.parse_cmdline(e.get("args", "")), set_args, remove)
             != ([], [])]
    result["configured"] = " ".join(cl.apply_args(cl.parse_cmdline(entries[0].get("args", "")), set_args, remove)) \
        if entries else ""
    # /etc/default/grub's GRUB_CMDLINE_LINUX feeds kernels installed later.
    before = host.read("/etc/default/grub")
    after = before
    if before is not None:
        try:
            after, found = cl.edit_text(before, set_args, remove, path="/etc/default/grub")
            missing = [n for n in set_args if n not in found]
            if missing:
                after = add_to_var(after, "GRUB_CMDLINE_LINUX", [cl.format_arg(n, set_args[n]) for n in missing])
        except cl.CmdlineError as exc:
            host.fail("not editing /etc/default/grub: %s" % exc)
    result["files"] = ["/etc/default/grub"] if after != before else []
    result["changed"] = bool(stale or after != before)
    if host.module._diff and after != before:
        result["diff"] = [dict(before_header="/etc/default/grub", after_header="/etc/default/grub",
                               before=before, after=after)]
    if host.module.check_mode or not result["changed"]:
        return
    if after != before:
        if host.module.params["backup"]:
            result["backup_files"] = [host.module.backup_local(host.path("/etc/default/grub"))]
        write_atomic(host, "/etc/default/grub", after)
    if stale:
        cmd = [grubby, "--update-kernel=ALL"]
        if set_args:
            cmd.append("--args=%s" % " ".join(cl.format_arg(n, v) for n, v in set_args.items()))
        if remove:
            cmd.append("--remove-args=%s" % " ".join(remove))
        rc, out, err = host.run(cmd)
        result["cmd"] = cmd
        if rc != 0:
            if after != before:
                write_atomic(host, "/etc/default/grub", before)
            host.fail("grubby failed; /etc/default/grub was put back", rc=rc, stdout=out, stderr=err, cmd=cmd)


def add_to_var(text, var, args):
    """Append args to the first plain assignment of ``var``, or add one."""
    for i, v, _quote, _words in cl.find_assignments(text):
        if v == var:
            lines = text.splitlines(True)
            head, _sep, _rest = lines[i].partition("=")
            _q, words, trailing = cl.split_value(lines[i][len(head) + 1:], "/etc/default/grub")
            lines[i] = '%s="%s"%s\n' % (head, " ".join(words + args), trailing.rstrip("\n"))
            return "".join(lines)
    return text + ('' if text.endswith("\n") or not text else "\n") + '%s="%s"\n' % (var, " ".join(args))


def detect(host):
    wanted = host.module.params["bootloader"]
    if wanted != "auto":
        return wanted
    if host.module.get_bin_path("grubby") and os.path.isdir(host.path("/boot/loader/entries")):
        return "grubby"
    if os.path.exists(host.path("/etc/default/grub")):
        return "grub"
    host.fail("no supported bootloader config: neither grubby with BLS entries nor /etc/default/grub")


def validate(module):
    set_args = dict(module.params["args"] or {})
    for arg in module.params["arg_list"] or []:
        name, sep, value = arg.partition("=")
        if name in set_args:
            module.fail_json(msg="argument %s given twice in arg_list" % name)
        set_args[name] = value if sep else None
    remove = list(module.params["remove"])
    both = sorted(set(set_args) & set(remove))
    if both:
        module.fail_json(msg="arguments both set and removed: %s" % ", ".join(both))
    for name in list(set_args) + remove:
        if not name or "=" in name or any(c.isspace() or c in "\"'$`\\" for c in name):
            module.fail_json(msg="invalid argument name %r" % name)
    for name, value in set_args.items():
        if value is False:
            module.fail_json(msg="argument %s: use remove to drop it, not false" % name)
        if value is not None and value is not True:
            value = str(value)
            if not value or any(c.isspace() or c in "\"'$`\\" for c in value):
                module.fail_json(msg="argument %s: value %r is empty or has spaces, quotes or $" % (name, value))
            set_args[name] = value
    for arg in backend_args(module):
        name, sep, value = arg.partition("=")
        value = value if sep else None
        if name in remove:
            module.fail_json(msg="argument %s: the %s backend sets it (%s), it cannot be removed"
                             % (name, module.params["backend"], arg))
        if name in set_args and cl.format_arg(name, set_args[name]) != arg:
            module.fail_json(msg="argument %s: the %s backend sets %s, not %s" % (
                name, module.params["backend"], arg, cl.format_arg(name, set_args[name])))
        set_args[name] = value
    return set_args, remove


def backend_args(module):
    """The boot arguments I(backend) makes, [] without one. Fails, changing nothing, on a request
    the backend refuses."""
    p = module.params
    if not p["backend"]:
        for opt in ("backend_size", "kho_scratch"):
            if p[opt] not in (None, ""):
                module.fail_json(msg="%s needs backend" % opt)
        return []
    backend = get_backend(p["backend"])
    if p["kho_scratch"] not in (None, "") and not backend.takes_kho_scratch:
        module.fail_json(msg="kho_scratch is for the luo and guestmemfs backends, not %s" % backend.name)
    size = p["backend_size"]
    if size in (None, ""):
        if backend.carves_out:
            module.fail_json(msg="backend_size is required for the %s backend: its arguments carve it out" % backend.name)
        size = 0
    try:
        size = parse_size(size, "backend_size")
        ranges = facts.ram_ranges(facts.firmware_memmap(p["root"])) if backend.carves_out else None
        return backend.cmdline_args(size, ranges, kho_scratch=p["kho_scratch"])
    except (ValueError, BackendError) as exc:
        module.fail_json(msg="backend %s: %s" % (backend.name, exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            args=dict(type="dict"),
            arg_list=dict(type="list", elements="str"),
            remove=dict(type="list", elements="str", default=[]),
            bootloader=dict(type="str", choices=["auto", "grub", "grubby"], default="auto"),
            update_bootloader=dict(type="bool", default=True),
            backup=dict(type="bool", default=True),
            root=dict(type="path", default="/"),
            backend=dict(type="str", choices=["pmem", "guestmemfs", "luo"]),
            backend_size=dict(type="raw"),
            kho_scratch=dict(type="str"),
        ),
        mutually_exclusive=[("args", "arg_list")],
        supports_check_mode=True,
    )
    set_args, remove = validate(module)
    if not set_args and not remove:
        module.fail_json(msg="nothing to do: give args or remove")
    host = Host(module)
    bootloader = detect(host)
    result = dict(changed=False, bootloader=bootloader, files=[])
    if bootloader == "grub":
        apply_grub(host, set_args, remove, result)
    else:
        apply_grubby(host, set_args, remove, result)
    running = (host.read("/proc/cmdline") or "").strip()
    result["running"] = running
    result["reboot_required"] = cl.missing_and_unwanted(cl.parse_cmdline(running), set_args, remove) != ([], [])
    result["drift"] = boot_drift(cl.parse_cmdline(running), cl.parse_cmdline(result["configured"])) \
        if result.get("configured") is not None else []
    for d in result["drift"]:
        module.warn("boot configuration drift: %s" % d)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
