"""Prove the rollout gates (in-guest, PromQL, window, webhook) and the fleet run lock on a running
virtual fleet, without pausing any VM.

Needs the fleet up and prepared with the real Linux guest (its guest agent is tests/fleet/guest/qga.c,
on the channel inventory-vars.yml turns on) and the collection installed for ansible-playbook:

  python3 tests/fleet/gates_check.py -i molecule/default/inventory/

1. liveupdate.yml --check with the in-guest gate: every VM's agent answers (guest-sync-delimited,
   guest-ping through QEMU's virtio-serial channel); its gate rows are in the report.
2. A real run whose gates cannot pass: the controller's command gate holds the wave until a second
   run of liveupdate.yml is over, then the in-guest gate runs `sh -c 'exit 3'` in every guest of the canary, which stops the
   rollout before anything is loaded or paused; the second run, started while the first holds the
   fleet lock, must be refused naming the first run as the holder. Afterwards: the first run's
   report names the failed gate, no later wave ran, the lock is released, and its webhook (a local
   HTTP server) received every event in order.
3. A window that excludes now: the run refuses to start, says when the window opens, takes no lock,
   and its webhook hears only the refusal.
4. A PromQL gate (a local Prometheus-compatible endpoint) whose query returns a firing alert: the
   rollout stops before its first wave, naming the query, and nothing is paused.
Prints what it checked as a table and writes gates-check.json into the report directory."""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "unit"))
from localhttp import Endpoint, vector  # noqa: E402  (stdlib-only local HTTP endpoints)


# What the in-guest gate runs to fail: the real guest's initramfs has a shell, not /bin/false.
FAILING = ["/bin/sh", "-c", "exit 3"]


def playbook(inv, report, lock_dir, extra, *args, background=False):
    env = dict(os.environ, GUESTMEMFS_REPORT_DIR=report, GUESTMEMFS_LOCK_DIR=lock_dir, ANSIBLE_NOCOLOR="1")
    argv = ["ansible-playbook", "-i", inv, "guestmemfs.liveupdate.liveupdate", "-e", json.dumps(extra)] + list(args)
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)


def rows(report):
    with open(os.path.join(report, "liveupdate.json")) as fh:
        return json.load(fh)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("-i", "--inventory", required=True)
    p.add_argument("--out", default=None, help="report directory (default: a new one under /tmp)")
    p.add_argument("--hold", type=int, default=900,
                   help="seconds the first run holds its lock at most, waiting for the second (default 900)")
    a = p.parse_args(argv)
    out = a.out or tempfile.mkdtemp(prefix="gates-check-")
    locks = os.path.join(out, "locks")
    checks = []

    def check(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print("%-4s %-44s %s" % ("ok" if ok else "FAIL", name, detail), flush=True)

    print("1/4 liveupdate.yml --check with the in-guest gate (guest-ping in every VM)", flush=True)
    r1 = os.path.join(out, "check")
    run = playbook(a.inventory, r1, locks, {"guestmemfs_guest_gate": {"enabled": True, "timeout": 120}}, "--check")
    check("check run passes", run.returncode == 0, "rc %d" % run.returncode)
    if os.path.exists(os.path.join(r1, "liveupdate.json")):
        for row in rows(r1):
            guest = [g for g in row.get("gates") or [] if g["gate"] == "guest"]
            vms = guest[0]["vms"] if guest else {}
            # a VM without the agent channel (the counting guest) is said, not checked
            asked = [v for v in vms.values() if v["ok"] is not None]
            check("%s: every guest's agent answers" % row["host"], asked and all(v["ok"] for v in asked),
                  "; ".join("%s %s (%ss)" % (n, v["detail"], v["seconds"]) for n, v in sorted(vms.items())) or "no gate row")

    hook = Endpoint()
    print("2/4 a run held by its command gate while a second one tries, then stopped by the in-guest gate", flush=True)
    r2, r3 = os.path.join(out, "first"), os.path.join(out, "second")
    # the first run's command gate (on this controller) holds its wave until the second run is over
    done = os.path.join(out, "second-done")
    wait = "i=0; while [ ! -e %s ] && [ $i -lt %d ]; do sleep 1; i=$((i+1)); done" % (done, a.hold)
    guard = {"guestmemfs_command_gate": {"command": ["sh", "-c", wait], "timeout": a.hold + 60},
             "guestmemfs_guest_gate": {"enabled": True, "command": FAILING, "timeout": 60}}
    first = playbook(a.inventory, r2, locks, dict(guard, guestmemfs_webhook={"url": hook.url}), background=True)
    t0 = time.monotonic()
    while not (os.path.isdir(locks) and [n for n in os.listdir(locks) if n.endswith(".lock")]):
        if first.poll() is not None or time.monotonic() - t0 > 600:
            break
        time.sleep(1)
    held = [n for n in os.listdir(locks) if n.endswith(".lock")] if os.path.isdir(locks) else []
    check("the first run holds the fleet lock", held, ", ".join(held) or "no lock file")
    holder = json.load(open(os.path.join(locks, held[0])))["holder"] if held else "?"
    second = playbook(a.inventory, r3, locks, guard)
    refused = "another rollout of fleet" in second.stdout and holder in second.stdout
    said = [line for line in second.stdout.splitlines() if "Not starting the rollout" in line or "FAILED!" in line]
    check("a second run is refused naming the holder", second.returncode != 0 and refused,
          "rc %d; %s" % (second.returncode, (said[-1] if said else second.stdout[-300:]).strip()[:400]))
    with open(done, "w"):
        pass
    text = first.communicate()[0]
    check("the first run stops (its gate failed)", first.returncode != 0, "rc %d" % first.returncode)
    got = rows(r2) if os.path.exists(os.path.join(r2, "liveupdate.json")) else []
    waves = sorted(set(r["wave"] for r in got))
    canary = [r for r in got if r["wave"] == waves[0]] if waves else []
    check("the canary failed on the in-guest gate", canary and all(
        r["outcome"] == "failed" and "in-guest gate before wave" in r["reason"] and "%s exited 3 in the guest" % " ".join(FAILING) in r["reason"]
        for r in canary), "; ".join("%s: %s" % (r["host"], r["reason"][:160]) for r in canary))
    check("no later wave ran", all(r["outcome"] == "not run" for r in got if r["wave"] != waves[0]),
          ", ".join("%s %s" % (r["host"], r["outcome"]) for r in got))
    left = [n for n in os.listdir(locks) if n.endswith(".lock")] if os.path.isdir(locks) else []
    check("the lock is released", not left, ", ".join(left) or "none left")
    evs = hook.events()
    check("the webhook heard the stop in order", evs[:2] == ["rollout_start", "wave_start"] and evs[-2:] == [
        "wave_end", "rollout_stop"] and "host_kexec" not in evs and "gate" in (hook.posts[-1].get("reason") or ""),
        "%s; stop: %s" % (" ".join(evs), (hook.posts[-1].get("reason") or "")[:160] if hook.posts else "-"))

    print("3/4 a window that excludes now", flush=True)
    hook.posts[:] = []
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=3)
    window = {"hours": ["%02d:00-%02d:30" % (later.hour, later.hour)]}
    r4 = os.path.join(out, "window")
    run = playbook(a.inventory, r4, locks, {"guestmemfs_window": window, "guestmemfs_webhook": {"url": hook.url}})
    said = [line for line in run.stdout.splitlines() if "outside the window" in line]
    check("a window that excludes now refuses to start", run.returncode != 0 and said and "next opens" in said[0],
          "rc %d; %s" % (run.returncode, said[0].strip()[:300] if said else run.stdout[-300:]))
    check("the refusal is the only event", hook.events() == ["rollout_refused"], " ".join(hook.events()))
    left = [n for n in os.listdir(locks) if n.endswith(".lock")] if os.path.isdir(locks) else []
    check("no lock is left", not left, ", ".join(left) or "none")

    print("4/4 a PromQL gate whose query fires", flush=True)
    q = 'ALERTS{alertstate="firing", severity="critical"}'
    hook.answers[q] = vector(1)
    r5 = os.path.join(out, "promql")
    run = playbook(a.inventory, r5, locks, {"guestmemfs_prometheus_gate": {"url": hook.url, "query": q, "timeout": 0}})
    got = rows(r5) if os.path.exists(os.path.join(r5, "liveupdate.json")) else []
    waves = sorted(set(r["wave"] for r in got))
    canary = [r for r in got if r["wave"] == waves[0]] if waves else []
    check("a firing PromQL gate stops the first wave", run.returncode != 0 and canary and all(
        r["outcome"] == "failed" and "gate prometheus: %s: 1 sample" % q in r["reason"] for r in canary),
        "rc %d; %s" % (run.returncode, "; ".join("%s: %s" % (r["host"], r["reason"][:200]) for r in canary)))
    check("the endpoint was asked", q in hook.queries, "%d queries" % len(hook.queries))
    hook.close()
    with open(os.path.join(out, "gates-check.json"), "w") as fh:
        json.dump({"checks": checks, "first_run_tail": text[-4000:]}, fh, indent=2)
    print("%d of %d checks passed; %s" % (sum(c["ok"] for c in checks), len(checks), os.path.join(out, "gates-check.json")))
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
