"""Benchmark: fleet scale on the controller, side by side in one run.

    python tests/bench/bench_playbooks.py [--hosts 1000 10000 100000] [--repeat 3]
                                          [--playbook-hosts 1000 10000] [--playbook-repeat 3]
                                          [--facts cache|file]

1. The pure planners on a generated fleet (tests/bench/fleet_inventory.py: sizing policies per
   group, 4 failure domains): carve-out sizing + rollout waves, this checkout's against the 0.1.6
   planners kept in tests/unit/legacy, interleaved, min and median CPU and wall seconds of
   ``--repeat`` runs, and their ratio.
2. playbooks/sizing.yml and playbooks/plan.yml through ansible-playbook on the same fleet, planned
   without contacting a host (facts from Ansible's jsonfile fact cache, or ``--facts file``: a facts
   file): wall seconds, CPU seconds of ansible-playbook and its workers, peak memory.

Every row notes the machine's load average (1 min) when it started: the figures are only
comparable within one run. Nothing here is a test.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _collection import ROOT, importable_collection

import fleet_inventory

sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))


def load():
    return os.getloadavg()[0]


def measure(fn, *args):
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.process_time() - c0, time.perf_counter() - t0


def planner_inputs(n):
    """(sizing inputs, waves inputs, rollout policy) for the generated fleet, as the filters build them."""
    from ansible_collections.guestmemfs.liveupdate.plugins.filter.carveout import _inputs
    inv, facts = fleet_inventory.fleet(n)
    sizing_in, waves_in = [], []
    for group in inv["hypervisors"]["children"].values():
        policy = group["vars"]["guestmemfs_sizing"]
        for name, hvars in group["hosts"].items():
            sizing_in.append(_inputs(name, facts[name]["guestmemfs"], policy))
            waves_in.append({"name": name, "vars": hvars})
    order = dict((h, i) for i, h in enumerate(sorted(facts)))
    sizing_in.sort(key=lambda h: order[h["name"]])
    waves_in.sort(key=lambda h: order[h["name"]])
    return sizing_in, waves_in, inv["hypervisors"]["vars"]["guestmemfs_rollout"]


def planners(sizes, repeat):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing, waves
    from legacy import sizing_v1, waves_v1

    print("1. pure planners: sizing + waves (4 failure domains), CPU and wall seconds, min / median of %d "
          "interleaved runs" % repeat)
    head = ("hosts", "load", "planner", "sizing_cpu", "waves_cpu", "cpu_min", "cpu_med", "wall_min", "wall_med",
            "x 0.1.6")
    print("%7s %5s %8s %10s %10s %8s %8s %8s %8s %8s" % head)
    for n in sizes:
        sizing_in, waves_in, policy = planner_inputs(n)
        la = load()
        runs = {"0.1.6": [], "now": []}
        for _run in range(repeat):
            for label, s_mod, w_mod in (("0.1.6", sizing_v1, waves_v1), ("now", sizing, waves)):
                cs, ws = measure(s_mod.plan_fleet, sizing_in)
                cw, ww = measure(w_mod.plan_waves, waves_in, policy)
                runs[label].append((cs, cw, cs + cw, ws + ww))
        base = statistics.median(r[2] for r in runs["0.1.6"])
        for label in ("0.1.6", "now"):
            r = runs[label]
            cpu = [x[2] for x in r]
            wall = [x[3] for x in r]
            print("%7d %5.2f %8s %10.3f %10.3f %8.3f %8.3f %8.3f %8.3f %8.2f" % (
                n, la, label, statistics.median(x[0] for x in r), statistics.median(x[1] for x in r),
                min(cpu), statistics.median(cpu), min(wall), statistics.median(wall), statistics.median(cpu) / base))
        sys.stdout.flush()


def run_playbook(playbook, workdir, env, extra):
    """(rc, wall s, CPU s of ansible-playbook and its workers, peak resident MiB of ansible-playbook
    as GNU time reports it, or None)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    peak_file = os.path.join(workdir, os.path.basename(playbook) + ".peak")
    cmd = ["ansible-playbook", "-i", os.path.join(workdir, "inventory.yml"), playbook] + extra
    if gnu_time:
        cmd = [gnu_time, "-f", "%M", "-o", peak_file] + cmd
    t0 = time.perf_counter()
    with open(os.path.join(workdir, os.path.basename(playbook) + ".log"), "w") as log:
        rc = subprocess.call(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = None
    if gnu_time and os.path.exists(peak_file):
        with open(peak_file) as f:
            lines = [x for x in f.read().split() if x.isdigit()]
        peak = int(lines[-1]) / 1024.0 if lines else None
    return rc, wall, cpu, peak


def fleet_env(workdir, tree, facts_mode):
    """(environment, sizing.yml's extra arguments) for planning the fleet in ``workdir``."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tree, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
               GUESTMEMFS_REPORT_DIR=os.path.join(workdir, "report"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_LOCAL_TEMP=os.path.join(workdir, "tmp"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("ANSIBLE_CONFIG", None)
    if facts_mode == "cache":
        env.update(ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=os.path.join(workdir, "fact_cache"),
                   ANSIBLE_CACHE_PLUGIN_TIMEOUT="0")
        return env, ["-e", "guestmemfs_facts_from=cache"]
    return env, ["-e", "guestmemfs_facts_from=%s" % os.path.join(workdir, "facts.json")]


def playbooks(sizes, facts_mode, keep, repeat=1):
    """``repeat`` rounds over every size (the rounds interleave, so the machine's load spreads over
    all sizes alike); with more than one round, min and median per size and playbook at the end."""
    print("\n2. ansible-playbook, planned without contacting a host (facts: %s); wall and CPU seconds "
          "(ansible-playbook and its workers), peak resident MiB of ansible-playbook; rc 2 = the refused "
          "hosts failed, by name" % (
              "Ansible's jsonfile fact cache" if facts_mode == "cache" else "a facts file"))
    head = ("round", "hosts", "load", "playbook", "wall_s", "cpu_s", "ms/host", "peak_MiB", "rc")
    print("%5s %7s %5s %-11s %8s %8s %8s %9s %4s" % head)
    tree = tempfile.mkdtemp(prefix="glu-bench-pb-")
    os.makedirs(os.path.join(tree, "ansible_collections", "guestmemfs"))
    os.symlink(ROOT, os.path.join(tree, "ansible_collections", "guestmemfs", "liveupdate"))
    runs = {}  # (hosts, playbook) -> [(wall, cpu, load)]
    try:
        for n in sizes:
            subprocess.check_call([sys.executable, os.path.join(ROOT, "tests", "bench", "fleet_inventory.py"),
                                   "--hosts", str(n), "--out", os.path.join(tree, "fleet-%d" % n)]
                                  + (["--cache"] if facts_mode == "cache" else []))
        for rnd in range(1, repeat + 1):
            for n in sizes:
                workdir = os.path.join(tree, "fleet-%d" % n)
                env, extra = fleet_env(workdir, tree, facts_mode)
                total_wall = total_cpu = 0.0
                for name in ("sizing.yml", "plan.yml"):
                    la = load()
                    # plan.yml: without asking each host's QEMUs (that play contacts every host)
                    rc, wall, cpu, rss = run_playbook(os.path.join(ROOT, "playbooks", name), workdir, env,
                                                      extra if name == "sizing.yml" else ["-e", "guestmemfs_plan_check_vms=false"])
                    total_wall += wall
                    total_cpu += cpu
                    runs.setdefault((n, name), []).append((wall, cpu, la))
                    peak = "%.0f" % rss if rss else "-"
                    print("%5d %7d %5.2f %-11s %8.1f %8.1f %8.2f %9s %4d" % (rnd, n, la, name, wall, cpu, 1000 * wall / n, peak, rc))
                    sys.stdout.flush()
                runs.setdefault((n, "both"), []).append((total_wall, total_cpu, load()))
                print("%5d %7d %5.2f %-11s %8.1f %8.1f %8.2f" % (rnd, n, load(), "both", total_wall, total_cpu, 1000 * total_wall / n))
        if repeat > 1:
            print("\nmin / median of %d interleaved rounds (load: min-max at the start of the runs)" % repeat)
            head = ("hosts", "playbook", "load", "wall_min", "wall_med", "cpu_min", "cpu_med", "cpu ms/host")
            print("%7s %-11s %11s %8s %8s %8s %8s %12s" % head)
            for n in sizes:
                for name in ("sizing.yml", "plan.yml", "both"):
                    r = runs[(n, name)]
                    print("%7d %-11s %5.2f-%5.2f %8.1f %8.1f %8.1f %8.1f %12.2f" % (
                        n, name, min(x[2] for x in r), max(x[2] for x in r), min(x[0] for x in r),
                        statistics.median(x[0] for x in r), min(x[1] for x in r), statistics.median(x[1] for x in r),
                        1000 * statistics.median(x[1] for x in r) / n))
    finally:
        if keep:
            print("fleets and logs kept in %s" % tree)
        else:
            shutil.rmtree(tree, True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000, 100000], help="planner fleet sizes")
    ap.add_argument("--playbook-hosts", type=int, nargs="*", default=None,
                    help="fleet sizes for the playbooks (default: --hosts; none: skip them)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--playbook-repeat", type=int, default=1, help="interleaved rounds of the playbooks")
    ap.add_argument("--facts", choices=["cache", "file"], default="cache")
    ap.add_argument("--keep", action="store_true", help="keep the generated fleets and the playbooks' logs")
    a = ap.parse_args()
    importable_collection()
    print("load average at the start: %s; %d CPUs" % (" ".join("%.2f" % x for x in os.getloadavg()), os.cpu_count()))
    planners(a.hosts, a.repeat)
    sizes = a.hosts if a.playbook_hosts is None else a.playbook_hosts
    if sizes:
        playbooks(sizes, a.facts, a.keep, a.playbook_repeat)


if __name__ == "__main__":
    main()
