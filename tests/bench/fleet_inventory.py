"""A generated fleet to plan without hosts: an inventory and the facts guestmemfs_facts would
have gathered, as a facts file or as Ansible's jsonfile fact cache.

    python tests/bench/fleet_inventory.py --hosts 10000 --out DIR [--cache]

Writes DIR/inventory.yml (group ``hypervisors``: racks of 40 hosts, rows of 10 racks on four
power feeds, addresses from 10.0.0.1, a sizing policy per group and one rollout policy) and
DIR/facts.json ({host: ansible_facts}); with --cache also DIR/fact_cache, the same facts written by
Ansible's own jsonfile cache plugin. Same arguments, same files.
"""

import argparse
import json
import os
import random

RACK = 40
ROW = 10
GiB = 1 << 30

ROLLOUT = {"canary": 1, "growth": 2, "max_wave": "10%",
           "domains": ["rack", {"name": "feed", "var": "power_feed"}, {"name": "subnet", "prefix": 24},
                       {"name": "zone", "cidrs": dict(("z%d" % z, "10.%d.0.0/16" % z) for z in range(4))}],
           "max_per_domain": {"rack": 2, "feed": "10%", "subnet": 16, "zone": "5%"}}

SIZING = {
    "pmem_fraction": {"mode": "fraction", "fraction": 0.5, "align": "1G", "reserve": "8G"},
    "pmem_vms": {"mode": "vms", "vms": [{"name": "vm%d" % j, "memory": "%dG" % (2 << (j % 3))} for j in range(8)],
                 "headroom": "10%", "reserve": "8G"},
    "guestmemfs_vms": {"backend": "guestmemfs", "mode": "vms",
                       "vms": [{"name": "vm%d" % j, "memory": "1G"} for j in range(12)], "headroom": "2G",
                       "reserve": "8G"},
    "luo_absolute": {"backend": "luo", "mode": "absolute", "size": "48G", "reserve": "8G"},
}


def host_facts(rnd, nodes, small=False):
    """What guestmemfs_facts reports of memory, for a host of 128 GiB to 1 TiB (``small``: 64 GiB)
    on ``nodes`` nodes."""
    mem = 64 * GiB if small else rnd.choice([128, 256, 512, 1024]) * GiB
    ranges = [[0, 0x9FBFF], [0x100000, 0x7FFDBFFF], [4 * GiB, 4 * GiB + mem - 2 * GiB - 1]]
    per = mem // nodes
    return {"guestmemfs": {"memory": {
        "total_bytes": mem - 2 * GiB, "firmware_ram_bytes": mem, "firmware_ram_ranges": ranges,
        "numa_nodes": [{"node": i, "total_bytes": per, "free_bytes": per // 2} for i in range(nodes)]},
        "kho": {}}}


def fleet(n, seed=1):
    """(inventory dict, {host: ansible_facts})"""
    rnd = random.Random(seed)
    kinds = sorted(SIZING)
    groups, facts = dict((k, {"hosts": {}, "vars": {"guestmemfs_sizing": SIZING[k]}}) for k in kinds), {}
    for i in range(n):
        rack = i // RACK
        a = i + 1
        name = "hv%06d" % i
        groups[kinds[(i // 7) % len(kinds)]]["hosts"][name] = {
            "rack": "r%04d" % rack, "power_feed": "row%03d-%s" % (rack // ROW, "ABCD"[rack % 4]),
            "ansible_host": "10.%d.%d.%d" % (a >> 16, (a >> 8) & 255, a & 255)}
        # one host in 500 is too small for its policy on two NUMA nodes: refused, by name
        facts[name] = host_facts(rnd, 2 if i % 3 else 1, small=i % 500 == 499)
    inv = {"hypervisors": {"children": groups, "vars": {"guestmemfs_rollout": ROLLOUT}}}
    return inv, facts


def write_cache(facts, path):
    """The facts as Ansible's jsonfile fact cache holds them (written by the plugin itself)."""
    from ansible.plugins.loader import cache_loader, init_plugin_loader
    init_plugin_loader()
    cache = cache_loader.get("ansible.builtin.jsonfile", _uri=path, _timeout=0)
    for name, f in facts.items():
        cache.set(name, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", action="store_true", help="also write a jsonfile fact cache")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    inv, facts = fleet(a.hosts)
    with open(os.path.join(a.out, "inventory.yml"), "w") as f:
        json.dump(inv, f)  # JSON is YAML, and much faster to write and read
    with open(os.path.join(a.out, "facts.json"), "w") as f:
        json.dump(facts, f)
    if a.cache:
        write_cache(facts, os.path.join(a.out, "fact_cache"))


if __name__ == "__main__":
    main()
