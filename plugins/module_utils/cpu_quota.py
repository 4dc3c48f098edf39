# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's CPU quota (its definition's ``cpu_quota``): systemd's CPUQuota= on the VM's unit, set at
run time once its guest runs and lifted while it is paused for a save.

Not in the unit file: a quota there also holds the unit's own work inside the blackout - the agent
verifying the memory and restoring, the new QEMU loading the state - at the guest's share of a CPU
(a counting guest at 20% took 62.8 s to move to a new QEMU where its unlimited neighbour took 14.4 s,
docs/qemu-update.md). A paused guest uses no CPU, so lifting the quota takes nothing from anyone.

``run(argv) -> rc`` runs systemctl (handed in, as every runner of the host-side steps). A quota that
cannot be set never stops a VM: the caller says so and the VM runs on."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

UNIT = "guestmemfs-vm@%s.service"


def set_property_argv(name, quota):
    """systemctl's argv setting VM ``name``'s quota until the next boot (None: no limit)."""
    return ["systemctl", "set-property", "--runtime", UNIT % name, "CPUQuota=%s" % (quota or "")]


def apply(run, conf):
    """Give a running VM its definition's quota. -> None, or why it failed (a text)."""
    if not conf.get("cpu_quota"):
        return None
    return _set(run, conf["name"], conf["cpu_quota"])


def lift(run, conf):
    """Lift a paused VM's quota, so that its QEMU saves and its next start restores at full speed."""
    if not conf.get("cpu_quota"):
        return None
    return _set(run, conf["name"], None)


def _set(run, name, quota):
    argv = set_property_argv(name, quota)
    try:
        rc = run(argv)
    except (IOError, OSError) as exc:
        return "%s: %s" % (" ".join(argv), exc)
    return None if rc == 0 else "%s: rc %s" % (" ".join(argv), rc)


CGROUP_ROOT = "/sys/fs/cgroup"


def enforced(run_out, name, cgroup_root=CGROUP_ROOT):
    """VM ``name``'s quota as its cgroup enforces it now, in percent of one CPU (None: no limit).
    ``run_out(argv) -> (rc, stdout, stderr)``. Raises OSError when it cannot be read."""
    argv = ["systemctl", "show", "--value", "--property=ControlGroup", UNIT % name]
    rc, out, err = run_out(argv)
    if rc != 0 or not out.strip():
        raise OSError("%s: rc %s %s" % (" ".join(argv), rc, (err or "no control group").strip()))
    with open(cgroup_root + out.strip() + "/cpu.max") as fh:
        fields = fh.read().split()
    return None if fields[0] == "max" else int(fields[0]) * 100.0 / int(fields[1])


def keep(run, run_out, confs, running, cgroup_root=CGROUP_ROOT):
    """Give each running VM of ``confs`` (their definitions) the quota its definition sets, where its
    cgroup does not enforce it (a unit file that held the quota before this module gave it at run
    time; a quota changed since the VM started). -> {name: (changed, text)} for VMs with a quota."""
    out = {}
    for conf in confs:
        name, quota = conf["name"], conf.get("cpu_quota")
        if not quota or name not in running:
            continue
        why = None
        try:
            now = enforced(run_out, name, cgroup_root)
        except (IOError, OSError, ValueError, IndexError) as exc:
            now, why = "unknown", str(exc)
        if now not in (None, "unknown") and abs(now - float(quota.rstrip("%"))) < 0.5:
            out[name] = (False, "%s: CPUQuota=%s (enforced)" % (name, quota))
            continue
        err = apply(run, conf)
        was = "no limit" if now is None else ("unknown: %s" % why) if now == "unknown" else "%g%%" % now
        out[name] = (err is None, "%s: CPUQuota=%s set (was %s)" % (name, quota, was) if err is None else
                     "%s: CPUQuota=%s NOT set (was %s): %s" % (name, quota, was, err))
    return out
