"""Benchmark: what starting one of a VM unit's steps costs, by the agent's entry point.

    python3 tests/bench/bench_agent_start.py [--runs 15] [--tree DIR] [--json FILE]

Each VM's unit starts two agent processes (vm-run, vm-restore) inside its blackout, on a host still
booting. This runs, interleaved, a fresh Python that goes as far as calling the step (the step
itself replaced by a no-op) through each entry: ``agent`` (module_utils/agent: the whole command
line, argparse) and ``agent_entry`` (the installed script, agent.j2: agent_entry.unit_step), and prints wall
and CPU seconds (min, median) side by side with their ratio and the load; ``agent_entry -I -S`` is
the interpreter as the VM unit runs it (isolated, no ``site``: the agent is stdlib and its own tree). Stdlib only: on a host,
``--tree /usr/lib/guestmemfs-liveupdate`` measures the agent installed there.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROBE = ("import sys; sys.path.insert(0, %r); "
         "from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostupdate; "
         "hostupdate.vm_run = lambda name: 0; ")
# How each entry reaches the step: the agent's parser, or the installed script (agent.j2) as is.
BY_PARSER = "from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.agent import main; sys.exit(main(['vm-run', 'web1']))"
BY_SCRIPT = "import runpy; sys.argv = [%r, 'vm-run', 'web1']; runpy.run_path(%r, run_name='__main__')"
# hostupdate is imported first by each: the import the step needs anyway, the same in all.
# label -> (how, the interpreter's flags: -I -S as the units run it, without site's imports)
ENTRIES = {"agent": ("parser", []), "agent_entry": ("script", []), "agent_entry -I -S": ("script", ["-I", "-S"])}


def one(tree, script, label):
    how, flags = ENTRIES[label]
    code = PROBE % tree + (BY_PARSER if how == "parser" else BY_SCRIPT % (script, script))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable] + flags + ["-c", code], check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--tree", help="a directory holding ansible_collections/guestmemfs/liveupdate and the "
                    "agent script, as /usr/lib/guestmemfs-liveupdate on a host (default: this checkout)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    tree = a.tree
    if tree:
        script = os.path.join(tree, "agent")  # as the qemu_vm role installs it
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _collection import ROOT, importable_collection
        importable_collection()
        tree = sys.path[0]
        script = os.path.join(tree, "agent")
        with open(os.path.join(ROOT, "roles", "qemu_vm", "templates", "agent.j2")) as fh:
            text = fh.read().replace("{{ ansible_managed }}", "rendered by the benchmark")
        with open(script, "w") as fh:
            fh.write(text.replace('"/usr/lib/guestmemfs-liveupdate"', repr(tree)))
    load = [os.getloadavg()[0]]
    res = dict((e, {"wall": [], "cpu": []}) for e in ENTRIES)
    order = list(ENTRIES)
    for i in range(a.runs):
        for entry in (order if i % 2 == 0 else order[::-1]):  # interleaved, the order alternating
            wall, cpu = one(tree, script, entry)
            res[entry]["wall"].append(wall)
            res[entry]["cpu"].append(cpu)
        if i % 5 == 4:
            print("  %d of %d rounds" % (i + 1, a.runs), flush=True)
    load.append(os.getloadavg()[0])
    out = {"runs": a.runs, "load": load, "python": sys.version.split()[0], "entries": {}}
    print("%-18s %10s %10s %10s %10s" % ("entry", "wall min", "wall med", "cpu min", "cpu med"))
    for entry in ENTRIES:
        r = res[entry]
        row = dict(wall_min=min(r["wall"]), wall_median=statistics.median(r["wall"]),
                   cpu_min=min(r["cpu"]), cpu_median=statistics.median(r["cpu"]))
        out["entries"][entry] = row
        print("%-18s %9.3fs %9.3fs %9.3fs %9.3fs" % (
            entry, row["wall_min"], row["wall_median"], row["cpu_min"], row["cpu_median"]))
    base = out["entries"]["agent"]
    out["ratio"] = {}
    for label in order[1:]:
        r = out["ratio"][label] = dict((k, round(out["entries"][label][k] / base[k], 3)) for k in base)
        print("%s / agent: wall min %.2f, median %.2f; cpu min %.2f, median %.2f" % (
            label, r["wall_min"], r["wall_median"], r["cpu_min"], r["cpu_median"]))
    print("load %.2f -> %.2f, %d interleaved rounds, Python %s" % (load[0], load[1], a.runs, out["python"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
