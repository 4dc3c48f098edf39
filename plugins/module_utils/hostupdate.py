# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of one host's live update, each journaled, shared by the modules (the controller
drives a host) and by the host's own agent (the boot-time restore runs without a controller).

Journal (root-only, durable): ``{"update_id", "phase", "vms": {name: {"state", ...}}, "log"}``.
A VM's state goes running -> saving -> saved -> restoring -> restored, or ends ``held`` (its
memory failed verification: not resumed, state and memory files kept) or ``restore_failed``.
A VM whose state file exists is never cold-started: it is restored, on verified memory, or held.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import os
import sys
import threading
import time
import uuid

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, manifest
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import locked, read_json, write_json
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

BASE = "/var/lib/guestmemfs-liveupdate"
JOURNAL = os.path.join(BASE, "journal.json")
UNIT = "guestmemfs-vm@%s.service"


class UpdateError(Exception):
    """A step failed; the message says what was left where and how to recover."""


def _boot_id():
    with open("/proc/sys/kernel/random/boot_id") as fh:
        return fh.read().strip()


def load_journal(path=JOURNAL):
    return read_json(path, {}) or {}


def update_journal(fn, path=JOURNAL, msg=None):
    """Read, change with ``fn(journal)``, write, under a lock: VM units restore in parallel."""
    with locked(path):
        j = load_journal(path)
        fn(j)
        if msg:
            j.setdefault("log", []).append({"ts": time.time(), "boot_id": _boot_id(), "msg": msg})
        write_json(path, j)
        return j


def vm_names(conf_dir=cpr.CONF_DIR):
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(conf_dir, "*.json")))


def _set_vm(name, **fields):
    def fn(j):
        j.setdefault("vms", {}).setdefault(name, {}).update(fields)
    return fn


def save_all(run, names=None, mode="full", conf_dir=cpr.CONF_DIR, timeout=120):
    """Save every running VM (in parallel) and record the manifest that gates their restore.

    Extents are recorded before any VM pauses; content once they are stopped. On a failure the
    VMs already saved are restored on this kernel (their units restart them from the state file)
    and UpdateError names each VM's outcome. ``run(argv) -> rc`` runs a command (systemctl)."""
    names = names if names is not None else vm_names(conf_dir)
    vms = [cpr.VM.load(n, conf_dir) for n in names]
    status = dict((vm.name, cpr.status(vm)) for vm in vms)
    running = [vm for vm in vms if status[vm.name] in ("running", "paused")]
    # A VM whose QEMU holds its memory but cannot be saved would die in the kexec: refuse.
    unsaveable = ["%s (QMP status %s; mapped by %s)" % (vm.name, status[vm.name], ", ".join(
        "%s[%d]" % (c, pid) for pid, c, _f in users(vm.mem_path)))
        for vm in vms if vm not in running and users(vm.mem_path)]
    if unsaveable:
        raise UpdateError("VMs that run but cannot be saved: %s. Nothing was paused; fix or stop them first"
                          % "; ".join(unsaveable))
    if not running:
        raise UpdateError("no running VM to save among %s" % (", ".join(names) or "none"))
    for vm in vms:
        if os.path.exists(vm.state_path):
            raise UpdateError("%s: a state file already exists (%s): an earlier save was not restored "
                              "(journal: %s). Nothing was paused; restore it first (agent verify %s, then "
                              "systemctl start %s)" % (vm.name, vm.state_path,
                                                       load_journal().get("vms", {}).get(vm.name, {}).get("state"),
                                                       vm.name, UNIT % vm.name))
    update_id = str(uuid.uuid4())

    def begin(j):
        j.update(update_id=update_id, phase="saving", started_ts=time.time(), from_boot_id=_boot_id())
        j["vms"] = dict((vm.name, {"state": "saving", "mem_path": vm.mem_path}) for vm in running)
    update_journal(begin, msg="saving %d VMs" % len(running))
    m = manifest.record(dict((vm.name, vm.mem_path) for vm in running), mode=mode, content=False)

    results, errors = {}, {}

    def one(vm):
        try:
            r = cpr.save(vm, timeout=timeout)
            # The test guest's counter, as the saved memory holds it (any guest: 4 bytes at 2 MiB).
            r["counter_saved"] = cpr.read_counter(vm.mem_path)
            results[vm.name] = r
            update_journal(_set_vm(vm.name, state="saved", state_path=vm.state_path, **r))
        except Exception as exc:  # any failure of one VM must not stop the others' rollback
            errors[vm.name] = str(exc)
    threads = [threading.Thread(target=one, args=(vm,)) for vm in running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # The saved VMs' memory is final now: hash it, so that whatever comes next (kexec, or a
    # rollback on this kernel) restores them only on verified memory.
    manifest.add_content(m, names=set(results))
    for name in errors:
        m["files"].pop(name, None)
    manifest.save(m)
    if errors:
        for vm in running:
            if vm.name in errors:
                now = cpr.status(vm)
                update_journal(_set_vm(vm.name, state="running" if now == "running" else "down (%s)" % now,
                                       error=errors[vm.name]))
        rolled = rollback(run, sorted(results))
        update_journal(lambda j: j.update(phase="rolled_back"), msg="save failed: %s" % errors)
        raise UpdateError("saving failed for %s; those VMs were resumed where they ran. VMs already saved "
                          "were restored on this kernel: %s" % (
                              "; ".join("%s: %s" % kv for kv in sorted(errors.items())), rolled or "none"))
    os.sync()
    update_journal(lambda j: j.update(phase="saved", saved_ts=time.time()),
                   msg="saved %d VMs; manifest %s" % (len(running), manifest.MANIFEST_PATH))
    return {"update_id": update_id, "vms": results, "manifest_record_s": m.get("record_s"),
            "manifest_content_s": m.get("content_s")}


def rollback(run, names):
    """Restore saved VMs on the running kernel: verify their memory, then start their units (the
    same path as after a kexec: incoming migration, resume). Returns a text per VM."""
    verdicts = verify_pending(names)
    out = []
    for name in names:
        if verdicts.get(name, {}).get("status") not in (None, manifest.OK):
            out.append("%s NOT restored: %s" % (name, verdicts[name]["detail"]))
            continue
        rc = run(["systemctl", "start", UNIT % name])
        out.append("%s %s" % (name, "restored" if rc == 0 else "NOT restored (rc %d): see journalctl -u %s"
                              % (rc, UNIT % name)))
    return ", ".join(out)


def verify_pending(names=None):
    """Verify the memory of every saved VM (or of ``names``) against the manifest, in parallel.
    ``ok`` -> state restoring (its unit may restore it); anything else -> held, never resumed.
    Runs at boot from guestmemfs-verify.service, before any VM unit starts."""
    j = load_journal()
    pending = [n for n, v in j.get("vms", {}).items()
               if v.get("state") in ("saved", "restore_failed", "held") and (names is None or n in names)]
    m = manifest.load() or {}
    verdicts = {}

    def one(name):
        entry = m.get("files", {}).get(name)
        verdicts[name] = manifest.verify_file(entry) if entry else {
            "status": "no_manifest", "detail": "no manifest entry for %s" % name}
    threads = [threading.Thread(target=one, args=(n,)) for n in pending]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, verdict in verdicts.items():
        if verdict["status"] == manifest.OK:
            update_journal(_set_vm(name, state="restoring", verify=verdict, verified_ts=time.time()),
                           msg="%s verified" % name)
        else:
            update_journal(_set_vm(name, state="held", verify=verdict),
                           msg="%s held: %s" % (name, verdict["detail"]))
    return verdicts


def vm_run(name, conf_dir=cpr.CONF_DIR):
    """The VM unit's ExecStart: a cold start, or, with a saved state whose memory verified, QEMU
    with -incoming defer. A VM whose state file exists is never cold-started."""
    vm = cpr.VM.load(name, conf_dir)
    if not os.path.exists(vm.state_path):
        os.execvp(vm.argv()[0], vm.argv())
    rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") == "restoring":
        os.execvp(vm.argv(incoming=True)[0], vm.argv(incoming=True))
    if rec.get("state") == "held":
        sys.stderr.write("%s NOT resumed: %s. State %s and memory %s are kept. Recover: check the backend, "
                         "then restore the memory file from a copy and run `agent verify`, or boot the VM "
                         "afresh after moving the state file away.\n"
                         % (name, rec.get("verify", {}).get("detail"), vm.state_path, vm.mem_path))
        return 4
    sys.stderr.write("%s: state file %s exists but its memory is not verified (journal: %s): not starting. "
                     "Run `agent verify %s` first.\n" % (name, vm.state_path, rec.get("state"), name))
    return 3


def vm_restore(name, conf_dir=cpr.CONF_DIR):
    """The VM unit's ExecStartPost: finish an incoming restore and resume the VM."""
    rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") != "restoring":
        return 0
    vm = cpr.VM.load(name, conf_dir)
    counter_at_restore = cpr.read_counter(vm.mem_path)
    try:
        r = cpr.restore(vm)
    except Exception as exc:
        update_journal(_set_vm(name, state="restore_failed", error=str(exc)),
                       msg="%s restore failed: %s" % (name, exc))
        sys.stderr.write("%s: restore failed: %s; state %s and memory %s kept\n" % (name, exc, vm.state_path,
                                                                                    vm.mem_path))
        return 1
    blackout = round(r["resume_ts"] - rec["stop_ts"], 3) if rec.get("stop_ts") else None
    os.rename(vm.state_path, vm.state_path + ".restored")
    update_journal(_set_vm(name, state="restored", blackout_s=blackout, to_boot_id=_boot_id(),
                           counter_at_restore=counter_at_restore, **r),
                   msg="%s resumed, blackout %ss" % (name, blackout))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write("usage: agent verify [NAME...] | vm-run NAME | vm-restore NAME | status | "
                         "counter-guest PATH\n")
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "vm-run" and len(args) == 1:
        return vm_run(args[0])
    if cmd == "vm-restore" and len(args) == 1:
        return vm_restore(args[0])
    if cmd == "verify":
        verdicts = verify_pending(args or None)
        for name, v in sorted(verdicts.items()):
            sys.stdout.write("%s: %s: %s\n" % (name, v["status"], v["detail"]))
        return 0 if all(v["status"] == manifest.OK for v in verdicts.values()) else 4
    if cmd == "counter-guest" and len(args) == 1:
        with open(args[0], "wb") as fh:
            fh.write(cpr.counter_guest())
        return 0
    if cmd == "status":
        import json
        sys.stdout.write(json.dumps(load_journal(), indent=1, sort_keys=True) + "\n")
        return 0
    sys.stderr.write("unknown command: %s\n" % " ".join(argv))
    return 2
