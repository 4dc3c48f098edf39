"""The rollout wave planner: wave sizes, failure-domain limits (checked by property over random
inventories, against an independent count), CIDR domains, every refusal, the reports, the filters."""

import ipaddress
import json
import math
import os
import random
import re
import subprocess
import sys

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.guestmemfs.liveupdate.plugins.filter import waves as wave_filters
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import waves
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.waves import WaveError, plan_waves

import conftest


def inv(n, **per_host):
    """n hosts h00.. with vars from functions of the index: inv(6, rack=lambda i: i % 2)."""
    return [{"name": "h%02d" % i, "vars": dict((k, f(i)) for k, f in per_host.items())} for i in range(n)]


def wave_names(plan):
    return [w["hosts"] for w in plan["waves"]]


# --- wave sizes --------------------------------------------------------------------------------

def test_default_is_a_canary_then_doubling_in_inventory_order():
    plan = plan_waves(inv(12))
    assert plan["sizes"] == [1, 2, 4, 5]
    assert wave_names(plan)[0] == ["h00"]
    assert plan["order"] == ["h%02d" % i for i in range(12)]
    assert plan["summary"]["canary"] == ["h00"]


def test_no_hosts_no_waves():
    plan = plan_waves([], {"max_per_domain": {"rack": 1}})
    assert plan["waves"] == [] and plan["order"] == [] and plan["sizes"] == []
    assert waves.render_table(plan).endswith("0 hosts in 0 waves\n")


def test_one_host_is_one_wave():
    assert plan_waves(inv(1))["sizes"] == [1]


@pytest.mark.parametrize("policy,sizes", [
    ({"canary": 2}, [2, 4, 8, 6]),
    ({"canary": "10%"}, [2, 4, 8, 6]),                 # 10 % of 20, as serial rounds: down, at least 1
    ({"canary": "1%"}, [1, 2, 4, 8, 5]),
    ({"canary": 1, "waves": [3, "50%"]}, [1, 3, 10, 6]),  # the last size repeats
    ({"canary": 0, "waves": [5]}, [5, 5, 5, 5]),
    ({"canary": 0, "waves": ["100%"]}, [20]),
    ({"growth": 1.5}, [1, 2, 3, 5, 8, 1]),             # ceil(1.5), ceil(3), ceil(4.5), ceil(7.5), ...
    ({"growth": 3, "max_wave": 5}, [1, 3, 5, 5, 5, 1]),
    ({"growth": 2, "max_wave": "25%"}, [1, 2, 4, 5, 5, 3]),
    ({"growth": 1}, [1] * 20),
    ({"canary": 10, "growth": 1.1}, [10, 10]),         # 10 x 1.1 is 11, not 12
    ({"canary": 25}, [20]),
    ({"canary": 4, "max_wave": 2}, [4, 2, 2, 2, 2, 2, 2, 2, 2]),  # max_wave is for the waves after the canary
])
def test_wave_sizes(policy, sizes):
    assert plan_waves(inv(20), policy)["sizes"] == sizes


def test_no_canary():
    plan = plan_waves(inv(4), {"canary": 0, "waves": [2]})
    assert plan["sizes"] == [2, 2] and plan["summary"]["canary"] == []
    assert waves.render_table(plan).endswith("4 hosts in 2 waves\n")


def test_float_growth_does_not_overshoot():
    assert plan_waves(inv(40), {"canary": 10, "growth": 1.1})["sizes"] == [10, 11, 13, 6]


def test_targets_are_kept_beside_sizes():
    plan = plan_waves(inv(5))
    assert [(w["target"], w["size"]) for w in plan["waves"]] == [(1, 1), (2, 2), (2, 2)]
    assert [w["limited_by"] for w in plan["waves"]] == [[], [], []]


# --- failure domains ---------------------------------------------------------------------------

def test_one_per_rack():
    hosts = inv(12, rack=lambda i: "r%d" % (i // 4))  # 3 racks of 4, in inventory order
    plan = plan_waves(hosts, {"canary": 1, "waves": ["100%"], "max_per_domain": {"rack": 1}})
    assert plan["sizes"] == [1, 3, 3, 3, 2]
    for w in plan["waves"]:
        assert max(w["counts"]["rack"].values()) == 1
    assert plan["waves"][1]["limited_by"] == ["rack"]
    assert plan["summary"]["min_waves"] == 4
    assert plan["summary"]["min_waves_by"] == {"domain": "rack", "value": "r0", "hosts": 4, "limit": 1}


def test_the_busiest_domain_value_goes_first():
    # rack b needs 3 waves at 1 per wave, rack a one: starting with a would take 4 waves of 1
    hosts = [{"name": "a1", "vars": {"rack": "a"}}] + [{"name": "b%d" % i, "vars": {"rack": "b"}} for i in range(3)]
    plan = plan_waves(hosts, {"canary": 1, "waves": [2], "max_per_domain": {"rack": 1}})
    assert wave_names(plan) == [["b0"], ["a1", "b1"], ["b2"]]


def test_a_host_counts_against_each_of_its_domains():
    hosts = inv(8, rack=lambda i: "r%d" % (i % 4), feed=lambda i: "f%d" % (i % 2))
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "domains": ["rack", "feed"],
                              "max_per_domain": {"rack": 1, "feed": 1}})
    assert all(w["size"] <= 2 for w in plan["waves"])  # two feeds, one host each
    assert len(plan["waves"]) == 4
    for w in plan["waves"]:
        assert max(w["counts"]["feed"].values()) == 1 and max(w["counts"]["rack"].values()) == 1


def test_list_value_puts_a_host_in_each():
    hosts = [{"name": "ab", "vars": {"feeds": ["A", "B"]}}, {"name": "a", "vars": {"feeds": "A"}},
             {"name": "b", "vars": {"feeds": ["B"]}}]
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "max_per_domain": {"feeds": 1}})
    assert wave_names(plan) == [["ab"], ["a", "b"]]
    assert plan["hosts"][0]["domains"] == {"feeds": ["A", "B"]}
    assert plan["hosts"][1]["domains"] == {"feeds": "A"}
    assert plan["hosts"][2]["domains"] == {"feeds": ["B"]}


def test_percentage_limit_is_of_each_value():
    hosts = inv(30, rack=lambda i: "big" if i < 20 else "small")
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "max_per_domain": {"rack": "25%"}})
    assert plan["domains"]["rack"]["values"] == {"big": {"hosts": 20, "limit": 5}, "small": {"hosts": 10, "limit": 2}}
    assert plan["sizes"][0] == 7 and len(plan["waves"]) == 5


def test_optional_domain_leaves_hosts_without_it_unlimited():
    hosts = inv(6, rack=lambda i: "r0")
    for h in hosts[3:]:
        del h["vars"]["rack"]
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "domains": [{"name": "rack", "required": False}],
                              "max_per_domain": 1})
    assert plan["sizes"] == [4, 1, 1]
    assert plan["domains"]["rack"]["unlimited_hosts"] == 3
    assert plan["hosts"][1]["domains"] == {}


def test_named_variable_and_integer_values():
    hosts = inv(4, power_feed=lambda i: i % 2)
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "domains": [{"name": "feed", "var": "power_feed"}],
                              "max_per_domain": {"feed": 1}})
    assert plan["sizes"] == [2, 2]
    assert plan["waves"][0]["counts"] == {"feed": {"0": 1, "1": 1}}


def test_limits_without_domains_name_host_variables():
    plan = plan_waves(inv(4, rack=lambda i: i % 2, row=lambda i: 0), {"max_per_domain": {"row": 2, "rack": 1}})
    assert [d["name"] for d in plan["policy"]["domains"]] == ["rack", "row"]
    assert plan["policy"]["max_per_domain"] == {"rack": 1, "row": 2}


# --- CIDR domains ------------------------------------------------------------------------------

def test_subnet_of_ansible_host():
    hosts = inv(6, ansible_host=lambda i: "10.1.%d.%d" % (i % 3, 10 + i))
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "domains": [{"name": "net", "prefix": 24}],
                              "max_per_domain": 1})
    assert plan["sizes"] == [3, 3]
    assert plan["hosts"][0]["domains"] == {"net": "10.1.0.0/24"}
    assert sorted(plan["domains"]["net"]["values"]) == ["10.1.0.0/24", "10.1.1.0/24", "10.1.2.0/24"]


def test_subnet_ipv6_and_the_name_as_address():
    hosts = [{"name": "10.0.0.1"}, {"name": "10.0.0.2"}, {"name": "fd00::1", "vars": {}},
             {"name": "six", "vars": {"ansible_host": "fd00::2"}}, {"name": "other", "vars": {"ansible_host": "fd00:1::1"}}]
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"],
                              "domains": [{"name": "net", "prefix": 16, "prefix6": 64}], "max_per_domain": 1})
    assert wave_names(plan) == [["10.0.0.1", "fd00::1", "other"], ["10.0.0.2", "six"]]
    assert plan["hosts"][1]["domains"] == {"net": "fd00::/64"}


def test_subnet_of_another_variable():
    hosts = inv(4, mgmt=lambda i: "192.168.%d.1" % i)
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "domains": [{"name": "net", "var": "mgmt", "prefix": 23}],
                              "max_per_domain": 1})
    assert plan["sizes"] == [2, 2]


def test_named_cidrs_longest_prefix_wins():
    zones = {"dc": "10.0.0.0/8", "lab": ["10.9.0.0/16", "192.168.0.0/24"], "v6": "fd00::/8"}
    hosts = [{"name": "a", "vars": {"ansible_host": "10.1.2.3"}}, {"name": "b", "vars": {"ansible_host": "10.9.0.4"}},
             {"name": "c", "vars": {"ansible_host": "192.168.0.9"}}, {"name": "d", "vars": {"ansible_host": "fd12::1"}}]
    plan = plan_waves(hosts, {"domains": [{"name": "zone", "cidrs": zones}], "max_per_domain": 1})
    assert [r["domains"]["zone"] for r in sorted(plan["hosts"], key=lambda r: r["host"])] == ["dc", "lab", "lab", "v6"]
    assert plan["policy"]["domains"][0]["cidrs"] == {"dc": ["10.0.0.0/8"], "lab": ["10.9.0.0/16", "192.168.0.0/24"],
                                                     "v6": ["fd00::/8"]}


def test_named_cidrs_optional_and_unmatched():
    hosts = inv(3, ansible_host=lambda i: "10.0.0.%d" % (i + 1))
    hosts[2]["vars"]["ansible_host"] = "172.16.0.1"
    plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"],
                              "domains": [{"name": "zone", "cidrs": {"a": "10.0.0.0/24"}, "required": False}],
                              "max_per_domain": 1})
    assert wave_names(plan) == [["h00", "h02"], ["h01"]]
    with pytest.raises(WaveError, match=r"h02: an address in none of the networks of domain zone \(domain zone is required\)"):
        plan_waves(hosts, {"domains": [{"name": "zone", "cidrs": {"a": "10.0.0.0/24"}}], "max_per_domain": 1})


def test_cidr_domains_need_netaddr(monkeypatch):
    monkeypatch.setattr(waves, "HAS_NETADDR", False)
    with pytest.raises(WaveError, match="domain net matches addresses by CIDR, which needs the Python package netaddr"):
        plan_waves(inv(2), {"domains": [{"name": "net", "prefix": 24}], "max_per_domain": 1})
    assert plan_waves(inv(2, rack=lambda i: i), {"max_per_domain": {"rack": 1}})["sizes"] == [1, 1]


def test_imports_without_netaddr():
    code = ("import sys; sys.modules['netaddr'] = None; sys.path.insert(0, %r); import conftest\n"
            "from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import waves\n"
            "assert not waves.HAS_NETADDR; print(waves.plan_waves([{'name': 'a'}])['sizes'])"
            % os.path.dirname(conftest.FIXTURES))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1]"


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy,message", [
    ({"max_per_domain": {"rack": 0}}, "max_per_domain.rack is 0: it must be at least 1"),
    ({"max_per_domain": {"rack": -1}}, "max_per_domain.rack is -1: it must be at least 1"),
    ({"max_per_domain": {"rack": "0%"}}, "a percentage is above 0 and at most 100"),
    ({"max_per_domain": {"rack": 1.5}}, "use a whole count or a percentage"),
    ({"max_per_domain": {"rack": True}}, "use a whole count or a percentage"),
    ({"max_per_domain": 1}, "max_per_domain 1 without domains"),
    ({"domains": ["rack"]}, "domains rack need a limit"),
    ({"domains": ["rack"], "max_per_domain": {"rak": 1}}, "max_per_domain names unknown domains rak"),
    ({"domains": ["rack", "row"], "max_per_domain": {"rack": 1}}, "domain row has no limit in max_per_domain"),
    ({"domains": ["rack", "rack"], "max_per_domain": 1}, "domain rack is listed twice"),
    ({"domains": [{"name": "net", "prefix": 33}], "max_per_domain": 1}, "prefix 33 is not a prefix length from 0 to 32"),
    ({"domains": [{"prefix": 24}], "max_per_domain": 1}, r"domains\[0\]: a subnet domain needs a name"),
    ({"domains": [{"name": "n", "prefix": 24, "cidrs": {}}], "max_per_domain": 1}, "two kinds of domain"),
    ({"domains": [{"name": "z", "cidrs": {"a": "10.0.0.0/33"}}], "max_per_domain": 1}, "'10.0.0.0/33' is not a CIDR"),
    ({"domains": [{"name": "z", "cidrs": {"a": "10.0.0.0"}}], "max_per_domain": 1}, "'10.0.0.0' is not a CIDR"),
    ({"domains": [{"name": "z", "cidrs": {"a": "ten/8"}}], "max_per_domain": 1}, "'ten/8' is not a CIDR"),
    ({"domains": [{"name": "z", "cidrs": {"a": "10.0.0.1/24"}}], "max_per_domain": 1},
     r"10.0.0.1/24 has host bits set \(the network is 10.0.0.0/24\)"),
    ({"domains": [{"name": "z", "cidrs": {"a": "10.0.0.0/24", "b": ["10.0.0.0/24"]}}], "max_per_domain": 1},
     "10.0.0.0/24 is in zones a and b"),
    ({"domains": [{"name": "z", "cidrs": []}], "max_per_domain": 1}, "cidrs must be a dict"),
    ({"domains": [{"name": "r", "rquired": False}], "max_per_domain": 1}, "unknown keys rquired"),
    ({"domains": [{"name": "r", "required": "no"}], "max_per_domain": 1}, "required 'no' is not true or false"),
    ({"domains": [7], "max_per_domain": 1}, "give a host variable name or a dict"),
    ({"domains": "rack", "max_per_domain": 1}, "domains must be a list"),
    ({"cannary": 1}, "unknown rollout policy keys cannary"),
    ({"canary": -1}, "canary is -1"),
    ({"canary": "many"}, "use a whole count or a percentage"),
    ({"canary": "150%"}, "at most 100"),
    ({"canary": 0}, "canary 0 with growth"),
    ({"waves": [1], "growth": 2}, "set either waves"),
    ({"waves": []}, "waves must be a non-empty list"),
    ({"waves": [0]}, r"waves\[0\] is 0"),
    ({"growth": 0.5}, "growth 0.5: use a factor of at least 1"),
    ({"growth": "fast"}, "growth 'fast'"),
    ({"growth": "inf"}, "growth 'inf'"),
    ({"growth": float("nan")}, "growth nan"),
    ({"max_waves": "50%"}, "max_waves '50%': use a count"),
    ("rack", "the rollout policy must be a dict"),
])
def test_policy_refusals(policy, message):
    with pytest.raises(WaveError, match=message):
        plan_waves(inv(4, rack=lambda i: i), policy)


def test_string_counts_from_templating_are_read():
    assert plan_waves(inv(4), {"canary": "2", "waves": ["1"]})["sizes"] == [2, 1, 1]


@pytest.mark.parametrize("hosts,message", [
    ([{"name": "a"}, {"name": "a"}], "host a is listed twice"),
    ([{"vars": {}}], "each host needs a name"),
    (["a"], "each host needs a name"),
    ([{"name": "a", "vars": []}], "host a: vars must be a dict"),
    ({"a": {}}, "hosts must be a list"),
])
def test_host_list_refusals(hosts, message):
    with pytest.raises(WaveError, match=message):
        plan_waves(hosts)


def test_missing_domain_variable_names_the_hosts():
    hosts = inv(20, rack=lambda i: i % 3)
    for i in (4, 7, 8, 9, 15):
        del hosts[i]["vars"]["rack"]
    with pytest.raises(WaveError) as e:
        plan_waves(hosts, {"max_per_domain": {"rack": 1}})
    assert str(e.value) == "cannot plan: h04, h07, h08 and 2 more: no variable 'rack' (domain rack is required)"


@pytest.mark.parametrize("value,message", [
    (None, "h01: an empty 'rack' (domain rack is required)"),
    ("", "h01: an empty 'rack'"),
    ([], "h01: an empty 'rack'"),
    ({"a": 1}, "h01: rack={'a': 1}, but a domain value is a string or a number"),
    (True, "h01: rack=True, but a domain value"),
    ([["x"]], "h01: rack=[['x']], but a domain value"),
])
def test_bad_domain_values_name_the_host(value, message):
    hosts = inv(3, rack=lambda i: "r")
    hosts[1]["vars"]["rack"] = value
    with pytest.raises(WaveError, match=re.escape(message)):
        plan_waves(hosts, {"max_per_domain": {"rack": 1}})


def test_a_malformed_value_is_refused_even_where_optional():
    hosts = inv(3, rack=lambda i: "r")
    hosts[1]["vars"]["rack"] = {"a": 1}
    with pytest.raises(WaveError, match="h01: rack="):
        plan_waves(hosts, {"domains": [{"name": "rack", "required": False}], "max_per_domain": 1})


@pytest.mark.parametrize("hosts,message", [
    ([{"name": "a", "vars": {"ansible_host": "10.0.0.300"}}], "a: ansible_host='10.0.0.300' is not an IP address"),
    ([{"name": "a", "vars": {"ansible_host": "db1.example"}}], "a: ansible_host='db1.example' is not an IP address"),
    ([{"name": "db1.example"}], r"db1.example: no ansible_host, and the name is not an IP address \(domain net is required\)"),
    ([{"name": "a", "vars": {"ansible_host": "fd00::1"}}], "a: the IPv6 address fd00::1, and domain net has no prefix6"),
])
def test_bad_addresses_name_the_host(hosts, message):
    with pytest.raises(WaveError, match=message):
        plan_waves(hosts, {"domains": [{"name": "net", "prefix": 24}], "max_per_domain": 1})


def test_bad_address_is_refused_even_where_optional():
    with pytest.raises(WaveError, match="a: ansible_host='x' is not an IP address"):
        plan_waves([{"name": "a", "vars": {"ansible_host": "x"}}],
                   {"domains": [{"name": "net", "prefix": 24, "required": False}], "max_per_domain": 1})
    plan = plan_waves([{"name": "a"}], {"domains": [{"name": "net", "prefix": 24, "required": False}], "max_per_domain": 1})
    assert plan["domains"]["net"]["unlimited_hosts"] == 1


def test_more_waves_than_allowed_is_impossible_and_says_why():
    hosts = inv(12, rack=lambda i: "r%d" % (i // 6))
    policy = {"canary": 1, "waves": ["100%"], "max_per_domain": {"rack": 2}, "max_waves": 3}
    with pytest.raises(WaveError, match=r"this plan needs more than max_waves=3 waves; the domain limits alone need 3: "
                                        r"rack r0 has 6 hosts, at most 2 per wave"):
        plan_waves(hosts, policy)
    policy["canary"] = 0
    assert len(plan_waves(hosts, policy)["waves"]) == 3


def test_many_problems_are_counted():
    hosts = [{"name": "h%d" % i, "vars": {"ansible_host": "bad%d" % i}} for i in range(15)]
    with pytest.raises(WaveError, match=r"; and 5 more problems$"):
        plan_waves(hosts, {"domains": [{"name": "net", "prefix": 24}], "max_per_domain": 1})


# --- properties over random inventories --------------------------------------------------------

def random_case(rnd):
    n = rnd.randint(0, 300)
    racks = rnd.randint(1, 30)
    hosts = []
    for i in range(n):
        hv = {"rack": "r%d" % rnd.randrange(racks),
              "ansible_host": "10.%d.%d.%d" % (rnd.randrange(2), rnd.randrange(8), rnd.randint(1, 254))}
        if rnd.random() < 0.8:
            hv["feed"] = rnd.sample(["A", "B", "C"], rnd.randint(1, 2))
        hosts.append({"name": "host%03d" % i, "vars": hv})
    rnd.shuffle(hosts)
    # unique addresses are not required: two hosts may share one
    domains, limits = [], {}
    if rnd.random() < 0.8:
        domains.append("rack")
        limits["rack"] = rnd.choice([1, 2, 3, "50%"])
    if rnd.random() < 0.5:
        domains.append({"name": "feed", "required": False})
        limits["feed"] = rnd.choice([1, 5, "30%"])
    if rnd.random() < 0.5:
        domains.append({"name": "net", "prefix": rnd.choice([16, 20, 24])})
        limits["net"] = rnd.choice([1, 4, "10%"])
    if rnd.random() < 0.3:
        domains.append({"name": "zone", "cidrs": {"a": "10.0.0.0/16", "b": ["10.1.0.0/17"], "c": "10.1.128.0/17"}})
        limits["zone"] = rnd.choice([2, "25%"])
    policy = {"canary": rnd.choice([1, 1, 2, "5%"])}
    if rnd.random() < 0.5:
        policy["waves"] = rnd.choice([[2, "10%"], ["100%"], [5], ["30%", 3]])
    else:
        policy["growth"] = rnd.choice([1.5, 2, 3])
        if rnd.random() < 0.5:
            policy["max_wave"] = rnd.choice([15, "20%"])
    if domains:
        policy["domains"] = domains
        policy["max_per_domain"] = limits
    return hosts, policy


def independent_values(domain, hvars):
    """A host's values in one domain, computed apart from the planner (stdlib ipaddress)."""
    if isinstance(domain, str):
        return [hvars["rack"]]
    if domain["name"] == "feed":
        return list(hvars.get("feed", []))
    addr = ipaddress.ip_address(hvars["ansible_host"])
    if domain["name"] == "net":
        return [str(ipaddress.ip_network("%s/%d" % (addr, domain["prefix"]), strict=False))]
    best = None
    for zone, cidrs in domain["cidrs"].items():
        for c in cidrs if isinstance(cidrs, list) else [cidrs]:
            net = ipaddress.ip_network(c)
            if addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, zone)
    return [best[1]]


def check(hosts, policy, plan):
    names = [h["name"] for h in hosts]
    planned = [h for w in plan["waves"] for h in w["hosts"]]
    assert sorted(planned) == sorted(names), "every host exactly once"
    assert planned == plan["order"] and plan["sizes"] == [len(w["hosts"]) for w in plan["waves"]]
    assert all(w["hosts"] for w in plan["waves"]), "no empty wave"
    position = dict((n, i) for i, n in enumerate(names))
    for w in plan["waves"]:
        assert [position[h] for h in w["hosts"]] == sorted(position[h] for h in w["hosts"]), "inventory order"
        assert w["size"] <= w["target"]
    n = len(hosts)
    canary = policy.get("canary", 1)
    canary = max(1, n * int(canary[:-1]) // 100) if isinstance(canary, str) else canary
    if n:
        assert plan["waves"][0]["size"] <= canary and plan["waves"][0]["target"] == min(canary, n)
    # the limits, recounted from the input
    for d in policy.get("domains", []):
        name = d if isinstance(d, str) else d["name"]
        limit = policy["max_per_domain"][name]
        values = dict((h["name"], independent_values(d, h["vars"])) for h in hosts)
        totals = {}
        for vs in values.values():
            for v in vs:
                totals[v] = totals.get(v, 0) + 1
        for w in plan["waves"]:
            counts = {}
            for h in w["hosts"]:
                for v in values[h]:
                    counts[v] = counts.get(v, 0) + 1
            assert counts == w["counts"][name]
            for v, c in counts.items():
                k = limit if isinstance(limit, int) else max(1, totals[v] * int(limit[:-1]) // 100)
                assert c <= k, "wave %d: %s %s has %d > %d" % (w["wave"], name, v, c, k)
    # a wave cut short names a domain that did it
    for w in plan["waves"]:
        assert bool(w["limited_by"]) == (w["size"] < w["target"])
    assert len(plan["waves"]) >= plan["summary"]["min_waves"]


def test_limits_hold_over_random_inventories():
    rnd = random.Random(20261130)
    for _case in range(200):
        hosts, policy = random_case(rnd)
        plan = plan_waves(hosts, policy)
        check(hosts, policy, plan)
        again = plan_waves(json.loads(json.dumps(hosts)), json.loads(json.dumps(policy)))
        assert again == plan, "same input, same plan"


def test_one_domain_with_unbounded_waves_meets_the_lower_bound():
    rnd = random.Random(7)
    for _case in range(100):
        n = rnd.randint(1, 200)
        hosts = inv(n, rack=lambda i: "r%d" % rnd.randrange(rnd.randint(1, 12)))
        k = rnd.randint(1, 4)
        plan = plan_waves(hosts, {"canary": 0, "waves": ["100%"], "max_per_domain": {"rack": k}})
        counts = {}
        for h in hosts:
            counts[h["vars"]["rack"]] = counts.get(h["vars"]["rack"], 0) + 1
        assert len(plan["waves"]) == max(math.ceil(c / k) for c in counts.values()) == plan["summary"]["min_waves"]


def test_plan_does_not_depend_on_dict_order_of_vars_or_policy():
    hosts, policy = random_case(random.Random(3))
    plan = plan_waves(hosts, policy)
    rev_hosts = [{"vars": dict(reversed(list(h["vars"].items()))), "name": h["name"]} for h in hosts]
    rev_policy = dict(reversed(list(policy.items())))
    assert plan_waves(rev_hosts, rev_policy) == plan


# --- reports -----------------------------------------------------------------------------------

def small_plan():
    hosts = inv(9, rack=lambda i: "r%d" % (i % 3), ansible_host=lambda i: "10.0.%d.%d" % (i // 5, i + 1))
    return plan_waves(hosts, {"canary": 1, "waves": ["100%"], "domains": ["rack", {"name": "net", "prefix": 24}],
                              "max_per_domain": {"rack": 2, "net": 3}})


def test_table():
    text = waves.render_table(small_plan())
    lines = text.splitlines()
    assert lines[0].split() == ["wave", "size", "target", "rack<=2", "net<=3", "limited", "by", "hosts"]
    assert lines[1].split()[:3] == ["1", "1", "1"]
    assert "net" in lines[2] and "2/2 in 3" in lines[2] or "3/3 in 2" in lines[2]
    assert lines[-1].startswith("9 hosts in 3 waves (the domain limits need at least 2: ")
    assert lines[-1].endswith("; canary h00")


def test_csv_and_json():
    plan = small_plan()
    rows = waves.render_csv(plan).splitlines()
    assert rows[0] == "host,wave,rack,net" and rows[1] == "h00,1,r0,10.0.0.0/24" and len(rows) == 10
    data = json.loads(waves.render_json(plan))
    assert "order" not in data and data["sizes"] == plan["sizes"]
    assert data["waves"][0]["counts"] == {"rack": {"r0": 1}, "net": {"10.0.0.0/24": 1}}
    assert data["policy"]["max_per_domain"] == {"rack": 2, "net": 3}


def test_table_without_domains_and_with_long_waves():
    text = waves.render_table(plan_waves(inv(20), {"canary": 1, "waves": ["100%"]}))
    assert text.splitlines()[2].endswith("h01, h02, h03, h04 and 15 more")
    assert text.splitlines()[-1] == "20 hosts in 2 waves; canary h00"


# --- the filters -------------------------------------------------------------------------------

class FakeHostVars(dict):
    """What the filter needs of Ansible's hostvars: a mapping of host name to its variables."""


def test_filter_reads_hostvars_and_the_shared_policy():
    policy = {"canary": 1, "max_per_domain": {"rack": 1}}
    hv = FakeHostVars(("h%d" % i, {"rack": "r%d" % (i % 2), "other": i, "guestmemfs_rollout": policy}) for i in range(4))
    plan = wave_filters.rollout_waves(["h0", "h1", "h2", "h3"], hostvars=hv)
    assert plan["sizes"] == [1, 2, 1]
    assert wave_filters.rollout_waves(["h0", "h1", "h2", "h3"], {"canary": 2}, hv)["sizes"] == [2, 2]


def test_filter_refuses_hosts_that_disagree_on_the_policy():
    hv = FakeHostVars(("h%d" % i, {"guestmemfs_rollout": {"canary": 1}}) for i in range(5))
    hv["h3"] = {"guestmemfs_rollout": {"canary": 2}}
    hv["h4"] = {}
    with pytest.raises(AnsibleFilterError, match=r"the hosts disagree on guestmemfs_rollout.*h0, h1, h2: \{\"canary\": 1\}; "
                                                 r"h3: \{\"canary\": 2\}; h4: \(not set\)"):
        wave_filters.rollout_waves(sorted(hv), hostvars=hv)
    assert wave_filters.rollout_waves(["h4"], hostvars=hv)["sizes"] == [1]


def test_filter_errors():
    with pytest.raises(AnsibleFilterError, match="rollout_waves: cannot plan: a: no variable 'rack'"):
        wave_filters.rollout_waves([{"name": "a"}], {"max_per_domain": {"rack": 1}})
    with pytest.raises(AnsibleFilterError, match="x is not in the inventory"):
        wave_filters.rollout_waves(["x"], hostvars=FakeHostVars())
    with pytest.raises(AnsibleFilterError, match="expects host names"):
        wave_filters.rollout_waves([{"name": "a"}], hostvars=FakeHostVars())
    with pytest.raises(AnsibleFilterError, match="expects a list of hosts"):
        wave_filters.rollout_waves(5)
    with pytest.raises(AnsibleFilterError, match="use table, csv or json"):
        wave_filters.rollout_report(small_plan(), "html")
    with pytest.raises(AnsibleFilterError, match="expects a plan"):
        wave_filters.rollout_report([], "table")


def test_report_filter_renders_each_format():
    plan = small_plan()
    assert wave_filters.rollout_report(plan) == waves.render_table(plan)
    assert wave_filters.rollout_report(plan, "csv") == waves.render_csv(plan)
    assert wave_filters.rollout_report(plan, "json") == waves.render_json(plan)
    assert wave_filters.rollout_report(plan, ["table", "json"]) == {"table": waves.render_table(plan),
                                                                    "json": waves.render_json(plan)}
    with pytest.raises(AnsibleFilterError, match="format 'xml'"):
        wave_filters.rollout_report(plan, ["table", "xml"])


def test_needed_vars():
    assert waves.needed_vars({"domains": ["rack", {"name": "net", "prefix": 24}, {"name": "f", "var": "feed"}],
                              "max_per_domain": 1}) == ["ansible_host", "feed", "rack"]
    assert waves.needed_vars(None) == []


def test_bench_runs_small():
    bench = os.path.join(conftest.ROOT, "tests", "bench", "bench_waves.py")
    out = subprocess.run([sys.executable, bench, "--hosts", "200", "500"], capture_output=True, text=True, check=True)
    assert "hosts/s" in out.stdout and "500" in out.stdout


def test_fast_dotted_quads_read_as_netaddr_reads_them():
    import netaddr
    rnd = random.Random(5)
    texts = ["0.0.0.0", "255.255.255.255", "1.2.3.4", "01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3", "1.2.3.4.5",
             "1.2.3.4\n", " 1.2.3.4", "1.2.3.٤", "1.2.3.+4", "1..3.4", "::ffff:1.2.3.4", "1.2.3.4/32", ""]
    texts += [".".join(str(rnd.choice([0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 255, 256, 300, 1000, "00", "007"]))
                       for _octet in range(4)) for _text in range(500)]
    for text in texts:
        try:
            ip = netaddr.IPAddress(text)
            expected = (ip.version, int(ip))
        except (netaddr.AddrFormatError, ValueError):
            expected = None
        assert waves._address(text, {}) == expected, text
