# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kernel pair's proof: the full memory check passed on every VM a host carried through a kexec
from one release into another. Each host keeps what its own updates proved (or disproved) in its
journal, across updates; the controller reads every host's at the start of a run, so a pair the
canary proved stays proven for later waves and later runs (a rollout run one job per wave), and a
pair whose check failed anywhere is checked in full everywhere. Stdlib only: it runs on the hosts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

SEP = " -> "
PROVEN, FAILED = "proven", "failed"
# What a memory check finds when memory moved or changed: the pair did not keep it. A VM held for
# another reason (no manifest, a save cut short, a resume cut short) says nothing about the pair.
BROKEN = ("missing", "size_changed", "extents_moved", "content_changed")


def pair(from_release, to_release):
    return "%s%s%s" % (from_release, SEP, to_release)


def of_update(j):
    """(pair, record) of the kernel update in journal ``j`` whose VMs all got their verdict on the
    boot after its kexec, or None: a boot that is not the loaded kernel proves nothing of the pair,
    and a sampled check that passed proves no more than the proof it relied on."""
    target = j.get("kexec_target") or {}
    if not j.get("booted_as_loaded") or not target.get("from_release") or not j.get("booted_release"):
        return None
    vms = j.get("vms") or {}
    verdicts = dict((n, v.get("verify") or {}) for n, v in vms.items())
    if not verdicts:
        return None
    key = pair(target["from_release"], j["booted_release"])
    rec = {"update_id": j.get("update_id"), "ts": time.time(), "vms": len(verdicts),
           "modes": sorted(set(str(v.get("mode")) for v in verdicts.values()))}
    broken = dict((n, v) for n, v in verdicts.items() if v.get("status") in BROKEN)
    if broken:
        rec.update(result=FAILED, detail="; ".join("%s %s: %s" % (n, v["status"], v.get("detail", ""))
                                                   for n, v in sorted(broken.items())))
        return key, rec
    if all(v.get("status") == "ok" and v.get("mode") == "full" for v in verdicts.values()):
        rec.update(result=PROVEN, detail="full check passed on %d VMs" % len(verdicts))
        return key, rec
    return None


def remember(j):
    """Keep the proof (or the failure) of ``j``'s update in the journal's lasting ``proofs``."""
    found = of_update(j)
    if found:
        j.setdefault("proofs", {})[found[0]] = found[1]
    return found


def of_rows(rows):
    """{host: {pair: record}} from a run's blackout rows (host, pair, verify, verify_mode, update_id),
    by the rule of_update applies on the host."""
    by = {}
    for r in rows or []:
        if r.get("pair"):
            by.setdefault(r.get("host"), {}).setdefault(r["pair"], []).append(r)
    out = {}
    for host, pairs in by.items():
        for key, rs in pairs.items():
            broken = [r for r in rs if r.get("verify") in BROKEN]
            rec = {"update_id": rs[0].get("update_id") or rs[0].get("run_id"), "vms": len(rs), "ts": time.time(),
                   "modes": sorted(set(str(r.get("verify_mode")) for r in rs))}
            if broken:
                rec.update(result=FAILED, detail="; ".join("%s %s" % (r.get("vm"), r.get("verify")) for r in broken))
            elif all(r.get("verify") == "ok" and r.get("verify_mode") == "full" for r in rs):
                rec.update(result=PROVEN, detail="full check passed on %d VMs" % len(rs))
            else:
                continue
            out.setdefault(host, {})[key] = rec
    return out


def merge(*views):
    """Fleet views (fleet()'s) merged: their hosts joined, the newest proof and failure kept."""
    out = {}
    for view in views:
        for key, p in sorted((view or {}).items()):
            if not isinstance(p, dict):
                continue
            m = out.setdefault(key, {"proven_by": [], "failed_on": [], "last_proof": None, "last_failure": None})
            for field in ("proven_by", "failed_on"):
                m[field] = sorted(set(m[field]) | set(p.get(field) or []))
            for field in ("last_proof", "last_failure"):
                rec = p.get(field)
                if rec and (not m[field] or rec.get("ts", 0) > m[field].get("ts", 0)):
                    m[field] = rec
    for p in out.values():
        p["proven"] = bool(p["proven_by"]) and not p["failed_on"]
    return out


def fleet(proofs_by_host):
    """{host: {pair: record}} -> {pair: {"proven": bool, "proven_by": [...], "failed_on": [...], ...}}.
    A pair is proven when a host proved it and no host's last check of it failed."""
    views = []
    for host, recs in sorted((proofs_by_host or {}).items()):
        for key, rec in sorted((recs or {}).items()):
            if isinstance(rec, dict) and rec.get("result") in (PROVEN, FAILED):
                proven = rec["result"] == PROVEN
                views.append({key: {"proven_by": [host] if proven else [], "failed_on": [] if proven else [host],
                                    "last_proof" if proven else "last_failure": dict(rec, host=host)}})
    return merge(*views)
