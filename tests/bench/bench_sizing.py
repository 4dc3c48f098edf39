"""Benchmark: plan the carve-outs of a large fleet and render its reports.

    python tests/bench/bench_sizing.py [--hosts 100000]

Prints seconds and hosts per second for planning and for each report format, in one run.
"""

import argparse
import random
import time

from _collection import importable_collection


def fleet(n, seed=1):
    """Hosts of 64 GiB to 2 TiB with a q35-like firmware map and a mix of every policy mode."""
    rnd = random.Random(seed)
    gib = 1 << 30
    hosts = []
    for i in range(n):
        mem = rnd.choice([64, 128, 256, 512, 1024, 2048]) * gib
        ranges = [[0, 0x9FBFF], [0x100000, 0x7FFDBFFF], [4 * gib, 4 * gib + mem - 2 * gib - 1]]
        kind = i % 4
        if kind == 0:
            policy = {"mode": "fraction", "fraction": 0.5, "align": "1G", "reserve": "8G"}
        elif kind == 1:
            policy = {"mode": "absolute", "size": "%dG" % (mem // gib // 4), "reserve": "8G"}
        elif kind == 2:
            vms = [{"name": "vm%d" % j, "memory": "%dG" % rnd.choice([2, 4, 8])} for j in range(rnd.randint(2, 16))]
            policy = {"mode": "vms", "vms": vms, "headroom": "10%", "reserve": "8G"}
        else:
            vms = [{"name": "vm%d" % j, "memory": "1G"} for j in range(rnd.randint(2, 16))]
            policy = {"backend": "guestmemfs", "mode": "vms", "vms": vms, "headroom": "2G", "reserve": "8G"}
        hosts.append({"name": "hv%06d" % i, "memory_bytes": mem, "firmware_ram_ranges": ranges, "policy": policy})
    return hosts


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=100000)
    a = ap.parse_args()
    importable_collection()
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing

    hosts = fleet(a.hosts)
    t_plan, rows = timed(sizing.plan_fleet, hosts)
    s = sizing.summary(rows)
    print("carve-out planning, %d hosts (%d ok, %d refused)" % (a.hosts, s["ok"], s["refused"]))
    print("%-14s %10s %14s %10s" % ("step", "seconds", "hosts/s", "x plan"))
    print("%-14s %10.3f %14.0f %10.2f" % ("plan", t_plan, a.hosts / t_plan, 1.0))
    for fmt, fn in (("table", sizing.render_table), ("csv", sizing.render_csv), ("json", sizing.render_json)):
        t, text = timed(fn, rows)
        print("%-14s %10.3f %14.0f %10.2f   (%.1f MB)" % ("report " + fmt, t, a.hosts / t, t / t_plan, len(text) / 1e6))


if __name__ == "__main__":
    main()
