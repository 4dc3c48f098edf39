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
``numa``      strict (default): refuse a host where a planned VM, or a pmem or guestmemfs
              carve-out (one contiguous region), is larger than one NUMA node's memory;
              spread: accept it, the row's ``numa`` says what spans nodes. Checked when the
              host gives ``numa_node_bytes`` (each node's MemTotal) for more than one node.

luo carves nothing out: ``size`` is the memory the VMs will hold in memfds, and the plan checks
that physical RAM holds it, the backend's overhead, the KHO scratch areas and the reserve.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import io

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import DEFAULT_BACKEND, get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import Backend, BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.bulk import no_cyclic_gc
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.report_runs import report_json
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import (
    GiB, MiB, align_down, align_up, format_size, human, parse_size)

ALIGNS = {"2M": 2 * MiB, "1G": GiB}
MODES = ("fraction", "absolute", "vms")
POLICY_KEYS = ("backend", "mode", "fraction", "size", "vms", "headroom", "reserve", "align", "kho_scratch",
               "kernel_reserved", "numa")
NUMA = ("strict", "spread")
_KNOWN = frozenset(POLICY_KEYS)
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
    if not isinstance(vms, list):
        raise PlanError("mode vms needs a list 'vms' of {name, memory}")
    total, largest = 0, (0, None)
    granule = backend.size_align
    plain = type(backend).file_size is Backend.file_size  # rounds up to the granule: inlined
    most = backend.max_file_bytes
    for vm in vms:
        if vm.__class__ is not dict and not isinstance(vm, dict) or "memory" not in vm:
            raise PlanError("each planned VM needs 'memory' (got %r)" % (vm,))
        memory = vm["memory"]
        try:
            size = parse_size(memory)
        except ValueError:
            parse_size(memory, "memory of VM %s" % vm.get("name", "?"))  # raises, naming the VM
        size = size + (-size) % granule if plain else backend.file_size(size)
        if most and size > most:
            raise PlanError("VM %s needs %s, above the %s backend's %s per file%s"
                            % (vm.get("name", "?"), human(size), backend.name, human(backend.max_file_bytes),
                               backend.max_file_why))
        total += size
        if size > largest[0]:
            largest = (size, vm.get("name", "?"))
    return total, largest


def _plan_scratch(backend, host, policy):
    try:
        return backend.plan_scratch(host, policy)
    except (ValueError, BackendError) as exc:
        raise PlanError(str(exc))


_BACKENDS = {}  # one instance per backend: they hold no state


def _backend(name):
    try:
        backend = _BACKENDS.get(name)
    except TypeError:  # an unhashable name: get_backend says what is wrong with it
        return get_backend(name)
    if backend is None:
        backend = _BACKENDS[name] = get_backend(name)
    return backend


def _check_policy(policy):
    """What a policy alone decides, before the host's facts are looked at: (backend, None) or
    (None, why it is refused)."""
    try:
        if not policy:
            raise PlanError("no sizing policy: set guestmemfs_sizing for the host or its group")
        if not _KNOWN.issuperset(policy):
            unknown = sorted(set(policy) - _KNOWN)
            raise PlanError("unknown policy keys %s (known: %s)" % (", ".join(unknown), ", ".join(POLICY_KEYS)))
        try:
            backend = _backend(policy.get("backend", DEFAULT_BACKEND))
        except ValueError as exc:
            raise PlanError(str(exc))
        if backend.carves_out:
            stray = [k for k in LUO_KEYS if k in policy and not (k == "kho_scratch" and backend.takes_kho_scratch)]
            if stray:
                raise PlanError("%s only applies to the luo backend, not %s" % (", ".join(stray), backend.name))
    except (PlanError, ValueError) as exc:
        return None, str(exc)
    return backend, None


def _check_host_backend(name, backend):
    """The host's own backend (guestmemfs_backend, which the roles and the live update follow) must be
    the one its sizing policy plans: else a luo host would get a pmem carve-out's memmap=."""
    if name in (None, ""):
        return
    try:
        own = _backend(name)
    except (TypeError, ValueError) as exc:
        raise PlanError("guestmemfs_backend: %s" % exc)
    if own is not backend:
        raise PlanError("guestmemfs_backend is %s but guestmemfs_sizing plans the %s backend%s: set "
                        "backend: %s in the host's guestmemfs_sizing" % (
                            own.name, backend.name, " (its default)" if backend.name == DEFAULT_BACKEND else "",
                            own.name))


def _size_policy(policy, backend):
    """The rest of what a policy alone decides: {align, align_name, reserve, mode, fraction | size
    (absolute, vms), vms_bytes (vms), why (refused), guestmemfs scratch}."""
    out = {"vms_bytes": None, "why": None}
    try:
        mode = out["mode"] = policy.get("mode")
        if mode not in MODES:
            raise PlanError("policy mode %r: use one of %s" % (mode, ", ".join(MODES)))
        align_name = out["align_name"] = str(policy.get("align", "2M")).upper()
        if align_name not in ALIGNS:
            raise PlanError("align %r: use 2M (PMD) or 1G (PUD)" % policy.get("align"))
        align = out["align"] = max(ALIGNS[align_name], backend.size_align)
        out["reserve"] = parse_size(policy.get("reserve", DEFAULT_RESERVE), "reserve")
        if mode == "fraction":
            try:
                fraction = float(policy.get("fraction"))
            except (TypeError, ValueError):
                raise PlanError("mode fraction needs 'fraction' between 0 and 1")
            if not 0 < fraction < 1:
                raise PlanError("fraction %r is not between 0 and 1" % policy.get("fraction"))
            out["fraction"] = fraction
        elif mode == "absolute":
            if policy.get("size") in (None, ""):
                raise PlanError("mode absolute needs 'size'")
            out["size"] = align_up(parse_size(policy["size"]), align)
        elif policy.get("vms") == []:  # a host without VMs: nothing to carve, nothing to refuse
            out["size"] = out["vms_bytes"] = 0
        else:
            vms_bytes, out["largest_vm"] = _vms_bytes(policy.get("vms"), backend)
            out["vms_bytes"] = vms_bytes
            out["size"] = align_up(vms_bytes + _headroom(policy.get("headroom"), vms_bytes), align)
        numa = out["numa"] = policy.get("numa", "strict")
        if numa not in NUMA:
            raise PlanError("numa %r: use strict (refuse what does not fit in one NUMA node) or spread" % (numa,))
    except (PlanError, ValueError) as exc:
        out["why"] = str(exc)
    return out


def _ranges_key(host):
    ranges = host.get("firmware_ram_ranges")
    try:
        return tuple((r[0], r[1]) for r in ranges) if ranges else None
    except (TypeError, IndexError, KeyError):
        return id(ranges)


def _cmdline(backend, size, ranges, kho_scratch):
    return tuple(backend.cmdline_args(size, ranges, kho_scratch=kho_scratch))


def _once(seen, key, fn, *args):
    """fn(*args) once per key for one policy (hosts of the same memory and firmware map get the same
    answer); an exception the planner reports is remembered and raised again."""
    try:
        found = seen.get(key)
    except TypeError:  # an unhashable fact: no memo
        return fn(*args)
    if found is None:
        try:
            found = (None, fn(*args))
        except (PlanError, BackendError, ValueError) as exc:
            found = (type(exc), str(exc))
        if len(seen) < 4096:
            seen[key] = found
    if found[0] is not None:
        raise found[0](found[1])
    return found[1]


def _numa(nodes, memory, size, backend, sized):
    """What does not fit in one NUMA node: refused (PlanError) under numa: strict, a note under
    spread; None when everything fits. A node's memory is its share of physical memory in the
    proportion of the nodes' MemTotal (which a carve-out already taken shrinks, unlike physical
    memory)."""
    seen = sum(nodes)
    node = max(nodes) * memory // seen if seen > 0 else memory // len(nodes)
    over = []
    largest, vm = sized.get("largest_vm") or (0, None)
    if largest > node:
        over.append("VM %s needs %s" % (vm, human(largest)))
    if backend.carves_out and size > node:
        # one memmap= range or one guestmemfs= region: contiguous, so it would cross a node boundary
        over.append("the %s carve-out of %s is one contiguous region" % (backend.name, human(size)))
    if not over:
        return None
    why = "%s, more than one NUMA node's %s (of %d)" % (" and ".join(over), human(node), len(nodes))
    if sized["numa"] == "strict":
        raise PlanError(why + ": it would span nodes; give smaller VMs, or set numa: spread to accept remote memory")
    return "spread: " + why


def plan_host(host, _memo=None):
    """One host -> a plan row. Never raises for a bad host: the row says ``ok: False`` and why.

    What depends on the policy alone is worked out once per policy object when ``_memo`` (a dict
    that plan_fleet keeps for one call) is given: a fleet shares a few policies among many hosts."""
    name = host.get("name")
    policy = host.get("policy") or {}
    row = {"host": name, "ok": False, "backend": policy.get("backend", DEFAULT_BACKEND), "mode": policy.get("mode"),
           "memory_bytes": host.get("memory_bytes"), "size_bytes": None, "size": None,
           "reserve_bytes": None, "overhead_bytes": None, "scratch_bytes": None, "scratch_source": None,
           "left_bytes": None, "vms_bytes": None, "cmdline_args": [], "numa": None, "reason": None}
    memo = _memo.get(id(policy)) if _memo is not None else None
    if memo is None:
        backend, why = _check_policy(policy)
        memo = [policy, backend, why, None, {}]  # the policy is kept so that its id stays its own
        if _memo is not None:
            _memo[id(policy)] = memo
    _policy, backend, why, sized, seen = memo
    try:
        if why:
            raise PlanError(why)
        _check_host_backend(host.get("backend"), backend)
        memory = host.get("memory_bytes")
        if not memory:
            raise PlanError("no memory facts (unreachable, or guestmemfs_facts did not run)")
        if sized is None:
            sized = memo[3] = _size_policy(policy, backend)
        row["vms_bytes"] = sized["vms_bytes"]
        if sized["why"]:
            raise PlanError(sized["why"])
        if sized["mode"] == "vms" and sized["size"] == 0:
            row.update(size_bytes=0, size=format_size(0), reserve_bytes=sized["reserve"], overhead_bytes=0,
                       left_bytes=memory, ok=True)
            return row
        align = sized["align"]
        size = align_down(int(memory * sized["fraction"]), align) if sized["mode"] == "fraction" else sized["size"]
        if size <= 0:
            raise PlanError("the %s rounds to 0 at %s alignment"
                            % ("carve-out" if backend.carves_out else "VM memory", sized["align_name"]))
        overhead = backend.overhead_bytes(size)
        # The KHO scratch area beside the backend's memory, by the backend's own rule; hosts of the same
        # memory and firmware map get the same answer.
        scratch, row["scratch_source"] = _once(seen, ("scratch", memory, _ranges_key(host), host.get("numa_nodes"),
                                                      host.get("kho_scratch_bytes"), host.get("kho_scratch")),
                                               _plan_scratch, backend, host, policy)
        reserve = sized["reserve"]
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
        nodes = host.get("numa_node_bytes")
        if nodes and len(nodes) > 1:
            row["numa"] = _numa(nodes, memory, size, backend, sized)
        try:
            row["cmdline_args"] = list(_once(seen, ("cmdline", size, _ranges_key(host)), _cmdline, backend, size,
                                             host.get("firmware_ram_ranges") or [], policy.get("kho_scratch")))
        except BackendError as exc:
            raise PlanError(str(exc))
        row["ok"] = True
    except (PlanError, ValueError) as exc:
        row["reason"] = str(exc)
    return row


def plan_fleet(hosts):
    """Every host -> its plan row, in the given order."""
    memo = {}
    with no_cyclic_gc():
        return [plan_host(h, memo) for h in hosts]


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
            " ".join(r["cmdline_args"]) or "-",
            ("ok" + (" (NUMA %s)" % r["numa"] if r.get("numa") else "")) if r["ok"] else "REFUSED: " + r["reason"])


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
              "scratch_bytes", "scratch_source", "left_bytes", "reserve_bytes", "vms_bytes", "cmdline_args", "numa",
              "reason"]
    w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(dict(r, cmdline_args=" ".join(r["cmdline_args"])))
    return out.getvalue()


def render_json(rows):
    return report_json({"summary": summary(rows), "hosts": rows})
