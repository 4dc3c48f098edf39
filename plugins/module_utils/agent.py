# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host agent's command line: ``/usr/lib/guestmemfs-liveupdate/agent SUBCOMMAND``, run by the
units of the qemu_vm role and by the live update's kexec step. One parser; each subcommand checks
its own arguments (exit 2 with a usage line otherwise). Exit codes: 0 done, 2 usage, 3-7 and 9 a VM
not started (see hostupdate.vm_run; 9: its confined QEMU could not be given what it
needs), 4 a VM held or not checked (verify), 5 the kexec, a holder request or
a discard-state refused, 8 the journal or the manifest is not JSON (the message names the file and
the recovery).

Every answer reaches its caller: the agent does not exit while what it wrote to a pipe is unread
(``delivered``). Ansible's command module stops reading once one second passed without output and
the process is gone; a refusal written just before the exit was lost that way (rc 5, empty
stdout and stderr, on a loaded machine)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import fcntl
import functools
import json
import os
import stat
import struct
import subprocess
import sys
import termios
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    cpr, cpu_quota, hostupdate, journal, manifest, memfd_holder, metrics, qemu_update, vmdef)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile


def unread(fd):
    """Bytes written to pipe ``fd`` that its reader has not taken yet (0 for anything else)."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, IOError, ValueError):
        return 0


def delivered(streams=None, timeout=30.0, poll=0.02):
    """Flush ``streams`` (stdout, stderr) and wait, at most ``timeout`` seconds, until a reader took
    what sits in their pipes, so that a caller polling for the exit between reads gets it all."""
    fds = []
    for stream in streams or (sys.stdout, sys.stderr):
        try:
            stream.flush()
            fds.append(stream.fileno())
        except (AttributeError, OSError, IOError, ValueError):
            continue
    deadline = time.monotonic() + timeout
    while any(unread(fd) for fd in fds) and time.monotonic() < deadline:
        time.sleep(poll)


def _verify(a):
    if a.boot:
        hostupdate.verify_pending(content=False)
        sys.stdout.write("boot recorded in the journal %s; each VM's unit verifies its own memory\n" % journal.JOURNAL)
        return 0
    verdicts = hostupdate.verify_pending(a.names or None)
    for name, v in sorted(verdicts.items()):
        sys.stdout.write("%s: %s: %s\n" % (name, v["status"], v["detail"]))
    # Say what was not checked: a VM that is not saved has nothing to verify, which is no "ok".
    vms = journal.load_journal().get("vms") or {}
    unchecked = [n for n in a.names if n not in verdicts]
    for name in unchecked:
        rec = vms.get(name) or {}
        why = (rec.get("verify") or {}).get("detail") if rec.get("state") == "held" else None
        if rec.get("state") == "not_started":
            why = "verified on boot %s; not started: %s" % (rec.get("verified_boot_id"), rec.get("error"))
        sys.stdout.write("%s: not checked: its journal state is %s%s; only a saved, held or restore_failed VM's "
                         "memory is verified, or one verified on an earlier boot\n" % (
                             name, rec.get("state") or "none (not in the update)", " (%s)" % why if why else ""))
    if not a.names and not verdicts:
        sys.stdout.write("no saved VM to verify: nothing is pending in the journal %s\n" % journal.JOURNAL)
    return 0 if all(v["status"] == manifest.OK for v in verdicts.values()) and not unchecked else 4


def _discard(a):
    rc, text = hostupdate.discard_state(a.name)
    (sys.stdout if rc == 0 else sys.stderr).write(text + "\n")
    return rc


def _cpu_quota(a):
    names = a.names or cpr.vm_names(cpr.CONF_DIR)
    vms = [cpr.VM.load(n, cpr.CONF_DIR) for n in names]
    running = set(vm.name for vm in vms if cpr.status(vm) == "running")
    out = cpu_quota.keep(subprocess.call, functools.partial(capture, subprocess.Popen), [vm.conf for vm in vms], running)
    for _name, (_changed, text) in sorted(out.items()):
        sys.stdout.write(text + "\n")
    return 1 if any(" NOT set " in text for _c, text in out.values()) else 0


def _kexec(a):
    err = hostupdate.kexec_now(subprocess.call)
    if err:
        sys.stderr.write(err + "\n")
        return 5
    return 0


def _update(a):
    try:
        r = hostupdate.update_host(subprocess.call, a.names or None, mode=a.mode, update_id=a.update_id,
                                   conf_dir=cpr.CONF_DIR)
    except hostupdate.UpdateError as exc:
        sys.stderr.write("%s\n" % exc)
        return 5
    sys.stdout.write("update %s: every VM saved, the kexec started\n" % r["update_id"])
    return 0


def capture(popen, argv, timeout=60):
    """``argv``'s (rc, stdout, stderr), as a module's run_command gives them; ``popen`` is
    subprocess.Popen (handed in, as every runner the agent gives the host-side steps)."""
    p = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise OSError("%s did not answer within %ds" % (" ".join(argv), timeout))
    return p.returncode, out, err


def _qemu_update(a):
    run_out = functools.partial(capture, subprocess.Popen)
    try:
        if a.keep_only:
            for name, path in sorted(qemu_update.keep_all(run_out, a.names or None, cpr.CONF_DIR).items()):
                sys.stdout.write("%s: its running QEMU is kept as %s\n" % (name, path))
            return 0
        if not a.binary:
            sys.stderr.write("agent qemu-update: --binary is required (or --keep-only)\n")
            return 2
        r = qemu_update.update_qemu(subprocess.call, run_out, a.binary, a.names or None, parallel=a.parallel, mode=a.mode,
                                    update_id=a.update_id, conf_dir=cpr.CONF_DIR)
    except hostupdate.UpdateError as exc:
        sys.stderr.write("%s\n" % exc)
        return 5
    for _name, text in sorted(r["vms"].items()):
        sys.stdout.write(text + "\n")
    sys.stdout.write("QEMU update %s: every VM resumed on %s\n" % (r["update_id"], a.binary))
    return 0


def positive(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError("a whole number of at least 1, not %r" % text)
    return n


# What an operator does next, by the step the journal alone gives (journal.next_step).
NEXT_ACTION = {
    "start": "nothing to do here: playbooks/liveupdate.yml updates this host",
    "done": "nothing to do here: playbooks/liveupdate.yml updates this host",
    "wait_save": "wait for the save to finish; a run of playbooks/liveupdate.yml waits for it too",
    "rollback": "re-run playbooks/liveupdate.yml: it restores the saved VMs on this kernel (or: agent verify, "
                "then systemctl start guestmemfs-vm@NAME for each saved VM)",
    "kexec": "re-run playbooks/liveupdate.yml: it kexecs without saving again, or restores the VMs on this "
             "kernel when the kexec cannot happen",
    "wait": "wait for the VM units to restore the VMs (journalctl -u 'guestmemfs-vm@*'); then re-run "
            "playbooks/liveupdate.yml to finish the host",
    "blocked": "follow the recovery above; `agent status --json` shows the whole journal",
}


def status_summary(j, boot):
    """The journal in a few lines: the update and its phase, each VM's state, what is wrong and the
    next action -> (text, exit code: 0 nothing wrong, 4 an operator must act)."""
    step, reason = journal.next_step(j, boot)
    vms = j.get("vms", {}) or {}
    lines = ["update %s: phase %s%s" % (j.get("update_id") or "-", j.get("phase") or "none (no update yet)",
                                        "" if j.get("from_boot_id") in (None, boot) else " (saved on an earlier boot)")]
    for name, v in sorted(vms.items()):
        detail = journal.vm_detail(v)
        lines.append("  %s: %s%s" % (name, v.get("state", "?"), " (%s)" % detail if detail else ""))
    if not vms:
        lines.append("  no VMs in the journal")
    wrong = step in ("blocked", "rollback")
    lines.append("%s: %s" % ("wrong" if wrong else "state", reason))
    lines.append("next: %s" % NEXT_ACTION[step])
    return "\n".join(lines) + "\n", 4 if step == "blocked" else 0


def _proofs(a):
    """The kernel pairs this host's updates proved or found failing; --forget PAIR drops one (after a
    failure was understood: the pair's checks are full on the whole fleet until then)."""
    if a.forget:
        found = {}

        def drop(j):
            found.update({a.forget: (j.get("proofs") or {}).pop(a.forget, None)})
            if found[a.forget]:
                journal.note(j, "kernel pair %s: its %s record forgotten (agent proofs --forget)" % (
                    a.forget, found[a.forget].get("result")))
        journal.update_journal(drop)
        if not found[a.forget]:
            sys.stderr.write("no record of kernel pair %r here; the pairs recorded: %s\n" % (
                a.forget, ", ".join(sorted(journal.load_journal().get("proofs") or {})) or "none"))
            return 1
        sys.stdout.write("kernel pair %s: its %s record (update %s) forgotten\n" % (
            a.forget, found[a.forget].get("result"), found[a.forget].get("update_id")))
        return 0
    recs = journal.load_journal().get("proofs") or {}
    if a.json:
        sys.stdout.write(json.dumps(recs, indent=1, sort_keys=True) + "\n")
        return 0
    for key, rec in sorted(recs.items()):
        sys.stdout.write("%-60s %-7s %s update %s: %s\n" % (
            key, rec.get("result"), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rec.get("ts") or 0)),
            rec.get("update_id"), rec.get("detail")))
    if not recs:
        sys.stdout.write("no kernel pair proven or failed on this host yet\n")
    return 0


def _status(a):
    j = journal.load_journal()
    if a.json:
        sys.stdout.write(json.dumps(j, indent=1, sort_keys=True) + "\n")
        return 0
    text, code = status_summary(j, journal.boot_id())
    sys.stdout.write(text)
    return code


def _metrics(a):
    d = metrics.textfile_dir()
    if not d:
        sys.stdout.write("the metrics file is off (%s gives no textfile_dir)\n" % metrics.CONFIG)
        return 0
    path = os.path.join(d, metrics.FILE)
    if not metrics.refresh(journal.load_journal()):
        sys.stderr.write("%s was not written (see the line above)\n" % path)
        return 5
    sys.stdout.write("%s written from the journal %s\n" % (path, journal.JOURNAL))
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


README = "/usr/lib/guestmemfs-liveupdate/README"


def vm_name(text):
    """A VM name by the one rule (vmdef.NAME_RE): it becomes a path, a unit instance and a QEMU id."""
    try:
        return vmdef.check_name(text)
    except vmdef.VMDefError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def parser():
    p = argparse.ArgumentParser(prog="agent", description="guestmemfs.liveupdate host agent: the boot-time "
                                "restore, the guarded kexec and the luo backend's memfd holder",
                                epilog="Start with `agent status`. The journal is %s; the units and this "
                                "agent are described in %s." % (journal.JOURNAL, README))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("verify", help="verify saved VMs' memory against the manifest (all pending, or NAME...)")
    s.add_argument("names", nargs="*", metavar="NAME", type=vm_name)
    s.add_argument("--boot", action="store_true", help="at boot (guestmemfs-verify.service): only finalise what "
                   "the end of the last boot cut short and record this boot; each VM's unit verifies its own memory")
    s.set_defaults(func=_verify)
    s = sub.add_parser("vm-run", help="the VM unit's ExecStart: cold start, or QEMU -incoming defer; under "
                       "its Type=notify unit also the restore (forked), READY=1 once the VM runs")
    s.add_argument("name", metavar="NAME", type=vm_name)
    s.set_defaults(func=lambda a: hostupdate.vm_run(a.name))
    s = sub.add_parser("vm-restore", help="finish the restore of a QEMU that vm-run started with -incoming defer "
                       "and resume it: by hand, or as ExecStartPost of a unit rendered by an earlier version")
    s.add_argument("name", metavar="NAME", type=vm_name)
    s.set_defaults(func=lambda a: hostupdate.vm_restore(a.name, subprocess.call))
    s = sub.add_parser("discard-state", help="discard VM NAME's saved state on purpose (journaled; kept aside): "
                       "its unit then boots it afresh")
    s.add_argument("name", metavar="NAME", type=vm_name)
    s.set_defaults(func=_discard)
    s = sub.add_parser("status", help="where the update stands: each VM, what is wrong and the next action "
                       "(exit 4 when an operator must act)")
    s.add_argument("--json", action="store_true", help="print the whole journal as JSON instead")
    s.set_defaults(func=_status)
    s = sub.add_parser("proofs", help="the kernel pairs this host's updates proved by a full memory check, or "
                       "found changing a VM's memory (kept across updates; liveupdate.yml reads every host's)")
    s.add_argument("--json", action="store_true", help="print them as JSON")
    s.add_argument("--forget", metavar="PAIR", help="drop this host's record of PAIR ('RUNNING -> TARGET'), e.g. "
                   "a failure understood and fixed: its checks are full on the whole fleet until then")
    s.set_defaults(func=_proofs)
    sub.add_parser("metrics", help="write the node_exporter textfile from the journal now (every journal change "
                   "writes it too; docs/metrics.md)").set_defaults(func=_metrics)
    sub.add_parser("kexec", help="kexec, only when every VM is saved on this boot").set_defaults(func=_kexec)
    s = sub.add_parser("cpu-quota", help="give each running VM (or NAME...) the CPU quota its definition sets, "
                       "where its cgroup does not enforce it (the agent sets quotas at run time; exit 1 when one "
                       "could not be set)")
    s.add_argument("names", nargs="*", metavar="NAME", type=vm_name)
    s.set_defaults(func=_cpu_quota)
    s = sub.add_parser("update", help="the whole update of this host in one process: save every VM (or NAME...), "
                       "record the manifest, sync, kexec into the loaded kernel; a kexec that does not happen "
                       "restores the VMs on this kernel (exit 5)")
    s.add_argument("names", nargs="*", metavar="NAME", type=vm_name)
    s.add_argument("--mode", choices=sorted(manifest.MODES), default="full",
                   help="the manifest's content check (default full)")
    s.add_argument("--update-id", help="the update's id (default: a new one)")
    s.set_defaults(func=_update)
    s = sub.add_parser("qemu-update", help="replace the QEMU under every running VM (or NAME...) by --binary, "
                       "without a kexec: save, start the new QEMU on the saved state, verify the memory, resume; "
                       "a new QEMU that does not restore a VM gives it back to its old one (exit 5)")
    s.add_argument("names", nargs="*", metavar="NAME", type=vm_name)
    s.add_argument("--binary", help="the new QEMU, an absolute path")
    s.add_argument("--keep-only", action="store_true", help="only keep a copy of the QEMU each VM runs (its "
                   "executable, modules and firmware), before a package replaces it in place; pauses nothing")
    s.add_argument("--parallel", type=positive, default=1, help="VMs updated at a time (default 1)")
    s.add_argument("--mode", choices=sorted(manifest.MODES), default="sampled",
                   help="the memory check (default sampled: the memory never moved)")
    s.add_argument("--update-id", help="the update's id (default: a new one)")
    s.set_defaults(func=_qemu_update)
    sub.add_parser("luo-hold", help="run the memfd holder (guestmemfs-luo.service)").set_defaults(
        func=lambda a: memfd_holder.hold())
    s = sub.add_parser("luo", help="ask the memfd holder (luo backend)")
    ops = s.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    ops.add_parser("status", help="the holder's memfds and session")
    o = ops.add_parser("ensure", help="a memfd of SIZE bytes for VM NAME")
    o.add_argument("name", metavar="NAME", type=vm_name)
    o.add_argument("size", metavar="SIZE", type=int)
    ops.add_parser("drop", help="drop VM NAME's memfd (not in use)").add_argument("name", metavar="NAME", type=vm_name)
    ops.add_parser("preserve", help="preserve the memfds (all, or NAME...)").add_argument(
        "names", nargs="*", metavar="NAME", type=vm_name)
    ops.add_parser("unpreserve", help="give up this boot's preserved session")
    o = ops.add_parser("retrieve", help="retrieve VM NAME's memfd by TOKEN after a kexec")
    o.add_argument("name", metavar="NAME", type=vm_name)
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
    finally:
        delivered()
