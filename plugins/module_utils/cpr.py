# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU VMs whose RAM lives on the memory backend, and their save and restore with QEMU's
cpr-reboot migration mode: only device state goes to the state file (x-ignore-shared skips the
shared RAM file), the RAM stays where it is."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import os
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine, cpu_quota, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMP, QMPError, event_time

CONF_DIR = "/etc/guestmemfs-liveupdate/vms"
RUN_DIR = "/run/guestmemfs-liveupdate"
# The luo backend: links to the memfds its holder owns (memfd_holder).
LUO_LINK_DIR = os.path.join(RUN_DIR, "luo")
STATE_DIR = "/var/lib/guestmemfs-liveupdate/state"
CAPABILITIES = [{"capability": "events", "state": True}, {"capability": "x-ignore-shared", "state": True}]


class VM(object):
    """One VM's recorded configuration on its host: its normalized definition (module_utils/vmdef)
    plus where its RAM is (``mem_path``) and which backend holds it, as the qemu_vm role's
    vm_definition module writes it to CONF_DIR/<name>.json."""

    def __init__(self, conf):
        self.conf = conf
        self.name = conf["name"]
        self.memory_bytes = int(conf["memory_bytes"])
        self.mem_path = conf["mem_path"]
        self.backend = conf.get("backend")
        self.qmp_path = vmdef.qmp_path(conf, RUN_DIR)
        self.qga_path = vmdef.qga_path(conf, RUN_DIR)
        # What its running QEMU was launched with (vmdef.launch; None: as root): the caller sets
        # it from the recorded launch, so that a save and a restore give the state file to the
        # user the QEMU runs as.
        self.launch = None
        self.state_path = conf.get("state") or os.path.join(STATE_DIR, self.name + ".state")

    @classmethod
    def load(cls, name, conf_dir=CONF_DIR):
        path = os.path.join(conf_dir, vmdef.check_name(name) + ".json")
        with open(path) as fh:
            try:
                return cls(json.load(fh))
            except ValueError as exc:
                raise vmdef.VMDefError("VM %s: its configuration %s is not JSON (%s): run the prepare playbook "
                                       "to write it again" % (name, path, exc))

    def argv(self):
        """The argv of a cold start, built from this configuration."""
        return vmdef.build_argv(self.conf, RUN_DIR)

    def cold_launch(self):
        """The launch of a cold start, from this configuration."""
        return vmdef.launch(self.conf)


def vm_names(conf_dir=CONF_DIR):
    """The names of the VMs configured on this host."""
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(conf_dir, "*.json")))


def _prepare_migration(q):
    q.cmd("migrate-set-capabilities", capabilities=CAPABILITIES)
    q.cmd("migrate-set-parameters", mode="cpr-reboot")


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(vm, timeout=120, before_quit=None, run=None):
    """Pause the VM, write its device state with cpr-reboot, make it durable, quit QEMU.

    ``before_quit(vm, timings)`` runs once the state file is complete and durable, before QEMU quits
    (the caller makes the VM's digests and journal durable there): if it raises, the VM resumes.
    Returns timings (QMP timestamps, host CLOCK_REALTIME). On failure the VM is resumed when it
    still runs (a failed migration is cancelled first) and the exception says what happened; a
    state file is removed unless QEMU quit after it (a resumed VM's state is stale). With ``run``
    (systemctl), the VM's CPU quota is lifted once it is paused and given back if it resumes here."""
    tmp = vm.state_path + ".partial"
    # VMs save in parallel; 0711: a confined QEMU reaches only the file it is given (confine)
    os.makedirs(os.path.dirname(vm.state_path), 0o711, exist_ok=True)
    q = QMP(vm.qmp_path, timeout=timeout)
    q.connect()
    stopped = False
    migrating = renamed = False
    give_back = None
    try:
        give_back = confine.state_owner(tmp, vm.launch)  # refuses before the pause
        _prepare_migration(q)
        q.cmd("stop")
        stopped = True
        stop = q.wait_event("STOP", 30)
        quota_error = cpu_quota.lift(run, vm.conf) if run else None
        migrating = True
        q.cmd("migrate", uri="file:" + tmp)
        done = q.wait_event("MIGRATION", timeout,
                            match=lambda e: e.get("data", {}).get("status") in ("completed", "failed", "cancelled"))
        if done["data"]["status"] != "completed":
            try:  # QEMU says why (e.g. "No space left on device"); the event alone does not
                why = (q.cmd("query-migrate") or {}).get("error-desc")
            except QMPError:
                why = None
            reason = ": %s" % why if why else ""
            raise QMPError("migration of %s to %s ended %s%s" % (vm.name, tmp, done["data"]["status"], reason))
        give_back()  # a saved state is root's: no QEMU of that user may alter it
        _fsync_path(tmp)
        os.rename(tmp, vm.state_path)
        renamed = True
        _fsync_path(os.path.dirname(vm.state_path))
        size = os.path.getsize(vm.state_path)
        out = {"stop_ts": event_time(stop), "saved_ts": event_time(done), "state_bytes": size,
               "save_s": round(event_time(done) - event_time(stop), 3)}
        if quota_error:
            out["cpu_quota_error"] = quota_error
        if before_quit:
            before_quit(vm, out)
        try:
            q.cmd("quit")
        except QMPError:
            pass  # QEMU may close the socket before answering
        return out
    except Exception:
        for path in (tmp, vm.state_path if renamed else None):
            if path and os.path.exists(path):
                os.unlink(path)
        if migrating:
            try:  # a failed or unfinished migration holds QEMU in its migration state: end it first
                q.cmd("migrate_cancel")
            except QMPError:
                pass
        if stopped:
            try:
                q.cmd("cont")
                if run:
                    cpu_quota.apply(run, vm.conf)
            except QMPError:
                pass
        raise
    finally:
        q.close()


def _nothing():
    pass


def restore(vm, timeout=120, connect_wait=60, before_cont=None):
    """Feed the saved state to a QEMU started with ``-incoming defer`` and resume the VM.
    The caller has verified the memory file first; ``before_cont(vm)`` runs (journals) right
    before the VM resumes: from then on its memory runs past the saved state."""
    q = QMP(vm.qmp_path, timeout=timeout)
    q.connect(wait=connect_wait)
    give_back = _nothing
    try:
        t0 = time.time()
        _prepare_migration(q)
        give_back = confine.state_owner(vm.state_path, vm.launch)  # QEMU reads it as its user
        q.cmd("migrate-incoming", uri="file:" + vm.state_path)
        done = q.wait_event("MIGRATION", timeout,
                            match=lambda e: e.get("data", {}).get("status") in ("completed", "failed", "cancelled"))
        give_back()
        if done["data"]["status"] != "completed":
            raise QMPError("incoming migration of %s ended %s" % (vm.name, done["data"]["status"]))
        if before_cont:
            before_cont(vm)
        q.cmd("cont")
        resume = q.wait_event("RESUME", 30)
        return {"restore_started_ts": t0, "loaded_ts": event_time(done), "resume_ts": event_time(resume)}
    finally:
        give_back()
        q.close()


def resume(vm, run=None):
    """Resume a VM paused by a save that did not finish (its RAM never left this kernel). A
    migration its dead saver left running is cancelled first: its end would pause the VM again.
    With ``run`` (systemctl), the VM gets its CPU quota back (its save lifted it)."""
    with QMP(vm.qmp_path, timeout=10) as q:
        q.connect()
        try:
            q.cmd("migrate_cancel")  # nothing to cancel is no error
        except QMPError:
            pass
        q.cmd("cont")
    if run:
        cpu_quota.apply(run, vm.conf)


def powerdown(vm):
    """Press the VM's ACPI power button: a guest that honours it shuts down and QEMU exits."""
    with QMP(vm.qmp_path, timeout=10) as q:
        q.connect()
        q.cmd("system_powerdown")


def status(vm):
    """QEMU's run state over QMP, or None when no QEMU answers."""
    try:
        with QMP(vm.qmp_path, timeout=5) as q:
            q.connect()
            return q.cmd("query-status").get("status")
    except (QMPError, IOError, OSError):
        return None
