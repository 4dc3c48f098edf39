"""Benchmark: plan the rollout waves of large fleets and render the plan.

    python tests/bench/bench_waves.py [--hosts 1000 10000 100000]

Prints, side by side in one run, for each policy and fleet size: the domain values, the waves
(and the lower bound the domain limits set), seconds (wall clock and this process's CPU, which a
loaded machine disturbs less) and hosts per second for planning, and seconds for the table and the
JSON report.
"""

import argparse
import time

from _collection import importable_collection

RACK = 40  # hosts per rack
ROW = 10   # racks per row; each rack hangs on one of its row's four power feeds


def fleet(n):
    """Hosts in racks of 40, rows of 10 racks with four power feeds each, addresses counted up
    from 10.0.0.1 (so a /24 spans parts of seven racks and a /16 is a zone)."""
    hosts = []
    for i in range(n):
        rack = i // RACK
        a = i + 1
        hosts.append({"name": "hv%06d" % i, "vars": {
            "rack": "r%04d" % rack,
            "power_feed": "row%03d-%s" % (rack // ROW, "ABCD"[rack % 4]),
            "ansible_host": "10.%d.%d.%d" % (a >> 16, (a >> 8) & 255, a & 255)}})
    return hosts


POLICIES = [
    ("default", None),
    ("rack<=1", {"max_per_domain": {"rack": 1}}),
    ("4 domains", {
        "canary": 1, "growth": 2, "max_wave": "10%",
        "domains": ["rack", {"name": "feed", "var": "power_feed"}, {"name": "subnet", "prefix": 24},
                    {"name": "zone", "cidrs": {"z%d" % z: "10.%d.0.0/16" % z for z in range(4)}}],
        "max_per_domain": {"rack": 2, "feed": "10%", "subnet": 16, "zone": "5%"}}),
]


def timed(fn, *args):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t0, out, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000, 100000])
    a = ap.parse_args()
    importable_collection()
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import waves

    print("rollout wave planning (%s)" % ", ".join("%s: %s" % (name, policy and policy.get("max_per_domain"))
                                                   for name, policy in POLICIES))
    columns = ("policy", "hosts", "values", "waves", "min_waves", "plan_s", "cpu_s", "hosts/s", "table_s", "json_s")
    print("%-10s %8s %8s %6s %9s %8s %8s %10s %8s %8s" % columns)
    for name, policy in POLICIES:
        for n in a.hosts:
            hosts = fleet(n)
            t_plan, plan, cpu = timed(waves.plan_waves, hosts, policy)
            t_table = timed(waves.render_table, plan)[0]
            t_json = timed(waves.render_json, plan)[0]
            values = sum(len(d["values"]) for d in plan["domains"].values())
            print("%-10s %8d %8d %6d %9d %8.3f %8.3f %10.0f %8.3f %8.3f" % (
                name, n, values, plan["summary"]["waves"], plan["summary"]["min_waves"], t_plan, cpu, n / t_plan,
                t_table, t_json))


if __name__ == "__main__":
    main()
