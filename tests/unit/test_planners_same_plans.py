"""The planners after the fleet-scale rewrite give the same plans as before it: generated fleets
(every sizing mode and backend, good and bad policies; wave policies over every kind of domain)
planned by the current code and by the 0.1.6 code kept in tests/unit/legacy/."""

import os
import random
import sys

import pytest

import conftest  # (makes the collection importable)
sys.path.insert(0, os.path.join(conftest.ROOT, "tests", "unit"))

from legacy import sizing_v1, waves_v1  # noqa: E402

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing, waves  # noqa: E402

GiB = 1 << 30

SIZING_POLICIES = [
    {"mode": "fraction", "fraction": 0.5, "align": "1G", "reserve": "8G"},
    {"mode": "fraction", "fraction": 0.97},
    {"mode": "fraction", "fraction": "x"},
    {"mode": "absolute", "size": "48G", "reserve": "8G"},
    {"mode": "absolute", "size": "3000G"},
    {"mode": "vms", "vms": [{"name": "a", "memory": "3G"}, {"name": "b", "memory": "1.5G"}], "headroom": "10%"},
    {"mode": "vms", "vms": [{"name": "a", "memory": "lots"}]},
    {"mode": "vms", "vms": [], "headroom": "2G"},
    {"backend": "guestmemfs", "mode": "vms", "vms": [{"name": "v%d" % i, "memory": "1G"} for i in range(6)],
     "headroom": "2G", "kho_scratch": "512M"},
    {"backend": "guestmemfs", "mode": "vms", "vms": [{"name": "big", "memory": "2G"}]},
    {"backend": "guestmemfs", "mode": "absolute", "size": "8G", "kho_scratch": "7M"},
    {"backend": "luo", "mode": "absolute", "size": "48G", "kho_scratch": "50%"},
    {"backend": "luo", "mode": "vms", "vms": [{"name": "a", "memory": "20G"}], "kernel_reserved": "256M"},
    {"backend": "luo", "mode": "fraction", "fraction": 0.9, "kho_scratch": "64M,512M,256M"},
    {"backend": "pmem", "mode": "absolute", "size": "8G", "kho_scratch": "1G"},
    {"backend": "nvdimm", "mode": "absolute", "size": "8G"},
    {"mode": "absolute", "size": "8G", "align": "4K"},
    {"mode": "teleport"},
    {"mode": "fraction", "fraction": 0.5, "colour": "red"},
    {},
]


def sizing_fleet(n, seed, shared):
    rnd = random.Random(seed)
    hosts = []
    for i in range(n):
        mem = rnd.choice([0, 16, 64, 256, 1024]) * GiB
        ranges = [[0, 0x9FBFF], [0x100000, 0x7FFDBFFF]] + ([[4 * GiB, 4 * GiB + mem - 2 * GiB - 1]] if mem else [])
        policy = rnd.choice(SIZING_POLICIES)
        host = {"name": "hv%05d" % i, "memory_bytes": mem or None, "firmware_ram_ranges": ranges,
                "numa_nodes": rnd.choice([1, 2, 4]), "policy": policy if shared else dict(policy)}
        if rnd.random() < 0.2:
            host.update(kho_scratch_bytes=rnd.choice([512, 1024]) * (1 << 20), kho_scratch=policy.get("kho_scratch"))
        hosts.append(host)
    return hosts


@pytest.mark.parametrize("shared", [True, False], ids=["group policies", "a policy per host"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sizing_plans_as_before(seed, shared):
    hosts = sizing_fleet(3000, seed, shared)
    new = sizing.plan_fleet(hosts)
    assert any(r["ok"] for r in new) and any(not r["ok"] for r in new)
    # hosts without numa_node_bytes are not checked for NUMA: the one new column stays empty
    assert set(r.pop("numa") for r in new) == {None}
    for r in new:  # and the refusal of an unknown key lists the one new key
        if r["reason"] and r["reason"].startswith("unknown policy keys"):
            assert r["reason"].endswith(", kernel_reserved, numa)")
            r["reason"] = r["reason"][:-len(", numa)")] + ")"
    old = sizing_v1.plan_fleet(hosts)
    # the one change of behaviour: a host without VMs is planned with nothing to carve, no longer refused
    empty = 0
    for i, (h, r) in enumerate(zip(hosts, new)):
        if h["policy"].get("vms") == [] and h["memory_bytes"]:
            assert r["ok"] and r["size_bytes"] == 0 and r["cmdline_args"] == [], r
            assert not old[i]["ok"] and "non-empty list" in old[i]["reason"]
            new[i] = old[i]
            empty += 1
    assert empty
    assert new == old
    assert sizing.render_table(new) == sizing_v1.render_table(old)


def waves_fleet(n, seed):
    rnd = random.Random(seed)
    hosts = []
    for i in range(n):
        hvars = {"rack": "r%03d" % (i // rnd.choice([8, 20, 40])), "feed": rnd.choice(["A", "B", "C", "D"]),
                 "ansible_host": "10.%d.%d.%d" % (rnd.randrange(4), rnd.randrange(256), rnd.randrange(1, 255))}
        r = rnd.random()
        if r < 0.05:
            hvars["rack"] = ["r900", "r901"]
        elif r < 0.08:
            hvars["feed"] = 7
        hosts.append({"name": "hv%05d" % i, "vars": hvars})
    return hosts


WAVE_POLICIES = [
    None,
    {"max_per_domain": {"rack": 1}},
    {"canary": "1%", "waves": [5, "10%", "25%"], "max_per_domain": {"rack": 2, "feed": "30%"}},
    {"canary": 2, "growth": 1.5, "max_wave": "10%",
     "domains": ["rack", {"name": "pdu", "var": "feed"}, {"name": "subnet", "prefix": 24},
                 {"name": "zone", "cidrs": {"z0": "10.0.0.0/16", "z1": ["10.1.0.0/16", "10.1.128.0/17"],
                                            "z2": "10.2.0.0/15"}, "required": False}],
     "max_per_domain": {"rack": 2, "pdu": "10%", "subnet": 3, "zone": "5%"}},
]


@pytest.mark.parametrize("policy", WAVE_POLICIES, ids=["default", "rack", "waves", "4 domains"])
@pytest.mark.parametrize("seed", [1, 2])
def test_waves_plans_as_before(policy, seed):
    hosts = waves_fleet(4000, seed)
    new = waves.plan_waves(hosts, policy)
    assert new["summary"]["waves"] > 3
    assert new == waves_v1.plan_waves(hosts, policy)


def test_waves_refusals_as_before():
    hosts = waves_fleet(500, 4)
    hosts[7]["vars"]["rack"] = {"not": "a value"}
    del hosts[9]["vars"]["rack"]
    hosts[11]["vars"]["ansible_host"] = "not-an-address"
    policy = WAVE_POLICIES[3]
    with pytest.raises(waves.WaveError) as new:
        waves.plan_waves(hosts, policy)
    with pytest.raises(waves_v1.WaveError) as old:
        waves_v1.plan_waves(hosts, policy)
    assert str(new.value) == str(old.value)
