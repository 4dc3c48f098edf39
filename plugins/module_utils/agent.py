# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host agent's command line: ``/usr/lib/guestmemfs-liveupdate/agent SUBCOMMAND``, run by the
units of the qemu_vm role and by the live update's kexec step. One parser; each subcommand checks
its own arguments (exit 2 with a usage line otherwise). Exit codes: 0 done, 2 usage, 3-7 a VM
not started (see hostupdate.vm_run), 4 a VM held or not checked (verify), 5 the kexec, a holder request or
a discard-state refused,
8 the journal or the manifest is not JSON (the message names the file and the recovery)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import subprocess
import sys

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostupdate, journal, manifest, memfd_holder
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile


def _verify(a):
    verdicts = hostupdate.verify_pending(a.names or None)
    for name, v in sorted(verdicts.items()):
        sys.stdout.write("%s: %s: %s\n" % (name, v["status"], v["detail"]))
    # Say what was not checked: a VM that is not saved has nothing to verify, which is no "ok".
    vms = journal.load_journal().get("vms") or {}
    unchecked = [n for n in a.names if n not in verdicts]
    for name in unchecked:
        rec = vms.get(name) or {}
        why = (rec.get("verify") or {}).get("detail") if rec.get("state") == "held" else None
        sys.stdout.write("%s: not checked: its journal state is %s%s; only a saved, held or restore_failed VM's "
                         "memory is verified\n" % (name, rec.get("state") or "none (not in the update)",
                                                   " (%s)" % why if why else ""))
    if not a.names and not verdicts:
        sys.stdout.write("no saved VM to verify: nothing is pending in the journal %s\n" % journal.JOURNAL)
    return 0 if all(v["status"] == manifest.OK for v in verdicts.values()) and not unchecked else 4


def _discard(a):
    rc, text = hostupdate.discard_state(a.name)
    (sys.stdout if rc == 0 else sys.stderr).write(text + "\n")
    return rc


def _kexec(a):
    err = hostupdate.kexec_now(subprocess.call)
    if err:
        sys.stderr.write(err + "\n")
        return 5
    return 0


def _status(a):
    sys.stdout.write(json.dumps(journal.load_journal(), indent=1, sort_keys=True) + "\n")
    return 0


def _luo(a):
    fields = {"ensure": lambda: {"name": a.name, "size": a.size}, "drop": lambda: {"name": a.name},
              "preserve": lambda: {"names": a.names}, "finish": lambda: {"force": a.force},
              "retrieve": lambda: {"name": a.name, "token": a.token}}.get(a.op, dict)()
    try:
        result = memfd_holder.request(a.op, **fields)
    except memfd_holder.HolderError as exc:
        sys.stderr.write("%s\n" % exc)
        return 5
    sys.stdout.write(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


def parser():
    p = argparse.ArgumentParser(prog="agent", description="guestmemfs.liveupdate host agent: the boot-time "
                                "restore, the guarded kexec and the luo backend's memfd holder")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("verify", help="verify saved VMs' memory against the manifest (all pending, or NAME...)")
    s.add_argument("names", nargs="*", metavar="NAME")
    s.set_defaults(func=_verify)
    s = sub.add_parser("vm-run", help="the VM unit's ExecStart: cold start, or QEMU -incoming defer")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=lambda a: hostupdate.vm_run(a.name))
    s = sub.add_parser("vm-restore", help="the VM unit's ExecStartPost: finish a restore and resume")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=lambda a: hostupdate.vm_restore(a.name))
    s = sub.add_parser("discard-state", help="discard VM NAME's saved state on purpose (journaled; kept aside): "
                       "its unit then boots it afresh")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=_discard)
    sub.add_parser("status", help="print the update journal").set_defaults(func=_status)
    sub.add_parser("kexec", help="kexec, only when every VM is saved on this boot").set_defaults(func=_kexec)
    sub.add_parser("luo-hold", help="run the memfd holder (guestmemfs-luo.service)").set_defaults(
        func=lambda a: memfd_holder.hold())
    s = sub.add_parser("luo", help="ask the memfd holder (luo backend)")
    ops = s.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    ops.add_parser("status", help="the holder's memfds and session")
    o = ops.add_parser("ensure", help="a memfd of SIZE bytes for VM NAME")
    o.add_argument("name", metavar="NAME")
    o.add_argument("size", metavar="SIZE", type=int)
    ops.add_parser("drop", help="drop VM NAME's memfd (not in use)").add_argument("name", metavar="NAME")
    ops.add_parser("preserve", help="preserve the memfds (all, or NAME...)").add_argument(
        "names", nargs="*", metavar="NAME")
    ops.add_parser("unpreserve", help="give up this boot's preserved session")
    o = ops.add_parser("retrieve", help="retrieve VM NAME's memfd by TOKEN after a kexec")
    o.add_argument("name", metavar="NAME")
    o.add_argument("token", metavar="TOKEN", type=int)
    ops.add_parser("finish", help="finish the retrieved session").add_argument("--force", action="store_true")
    ops.add_parser("kexec", help="kexec from the holder (agent kexec does this, guarded)")
    s.set_defaults(func=_luo)
    return p


def main(argv=None):
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except CorruptFile as exc:
        sys.stderr.write("%s\n" % exc)
        return 8
