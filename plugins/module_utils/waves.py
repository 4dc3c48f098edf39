# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollout waves over failure domains: which hosts update together, in which order. Pure: no I/O.

A host is a dict with ``name`` and ``vars`` (the host variables the domains read), given in
inventory order. The policy (``guestmemfs_rollout``):

``canary``          hosts in the first wave: a count or ``N%`` of all hosts (default 1; 0: none)
``waves``           sizes of the waves after the canary, as Ansible's serial reads them: counts or
                    ``N%`` of all hosts; the last one repeats
``growth``          or: each wave is this factor times the previous one, from the canary on
                    (default 2 when ``waves`` is not set)
``max_wave``        no wave after the canary is larger (a count or ``N%``)
``max_waves``       refuse a plan that needs more waves
``domains``         failure domains, below
``max_per_domain``  K: at most K hosts of one domain value in any wave. One count or ``N%`` (of
                    that value's hosts) for every domain, or ``{domain: K}``; without ``domains``,
                    the keys of that dict are host variables

A domain is one of:

``rack`` or ``{name, var}``      a host variable; a list value puts the host in each of its values
``{name, prefix, prefix6}``      the IPv4 /prefix (IPv6 /prefix6) network of the host's address
``{name, cidrs: {zone: cidr}}``  the named network (one CIDR or a list) holding the host's address;
                                 the longest prefix wins

An address is the host variable ``var`` (default ``ansible_host``; without it, the inventory name
if that is an address, as Ansible connects). Every domain takes ``required`` (default true): a
host without a value is an error; with ``required: false`` that domain does not limit it.

Each wave takes hosts while no domain value would go over its limit: first from the values that
still need the most waves (so the plan nears its lower bound, the largest ceil(hosts / K) of any
value), then in inventory order. Wave sizes are upper bounds: the limits may leave a wave smaller,
and the plan says which domain did. Same input, same plan.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import heapq
import io
import math
import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.bulk import no_cyclic_gc
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.report_runs import report_json

try:
    import netaddr
    HAS_NETADDR = True
except ImportError:
    HAS_NETADDR = False

POLICY_KEYS = ("canary", "waves", "growth", "max_wave", "max_waves", "domains", "max_per_domain")
DOMAIN_KEYS = ("name", "var", "required", "prefix", "prefix6", "cidrs")
DEFAULT_CANARY = 1
DEFAULT_GROWTH = 2
ADDRESS_VAR = "ansible_host"
NAMED = 10  # an error names this many hosts, a table cell 4, then counts the rest
_BITS = {4: 32, 6: 128}
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_QUAD = re.compile(r"%s(?:\.%s){3}" % (_OCTET, _OCTET))


class WaveError(Exception):
    """Why no plan can be made, naming the host or the policy key."""


def _amount(value, what, zero=False):
    """A count or a percentage -> ('n', int) or ('%', float)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise WaveError("%s %r: use a whole count or a percentage such as '25%%'" % (what, value))
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                raise WaveError("%s %r is not a percentage" % (what, value))
            if not 0 < pct <= 100:
                raise WaveError("%s %r: a percentage is above 0 and at most 100" % (what, value))
            return ("%", pct)
        if not text.isdigit():
            raise WaveError("%s %r: use a whole count or a percentage such as '25%%'" % (what, value))
        value = int(text)
    if value < 0 or (value == 0 and not zero):
        raise WaveError("%s is %d: it must be at least 1" % (what, value))
    return ("n", value)


def _resolve(amount, total):
    """As serial reads a percentage: rounded down, at least 1."""
    kind, value = amount
    if kind == "n":
        return value
    return max(1, int(total * value / 100))


def _show(amount):
    return amount[1] if amount[0] == "n" else "%g%%" % amount[1]


def _factor(value):
    try:
        factor = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        factor = None
    if factor is None or not math.isfinite(factor) or factor < 1:
        raise WaveError("growth %r: use a factor of at least 1 (2 doubles each wave)" % (value,))
    return factor


def _network(text, domain, zone):
    if not isinstance(text, str) or "/" not in text:
        raise WaveError("domain %s, zone %s: %r is not a CIDR (address/prefix)" % (domain, zone, text))
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise WaveError("domain %s, zone %s: %r is not a CIDR (address/prefix)" % (domain, zone, text))
    if net.ip != net.network:
        raise WaveError("domain %s, zone %s: %s has host bits set (the network is %s)"
                        % (domain, zone, text, net.cidr))
    return net.cidr


def _prefix(value, bits, domain, key):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bits:
        raise WaveError("domain %s: %s %r is not a prefix length from 0 to %d" % (domain, key, value, bits))
    return value


def _domain(spec, index):
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise WaveError("domains[%d] %r: give a host variable name or a dict" % (index, spec))
    unknown = sorted(set(spec) - set(DOMAIN_KEYS))
    if unknown:
        raise WaveError("domains[%d]: unknown keys %s (known: %s)" % (index, ", ".join(unknown), ", ".join(DOMAIN_KEYS)))
    subnet = "prefix" in spec or "prefix6" in spec
    if subnet and "cidrs" in spec:
        raise WaveError("domains[%d]: prefix and cidrs are two kinds of domain; give one" % index)
    kind = "cidrs" if "cidrs" in spec else "subnet" if subnet else "var"
    name = spec.get("name")
    var = spec.get("var", name if kind == "var" else ADDRESS_VAR)
    if kind == "var" and name is None:
        name = var
    for key, value in (("name", name), ("var", var)):
        if not isinstance(value, str) or not value.strip():
            raise WaveError("domains[%d]: a %s domain needs a %s (a non-empty string)" % (index, kind, key))
    required = spec.get("required", True)
    if not isinstance(required, bool):
        raise WaveError("domain %s: required %r is not true or false" % (name, required))
    out = {"name": name, "kind": kind, "var": var, "required": required}
    if kind != "var" and not HAS_NETADDR:
        raise WaveError("domain %s matches addresses by CIDR, which needs the Python package netaddr on "
                        "the controller (pip install netaddr)" % name)
    if kind == "subnet":
        out["prefix"] = _prefix(spec.get("prefix"), 32, name, "prefix")
        out["prefix6"] = _prefix(spec.get("prefix6"), 128, name, "prefix6")
    elif kind == "cidrs":
        zones = spec["cidrs"]
        if not isinstance(zones, dict) or not zones:
            raise WaveError("domain %s: cidrs must be a dict {zone: cidr or [cidr, ...]}" % name)
        out["cidrs"] = {}
        for zone in sorted(zones, key=str):
            nets = zones[zone] if isinstance(zones[zone], list) else [zones[zone]]
            if not nets:
                raise WaveError("domain %s, zone %s: no CIDR" % (name, zone))
            out["cidrs"][str(zone)] = sorted(set(str(_network(n, name, zone)) for n in nets))
    return out


def _policy(policy):
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise WaveError("the rollout policy must be a dict, got %s" % type(policy).__name__)
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise WaveError("unknown rollout policy keys %s (known: %s)" % (", ".join(unknown), ", ".join(POLICY_KEYS)))
    out = {"canary": _amount(policy.get("canary", DEFAULT_CANARY), "canary", zero=True),
           "waves": None, "growth": None, "max_wave": None, "max_waves": None}
    if policy.get("waves") is not None and policy.get("growth") is not None:
        raise WaveError("set either waves (a list of sizes) or growth (a factor), not both")
    if policy.get("waves") is not None:
        waves = policy["waves"]
        if not isinstance(waves, list) or not waves:
            raise WaveError("waves must be a non-empty list of counts or percentages, as serial takes them")
        out["waves"] = [_amount(w, "waves[%d]" % i) for i, w in enumerate(waves)]
    else:
        out["growth"] = _factor(policy.get("growth", DEFAULT_GROWTH))
        if out["canary"] == ("n", 0):
            raise WaveError("canary 0 with growth: growth multiplies the canary; give a canary or a waves list")
    if policy.get("max_wave") is not None:
        out["max_wave"] = _amount(policy["max_wave"], "max_wave")
    if policy.get("max_waves") is not None:
        out["max_waves"] = _amount(policy["max_waves"], "max_waves")
        if out["max_waves"][0] != "n":
            raise WaveError("max_waves %r: use a count" % (policy["max_waves"],))
    out["domains"] = _domains(policy.get("domains"), policy.get("max_per_domain"))
    return out


def _domains(specs, limits):
    if specs is None:
        if isinstance(limits, dict):
            specs = sorted(limits, key=str)
        elif limits is None:
            specs = []
        else:
            raise WaveError("max_per_domain %r without domains: list the domains, or give {domain: K}" % (limits,))
    if not isinstance(specs, list):
        raise WaveError("domains must be a list of host variable names or dicts")
    domains = []
    for i, spec in enumerate(specs):
        d = _domain(spec, i)
        if any(o["name"] == d["name"] for o in domains):
            raise WaveError("domain %s is listed twice" % d["name"])
        domains.append(d)
    if domains and limits is None:
        raise WaveError("domains %s need a limit: set max_per_domain (K, or {domain: K})"
                        % ", ".join(d["name"] for d in domains))
    names = [d["name"] for d in domains]
    if isinstance(limits, dict):
        unknown = sorted(set(limits) - set(names), key=str)
        if unknown:
            raise WaveError("max_per_domain names unknown domains %s (domains: %s)"
                            % (", ".join(str(u) for u in unknown), ", ".join(names)))
        for d in domains:
            if d["name"] not in limits:
                raise WaveError("domain %s has no limit in max_per_domain" % d["name"])
            d["limit"] = _amount(limits[d["name"]], "max_per_domain.%s" % d["name"])
    else:
        for d in domains:
            d["limit"] = _amount(limits, "max_per_domain")
    return domains


def needed_vars(policy):
    """The host variables a policy's domains read (for a caller that fetches them)."""
    return sorted(set(d["var"] for d in _policy(policy)["domains"]))


class _Zones(object):
    """Longest-prefix match of an address against a domain's named networks, by dict lookups."""

    def __init__(self, domain):
        self.by_len = {4: {}, 6: {}}
        owner = {}
        for zone, cidrs in domain["cidrs"].items():
            for text in cidrs:
                net = netaddr.IPNetwork(text)
                key = (net.version, net.prefixlen, int(net.network))
                if key in owner and owner[key] != zone:
                    raise WaveError("domain %s: %s is in zones %s and %s" % (domain["name"], text, owner[key], zone))
                owner[key] = zone
                self.by_len[net.version].setdefault(net.prefixlen, {})[int(net.network)] = zone
        self.lens = dict((v, sorted(t, reverse=True)) for v, t in self.by_len.items())

    def zone(self, version, value):
        bits = _BITS[version]
        for plen in self.lens[version]:
            mask = ((1 << plen) - 1) << (bits - plen)
            zone = self.by_len[version][plen].get(value & mask)
            if zone is not None:
                return zone
        return None


def _address(text, cache):
    """'10.0.1.7' -> (4, int), or None when it is not an address."""
    if not isinstance(text, str):
        return None
    addr = cache.get(text, False)
    if addr is False:
        if _QUAD.fullmatch(text):
            # a plain dotted quad reads the same here as in netaddr, several times faster
            a, b, c, d = text.split(".")
            addr = (4, (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d))
        else:
            try:
                ip = netaddr.IPAddress(text)
                addr = (ip.version, int(ip))
            except (netaddr.AddrFormatError, ValueError, TypeError):
                addr = None
        cache[text] = addr
    return addr


def _subnet_name(version, value, plen, cache):
    bits = _BITS[version]
    net = value & (((1 << plen) - 1) << (bits - plen))
    key = (version, net, plen)
    name = cache.get(key)
    if name is None:
        name = cache[key] = "%s/%d" % (netaddr.IPAddress(net, version), plen)
    return name


def _var_values(var, raw):
    """A host variable's value -> (values, shown, problem, malformed)."""
    if raw.__class__ is str and raw and not raw.isspace():
        return [raw], raw, None, False
    values = set()
    for v in (raw if isinstance(raw, list) else [raw]):
        if isinstance(v, bool) or (v is not None and not isinstance(v, (str, int, float))):
            return [], None, "%s=%r, but a domain value is a string or a number, or a list of them" % (var, raw), True
        if v is not None and str(v).strip():
            values.add(str(v))
    if not values:
        return [], None, "an empty %r" % var, False
    values = sorted(values)
    return values, values if isinstance(raw, list) else values[0], None, False


def _resolver(d, cache):
    """One domain -> f(host name, host vars) -> (values, shown, problem, malformed). A problem that
    is not malformed is an absence: fine where the domain is not required."""
    var, kind = d["var"], d["kind"]
    if kind == "var":
        def values(name, hvars):
            if var not in hvars:
                return [], None, "no variable %r" % var, False
            return _var_values(var, hvars[var])
        return values
    zones = _Zones(d) if kind == "cidrs" else None
    # An IPv4 value depends only on the address's first ceil(prefix / 8) octets (the domain's
    # prefix, or its longest network): hosts that share them share the answer, found once.
    if kind == "subnet":
        longest = d["prefix"]
    else:
        longest = zones.lens[4][0] if zones.lens[4] else None
    octets = -(-longest // 8) if longest else 0
    by_octets = {}

    def address_values(name, hvars):
        if var in hvars:
            text = hvars[var]
        elif var == ADDRESS_VAR:
            text = name  # as Ansible connects
        else:
            return [], None, "no variable %r (an address)" % var, False
        key = None
        if 0 < octets < 4 and text.__class__ is str and _QUAD.fullmatch(text):
            key = text.rsplit(".", 4 - octets)[0]
            found = by_octets.get(key)
            if found is not None:
                return found
        found = _address_values(text, hvars)
        if key is not None and found[0]:
            by_octets[key] = found
        return found

    def _address_values(text, hvars):
        addr = _address(text, cache)
        if addr is None:
            if var in hvars:
                return [], None, "%s=%r is not an IP address" % (var, text), True
            return [], None, "no ansible_host, and the name is not an IP address", False
        version, value = addr
        if kind == "subnet":
            plen = d["prefix"] if version == 4 else d["prefix6"]
            if plen is None:
                return [], None, "the IPv%d address %s, and domain %s has no %s" % (
                    version, text, d["name"], "prefix" if version == 4 else "prefix6"), False
            value = _subnet_name(version, value, plen, cache)
        else:
            value = zones.zone(version, value)
            if value is None:
                return [], None, "an address in none of the networks of domain %s" % d["name"], False
        return [value], value, None, False
    return address_values


def _hosts(hosts):
    if not isinstance(hosts, list):
        raise WaveError("hosts must be a list, got %s" % type(hosts).__name__)
    seen = set()
    for h in hosts:
        name = h.get("name") if isinstance(h, dict) else None
        if not isinstance(name, str) or not name:
            raise WaveError("each host needs a name (a non-empty string), got %r" % (h,))
        if name in seen:
            raise WaveError("host %s is listed twice" % name)
        seen.add(name)
        if not isinstance(h.get("vars", {}), dict):
            raise WaveError("host %s: vars must be a dict" % name)


def _targets(pol, total):
    """Wave sizes before the domain limits: the canary, then waves or growth capped by max_wave."""
    canary = _resolve(pol["canary"], total)
    cap = _resolve(pol["max_wave"], total) if pol["max_wave"] else None
    sizes = [_resolve(w, total) for w in pol["waves"] or []]

    def gen():
        if canary:
            yield canary
        i, size = 0, canary
        while True:
            if sizes:
                size = sizes[min(i, len(sizes) - 1)]
                i += 1
            else:
                # round first: 10 x 1.1 is 11.000000000000002 in floating point
                size = min(int(math.ceil(round(size * pol["growth"], 9))), max(total, 1))
            yield min(size, cap) if cap else size
    return gen()


def plan_waves(hosts, policy=None):
    """Hosts in inventory order + policy -> the plan (see the module's docstring). Raises WaveError."""
    with no_cyclic_gc():
        return _plan_waves(hosts, policy)


def _plan_waves(hosts, policy):
    pol = _policy(policy)
    _hosts(hosts)
    domains = pol["domains"]
    cache = {}  # addresses and network names, shared by the domains
    resolvers = list(enumerate(_resolver(d, cache) for d in domains))
    names = [h["name"] for h in hosts]
    n = len(names)

    # every (domain, value) pair gets an id; a host is the tuple of its pair ids
    pair_dom, pair_val = [], []
    host_pairs, host_domains, problems = [], [], {}
    free = [0] * len(domains)  # hosts a domain does not limit
    # per domain: its index, name, resolver, {value: pair id}, and the variable a plain-string
    # value is read from directly (var domains: the common case, without the resolver's call)
    plan = [(di, domains[di]["name"], resolve, {}, domains[di]["var"] if domains[di]["kind"] == "var" else None)
            for di, resolve in resolvers]
    for h in hosts:
        name = h["name"]
        hvars = h.get("vars") or {}
        pairs, shown = [], {}
        for di, dname, resolve, vmap, var in plan:
            if var is not None:
                raw = hvars.get(var)
                if raw.__class__ is str and raw and not raw.isspace():
                    pid = vmap.get(raw)
                    if pid is None:
                        pid = vmap[raw] = len(pair_dom)
                        pair_dom.append(di)
                        pair_val.append(raw)
                    pairs.append(pid)
                    shown[dname] = raw
                    continue
            values, show, problem, malformed = resolve(name, hvars)
            if problem and (malformed or domains[di]["required"]):
                why = problem if malformed else "%s (domain %s is required)" % (problem, dname)
                problems.setdefault(why, []).append(name)
            if not values:
                free[di] += 1
                continue
            shown[dname] = show
            for v in values:
                pid = vmap.get(v)
                if pid is None:
                    pid = vmap[v] = len(pair_dom)
                    pair_dom.append(di)
                    pair_val.append(v)
                pairs.append(pid)
        if len(pairs) > 1:
            pairs.sort()
        host_pairs.append(tuple(pairs))
        host_domains.append(shown)
    if problems:
        whys = list(problems)  # in inventory order of their first host
        more = "; and %d more problems" % (len(whys) - NAMED) if len(whys) > NAMED else ""
        raise WaveError("cannot plan: %s%s" % ("; ".join("%s: %s" % (_members(problems[w], 3), w)
                                                         for w in whys[:NAMED]), more))

    count = [0] * len(pair_dom)
    for pairs in host_pairs:
        for p in pairs:
            count[p] += 1
    limit = [_resolve(domains[pair_dom[p]]["limit"], count[p]) for p in range(len(count))]
    bound, bound_pair = (1 if n else 0), None
    for p in range(len(count)):
        need = -(-count[p] // limit[p])
        if need > bound:
            bound, bound_pair = need, p

    most = pol["max_waves"][1] if pol["max_waves"] else None
    waves = _schedule(n, host_pairs, pair_dom, count, limit, domains, free, _targets(pol, n), most)
    if waves is None:
        why = ("; the domain limits alone need %d: %s %s has %d hosts, at most %d per wave"
               % (bound, domains[pair_dom[bound_pair]]["name"], pair_val[bound_pair], count[bound_pair],
                  limit[bound_pair]) if bound_pair is not None else "")
        raise WaveError("this plan needs more than max_waves=%s waves%s" % (most, why))
    return _output(names, host_domains, host_pairs, waves, pol, domains, pair_dom, pair_val, count, limit,
                   free, bound, bound_pair)


def _schedule(n, host_pairs, pair_dom, count, limit, domains, free, targets, most):
    """Greedy waves -> [(target, [host index, ...], [blocking domain index, ...])], or None when
    more than ``most`` waves would be needed."""
    # hosts with the same pairs are interchangeable: schedule such buckets, not hosts
    bucket_of, buckets, bpairs = {}, [], []
    for i, pairs in enumerate(host_pairs):
        b = bucket_of.get(pairs)
        if b is None:
            b = bucket_of[pairs] = len(buckets)
            buckets.append([])
            bpairs.append(pairs)
        buckets[b].append(i)
    ndom = len(domains)
    bfree = [[di for di in range(ndom) if not any(pair_dom[p] == di for p in ps)] for ps in bpairs]
    rem = list(count)
    nxt = [0] * len(buckets)
    live_values = [0] * ndom
    for p in range(len(count)):
        live_values[pair_dom[p]] += 1
    free = list(free)

    def pressure(b):
        # waves the bucket's busiest value still needs at least
        return max([-(-rem[p] // limit[p]) for p in bpairs[b]] or [0])

    heap = [(-pressure(b), buckets[b][0], b) for b in range(len(buckets))]
    heapq.heapify(heap)
    waves, left = [], n
    while left:
        if most is not None and len(waves) >= most:
            return None
        target = min(next(targets), left)
        taken, aside, used = [], [], {}
        opened = list(live_values)
        while len(taken) < target and heap:
            neg, pos, b = heapq.heappop(heap)
            cur = pressure(b)
            if cur != -neg:
                heapq.heappush(heap, (-cur, pos, b))
                continue
            room = target - len(taken)
            for p in bpairs[b]:
                room = min(room, limit[p] - used.get(p, 0))
            if room <= 0:
                aside.append((neg, pos, b))
                continue
            hs = buckets[b]
            k = nxt[b]
            room = min(room, len(hs) - k)
            taken.extend(hs[k:k + room])
            nxt[b] = k + room
            left -= room
            for di in bfree[b]:
                free[di] -= room
            stop = False
            for p in bpairs[b]:
                before = used.get(p, 0)
                was_open = before < limit[p] and rem[p] > 0
                used[p] = before + room
                rem[p] -= room
                di = pair_dom[p]
                if rem[p] == 0:
                    live_values[di] -= 1
                if was_open and (used[p] >= limit[p] or rem[p] == 0):
                    opened[di] -= 1
                    # every host left has a value of this domain, each one full: nothing else fits
                    if opened[di] == 0 and free[di] == 0 and left:
                        stop = True
            if nxt[b] < len(hs):
                aside.append((-pressure(b), hs[nxt[b]], b))
            if stop:
                break
        for entry in aside:
            heapq.heappush(heap, entry)
        # cut short: by the domains with a full value whose other hosts had to wait
        blocked = sorted(set(pair_dom[p] for p, u in used.items() if u >= limit[p] and rem[p])) if len(taken) < target else []
        waves.append((target, sorted(taken), blocked))
    return waves


def _output(names, host_domains, host_pairs, waves, pol, domains, pair_dom, pair_val, count, limit, free,
            bound, bound_pair):
    rows, out_waves = [], []
    for w, (target, members, blocked) in enumerate(waves, 1):
        counts = dict((d["name"], {}) for d in domains)
        for i in members:
            rows.append({"host": names[i], "wave": w, "domains": host_domains[i]})
            for p in host_pairs[i]:
                c = counts[domains[pair_dom[p]]["name"]]
                c[pair_val[p]] = c.get(pair_val[p], 0) + 1
        out_waves.append({"wave": w, "target": target, "size": len(members),
                          "hosts": [names[i] for i in members], "counts": counts,
                          "limited_by": [domains[di]["name"] for di in blocked]})
    per_value = dict((d["name"], {}) for d in domains)
    for p in range(len(count)):
        per_value[domains[pair_dom[p]]["name"]][pair_val[p]] = {"hosts": count[p], "limit": limit[p]}
    domain_info = dict((d["name"], {"kind": d["kind"], "var": d["var"], "required": d["required"],
                                    "max_per_domain": _show(d["limit"]), "values": per_value[d["name"]],
                                    "unlimited_hosts": free[di]}) for di, d in enumerate(domains))
    policy = {"canary": _show(pol["canary"]), "growth": pol["growth"],
              "waves": [_show(w) for w in pol["waves"]] if pol["waves"] else None,
              "max_wave": _show(pol["max_wave"]) if pol["max_wave"] else None,
              "max_waves": _show(pol["max_waves"]) if pol["max_waves"] else None,
              "domains": [dict((k, v) for k, v in d.items() if k != "limit") for d in domains],
              "max_per_domain": dict((d["name"], _show(d["limit"])) for d in domains)}
    bound_by = None
    if bound_pair is not None:
        bound_by = {"domain": domains[pair_dom[bound_pair]]["name"], "value": pair_val[bound_pair],
                    "hosts": count[bound_pair], "limit": limit[bound_pair]}
    summary = {"hosts": len(names), "waves": len(out_waves),
               "canary": out_waves[0]["hosts"] if out_waves and pol["canary"] != ("n", 0) else [],
               "largest_wave": max([w["size"] for w in out_waves] or [0]),
               "min_waves": bound, "min_waves_by": bound_by}
    return {"summary": summary, "policy": policy, "domains": domain_info, "waves": out_waves, "hosts": rows,
            "order": [r["host"] for r in rows], "sizes": [w["size"] for w in out_waves]}


def _cell(plan, name, wave):
    """'2/3 in 5': the fullest value has 2 hosts of the 3 it may have; the wave touches 5 values."""
    counts = wave["counts"][name]
    if not counts:
        return "-"
    values = plan["domains"][name]["values"]
    value = max(sorted(counts), key=lambda v: counts[v] / values[v]["limit"])
    return "%d/%d in %d" % (counts[value], values[value]["limit"], len(counts))


def _members(hosts, shown=4):
    more = " and %d more" % (len(hosts) - shown) if len(hosts) > shown else ""
    return ", ".join(hosts[:shown]) + more


def render_table(plan):
    names = list(plan["policy"]["max_per_domain"])
    head = ["wave", "size", "target"] + ["%s<=%s" % (d, plan["policy"]["max_per_domain"][d]) for d in names] + ["limited by", "hosts"]
    cells = [head]
    for w in plan["waves"]:
        cells.append([str(w["wave"]), str(w["size"]), str(w["target"])] + [_cell(plan, d, w) for d in names]
                     + [", ".join(w["limited_by"]) or "-", _members(w["hosts"])])
    widths = [max(len(row[i]) for row in cells) for i in range(len(head) - 1)]
    right = (1, 2)
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(wd) if i in right else c.ljust(wd)
                               for i, (c, wd) in enumerate(zip(row[:-1], widths))) + "  " + row[-1])
    s = plan["summary"]
    line = "%d hosts in %d waves" % (s["hosts"], s["waves"])
    if s["min_waves_by"]:
        b = s["min_waves_by"]
        line += " (the domain limits need at least %d: %s %s has %d hosts, at most %d per wave)" % (
            s["min_waves"], b["domain"], b["value"], b["hosts"], b["limit"])
    if s["canary"]:
        line += "; canary %s" % _members(s["canary"])
    lines.append(line)
    return "\n".join(lines) + "\n"


def render_csv(plan):
    names = list(plan["policy"]["max_per_domain"])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["host", "wave"] + names)
    for r in plan["hosts"]:
        w.writerow([r["host"], r["wave"]] + [" ".join(v) if isinstance(v, list) else v
                                             for v in (r["domains"].get(d, "") for d in names)])
    return out.getvalue()


def render_limits(plan):
    """{wave-001.limit: its hosts one per line, ...} in plan order, as ``--limit @FILE`` reads them
    (an AWX job's limit, a job slice, an ansible-runner run)."""
    width = max(3, len(str(len(plan["waves"]))))
    return dict(("wave-%0*d.limit" % (width, w["wave"]), "".join(h + "\n" for h in w["hosts"]))
                for w in plan["waves"])


def render_json(plan):
    return report_json(dict((k, v) for k, v in plan.items() if k != "order"))
