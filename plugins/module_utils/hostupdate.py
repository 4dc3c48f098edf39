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
    running = [vm for vm in vms if cpr.status(vm) in ("running", "paused")]
    if not running:
        raise UpdateError("no running VM to save among %s" % (", ".join(names) or "none"))
    for vm in running:
        if os.path.exists(vm.state_path):
            raise UpdateError("%s: a state file already exists (%s): an earlier save was not restored; "
                              "restore it first (systemctl start %s)" % (vm.name, vm.state_path, UNIT % vm.name))
    update_id = str(uuid.uuid4())

    def begin(j):
        j.update(update_id=update_id, phase="saving", started_ts=time.time(), from_boot_id=_boot_id())
        j["vms"] = dict((vm.name, {"state": "saving", "mem_path": vm.mem_path}) for vm in running)
    update_journal(begin, msg="saving %d VMs" % len(running))
    m = manifest.record(dict((vm.name, vm.mem_path) for vm in running), mode=mode, content=False)

    results, errors = {}, {}

    def one(vm):
        try:
            results[vm.name] = cpr.save(vm, timeout=timeout)
        except Exception as exc:  # any failure of one VM must not stop the others' rollback
            errors[vm.name] = str(exc)
    threads = [threading.Thread(target=one, args=(vm,)) for vm in running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    if errors:
        for name in errors:
            update_journal(_set_vm(name, state="running", error=errors[name]))
        rolled = rollback(run, list(results))
        update_journal(lambda j: j.update(phase="rolled_back"), msg="save failed: %s" % errors)
        raise UpdateError("saving failed for %s; those VMs were resumed where they ran. VMs already saved "
                          "were restored on this kernel: %s" % (
                              "; ".join("%s: %s" % kv for kv in sorted(errors.items())), rolled or "none"))
    manifest.add_content(m)
    manifest.save(m)
    for vm in running:
        # The test guest's counter, as the saved memory holds it (any guest: 4 bytes at 2 MiB).
        results[vm.name]["counter_saved"] = cpr.read_counter(vm.mem_path)
        update_journal(_set_vm(vm.name, state="saved", state_path=vm.state_path, **results[vm.name]))
    os.sync()
    update_journal(lambda j: j.update(phase="saved", saved_ts=time.time()),
                   msg="saved %d VMs; manifest %s" % (len(running), manifest.MANIFEST_PATH))
    return {"update_id": update_id, "vms": results, "manifest_record_s": m.get("record_s"),
            "manifest_content_s": m.get("content_s")}


def rollback(run, names):
    """Restore saved VMs on the running kernel by starting their units (the same path as after a
    kexec: verify, incoming migration, resume). Returns a text per VM."""
    out = []
    for name in names:
        rc = run(["systemctl", "start", UNIT % name])
        out.append("%s %s" % (name, "restored" if rc == 0 else "NOT restored (rc %d): see journalctl -u %s"
                              % (rc, UNIT % name)))
    return ", ".join(out)


def vm_run(name, conf_dir=cpr.CONF_DIR):
    """The VM unit's ExecStart: cold start, or incoming restore on verified memory, or refuse."""
    vm = cpr.VM.load(name, conf_dir)
    if not os.path.exists(vm.state_path):
        os.execvp(vm.argv()[0], vm.argv())
    rec = load_journal().get("vms", {}).get(name, {})
    if rec.get("state") not in ("saved", "restoring", "restore_failed"):
        sys.stderr.write("%s: state file %s exists but the journal has no saved record (%s): not starting. "
                         "Inspect it; remove it only if the VM is to boot afresh.\n" % (name, vm.state_path, rec))
        return 3
    m = manifest.load()
    entry = (m or {}).get("files", {}).get(name)
    if not entry:
        verdict = {"status": "no_manifest", "detail": "no manifest entry for %s" % name}
    else:
        verdict = manifest.verify_file(entry)
    if verdict["status"] != manifest.OK:
        update_journal(_set_vm(name, state="held", verify=verdict),
                       msg="%s held: %s" % (name, verdict["detail"]))
        sys.stderr.write("%s NOT resumed: %s. State %s and memory %s are kept. Recover: check the backend, "
                         "then restore from a copy of the memory, or boot the VM afresh after removing the "
                         "state file.\n" % (name, verdict["detail"], vm.state_path, vm.mem_path))
        return 4
    update_journal(_set_vm(name, state="restoring", verify=verdict, verified_ts=time.time()),
                   msg="%s verified; restoring" % name)
    os.execvp(vm.argv(incoming=True)[0], vm.argv(incoming=True))


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
        sys.stderr.write("usage: agent vm-run NAME | vm-restore NAME | status | counter-guest PATH\n")
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "vm-run" and len(args) == 1:
        return vm_run(args[0])
    if cmd == "vm-restore" and len(args) == 1:
        return vm_restore(args[0])
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
