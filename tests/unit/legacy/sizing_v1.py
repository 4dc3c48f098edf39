# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How big each host's carve-out is, or why it cannot be. Pure: no I/O.

A host is a dict with ``name``, its facts (``memory_bytes``: physical RAM as the firmware reports
it, which a carve-out does not shrink, unlike MemTotal; ``firmware_ram_ranges``: [[start, end],
...] inclusive; for luo also ``numa_nodes``: nodes with memory, and when the running kernel shows
them ``kho_scratch_bytes``, the scratch areas it has, and ``kho_scratch``, its cmdline's value)
and ``policy``:

``backend``   pmem | guestmemfs | luo (default pmem)
``mode``      fraction | absolute | vms
``fraction``  share of physical memory (mode fraction), 0 < f < 1
``size``      bytes or K/M/G/T (mode absolute)
``vms``       [{name, memory}] planned for the host (mode vms); each file is rounded up to the
              backend's granule
``headroom``  added to the VMs' sum (mode vms): a size or a percentage such as ``10%``
``reserve``   memory the host keeps for itself (kernel, QEMU, page tables); default 2G
``align``     2M (PMD) or 1G (PUD); the carve-out is rounded up (vms) or down (fraction) to it
``kho_scratch``      luo: the ``kho_scratch=`` the hosts cold-boot with (``N%`` or
                     ``lowmem,global,per-node``); default the kernel's 200% scale.
                     guestmemfs: the RFC's KHO v2 scratch area, one size; default 256M
``kernel_reserved``  luo: what the kernel reserves at boot besides its struct pages (image,
                     initramfs, crashkernel=); default 64M

luo carves nothing out: ``size`` is the memory the VMs will hold in memfds, and the plan checks
that physical RAM holds it, the backend's overhead, the KHO scratch areas and the reserve.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import io
import json

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.luo import (
    DEFAULT_KERNEL_RESERVED, parse_kho_scratch)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import (
    GiB, MiB, align_down, align_up, format_size, human, parse_size)

ALIGNS = {"2M": 2 * MiB, "1G": GiB}
MODES = ("fraction", "absolute", "vms")
POLICY_KEYS = ("backend", "mode", "fraction", "size", "vms", "headroom", "reserve", "align", "kho_scratch",
               "kernel_reserved")
LUO_KEYS = ("kho_scratch", "kernel_reserved")
DEFAULT_RESERVE = "2G"


class PlanError(Exception):
    """Why one host cannot be planned."""


def _headroom(value, vms_bytes):
    if value in (None, "", 0):
        return 0
    text = str(value).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise PlanError("headroom %r is not a percentage" % value)
        if pct < 0:
            raise PlanError("headroom %r is negative" % value)
        return int(vms_bytes * pct / 100)
    return parse_size(value, "headroom")


def _vms_bytes(vms, backend):
    if not isinstance(vms, list) or not vms:
        raise PlanError("mode vms needs a non-empty list 'vms' of {name, memory}")
    total = 0
    for vm in vms:
        if not isinstance(vm, dict) or "memory" not in vm:
            raise PlanError("each planned VM needs 'memory' (got %r)" % (vm,))
        size = backend.file_size(parse_size(vm["memory"], "memory of VM %s" % vm.get("name", "?")))
        if backend.max_file_bytes and size > backend.max_file_bytes:
            raise PlanError("VM %s needs %s, above the %s backend's %s per file%s"
                            % (vm.get("name", "?"), human(size), backend.name, human(backend.max_file_bytes),
                               backend.max_file_why))
        total += size
    return total


def _scratch(host, policy, backend):
    """The KHO scratch a cold boot of the host reserves, and where the number comes from: the
    policy's explicit sizes; what the running kernel shows, when it booted with the same
    kho_scratch= as the policy asks; else the kernel's rule over an estimate of its reservations."""
    wanted = policy.get("kho_scratch") or None
    measured = host.get("kho_scratch_bytes")
    try:
        kind = _spec_kind(wanted)
        if kind != "sizes" and measured and (host.get("kho_scratch") or None) == wanted:
            return int(measured), "running kernel"
        kernel_reserved = parse_size(policy.get("kernel_reserved", DEFAULT_KERNEL_RESERVED), "kernel_reserved")
        areas = backend.scratch(host.get("memory_bytes"), host.get("firmware_ram_ranges") or None,
                                host.get("numa_nodes") or 1, wanted, kernel_reserved)
    except (ValueError, BackendError) as exc:
        raise PlanError(str(exc))
    return areas["total"], {"sizes": "kho_scratch", "scale": "estimate"}[kind]


def _spec_kind(kho_scratch):
    """'scale' or 'sizes' for a kho_scratch value (None: the default scale); ValueError if bad."""
    return parse_kho_scratch(kho_scratch)[0] if kho_scratch else "scale"


def plan_host(host):
    """One host -> a plan row. Never raises for a bad host: the row says ``ok: False`` and why."""
    name = host.get("name")
    policy = host.get("policy") or {}
    row = {"host": name, "ok": False, "backend": policy.get("backend", "pmem"), "mode": policy.get("mode"),
           "memory_bytes": host.get("memory_bytes"), "size_bytes": None, "size": None,
           "reserve_bytes": None, "overhead_bytes": None, "scratch_bytes": None, "scratch_source": None,
           "left_bytes": None, "vms_bytes": None, "cmdline_args": [], "reason": None}
    try:
        if not policy:
            raise PlanError("no sizing policy: set guestmemfs_sizing for the host or its group")
        unknown = sorted(set(policy) - set(POLICY_KEYS))
        if unknown:
            raise PlanError("unknown policy keys %s (known: %s)" % (", ".join(unknown), ", ".join(POLICY_KEYS)))
        try:
            backend = get_backend(row["backend"])
        except ValueError as exc:
            raise PlanError(str(exc))
        if backend.carves_out:
            stray = [k for k in LUO_KEYS if k in policy and not (k == "kho_scratch" and backend.name == "guestmemfs")]
            if stray:
                raise PlanError("%s only applies to the luo backend, not %s" % (", ".join(stray), backend.name))
        memory = host.get("memory_bytes")
        if not memory:
            raise PlanError("no memory facts (unreachable, or guestmemfs_facts did not run)")
        mode = policy.get("mode")
        if mode not in MODES:
            raise PlanError("policy mode %r: use one of %s" % (mode, ", ".join(MODES)))
        align_name = str(policy.get("align", "2M")).upper()
        if align_name not in ALIGNS:
            raise PlanError("align %r: use 2M (PMD) or 1G (PUD)" % policy.get("align"))
        align = max(ALIGNS[align_name], backend.size_align)
        reserve = parse_size(policy.get("reserve", DEFAULT_RESERVE), "reserve")

        if mode == "fraction":
            try:
                fraction = float(policy.get("fraction"))
            except (TypeError, ValueError):
                raise PlanError("mode fraction needs 'fraction' between 0 and 1")
            if not 0 < fraction < 1:
                raise PlanError("fraction %r is not between 0 and 1" % policy.get("fraction"))
            size = align_down(int(memory * fraction), align)
        elif mode == "absolute":
            if policy.get("size") in (None, ""):
                raise PlanError("mode absolute needs 'size'")
            size = align_up(parse_size(policy["size"]), align)
        else:
            vms_bytes = _vms_bytes(policy.get("vms"), backend)
            row["vms_bytes"] = vms_bytes
            size = align_up(vms_bytes + _headroom(policy.get("headroom"), vms_bytes), align)

        if size <= 0:
            raise PlanError("the %s rounds to 0 at %s alignment"
                            % ("carve-out" if backend.carves_out else "VM memory", align_name))
        overhead = backend.overhead_bytes(size)
        scratch = 0
        if not backend.carves_out:
            scratch, row["scratch_source"] = _scratch(host, policy, backend)
        elif backend.name == "guestmemfs":
            try:
                scratch = backend.scratch_bytes(policy.get("kho_scratch"))
            except BackendError as exc:
                raise PlanError(str(exc))
            row["scratch_source"] = "kho_scratch" if policy.get("kho_scratch") else "default"
        left = memory - size - overhead - scratch
        row.update(size_bytes=size, size=format_size(size), reserve_bytes=reserve,
                   overhead_bytes=overhead, scratch_bytes=scratch if row["scratch_source"] else None, left_bytes=left)
        if left < reserve:
            if backend.carves_out:
                raise PlanError("carve-out %s + %s backend overhead %s%s leaves %s of %s, below the reserve %s"
                                % (human(size), backend.name, human(overhead),
                                   " + KHO scratch %s" % human(scratch) if scratch else "", human(left),
                                   human(memory), human(reserve)))
            raise PlanError("VM memory %s + luo backend overhead %s + KHO scratch %s (%s) leaves %s of %s, below "
                            "the reserve %s" % (human(size), human(overhead), human(scratch), row["scratch_source"],
                                                human(left), human(memory), human(reserve)))
        try:
            row["cmdline_args"] = backend.cmdline_args(size, host.get("firmware_ram_ranges") or [],
                                                       kho_scratch=policy.get("kho_scratch"))
        except BackendError as exc:
            raise PlanError(str(exc))
        row["ok"] = True
    except (PlanError, ValueError) as exc:
        row["reason"] = str(exc)
    return row


def plan_fleet(hosts):
    """Every host -> its plan row, in the given order."""
    return [plan_host(h) for h in hosts]


def summary(rows):
    refused = [r for r in rows if not r["ok"]]
    ok = [r for r in rows if r["ok"]]
    return {"hosts": len(rows), "ok": len(ok), "refused": len(refused),
            "carved_bytes": sum(r["size_bytes"] or 0 for r in ok if get_backend(r["backend"]).carves_out),
            "held_bytes": sum(r["size_bytes"] or 0 for r in ok if not get_backend(r["backend"]).carves_out),
            "scratch_bytes": sum(r["scratch_bytes"] or 0 for r in ok)}


COLUMNS = ("host", "backend", "mode", "memory", "size", "overhead", "scratch", "left", "reserve", "cmdline",
           "status")


def _cells(r):
    def h(v):
        return human(v) if isinstance(v, int) else "-"
    return (r["host"], r["backend"], r["mode"] or "-", h(r["memory_bytes"]), r["size"] or "-",
            h(r["overhead_bytes"]), h(r["scratch_bytes"]), h(r["left_bytes"]), h(r["reserve_bytes"]),
            " ".join(r["cmdline_args"]) or "-", "ok" if r["ok"] else "REFUSED: " + r["reason"])


def render_table(rows):
    cells = [COLUMNS] + [tuple(str(c) for c in _cells(r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in cells]
    s = summary(rows)
    tail = "%d hosts: %d ok, %d refused; %s carved in all" % (
        s["hosts"], s["ok"], s["refused"], human(s["carved_bytes"]))
    if s["held_bytes"]:
        tail += "; %s held in memfds (luo)" % human(s["held_bytes"])
    if s["scratch_bytes"]:
        tail += "; %s of KHO scratch" % human(s["scratch_bytes"])
    lines.append(tail)
    return "\n".join(lines) + "\n"


def render_csv(rows):
    out = io.StringIO()
    fields = ["host", "ok", "backend", "mode", "memory_bytes", "size_bytes", "size", "overhead_bytes",
              "scratch_bytes", "scratch_source", "left_bytes", "reserve_bytes", "vms_bytes", "cmdline_args", "reason"]
    w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(dict(r, cmdline_args=" ".join(r["cmdline_args"])))
    return out.getvalue()


def render_json(rows):
    return json.dumps({"summary": summary(rows), "hosts": rows}, indent=2, sort_keys=True) + "\n"
