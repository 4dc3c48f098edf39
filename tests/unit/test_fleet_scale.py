"""Planning without contacting hosts (playbooks/sizing.yml from a facts file or Ansible's fact
cache), each host's row handed back by name, one limit file per wave (playbooks/plan.yml), the
NUMA check and the report_files module. The playbooks run on hosts with a local connection."""

import json
import os
import sys

import pytest

import conftest
from test_waves_playbook import PLAYBOOKS, run

sys.path.insert(0, os.path.join(conftest.ROOT, "tests", "bench"))
import fleet_inventory  # noqa: E402

from ansible_collections.guestmemfs.liveupdate.plugins.filter.carveout import _inputs  # noqa: E402
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing, waves  # noqa: E402
from ansible_collections.guestmemfs.liveupdate.plugins.modules import report_files  # noqa: E402

GiB = 1 << 30


def small_fleet(n=24):
    """The benchmark's generated fleet, with a local connection: 4 sizing policies by group, one host
    too small for its policy on two NUMA nodes (hv000021, in the pmem_vms group)."""
    inv, facts = fleet_inventory.fleet(n)
    facts["hv000021"] = fleet_inventory.host_facts(__import__("random").Random(5), 2, small=True)
    inv["hypervisors"]["vars"].update(ansible_connection="local",
                                      ansible_python_interpreter="{{ ansible_playbook_python }}")
    return inv, facts


def expected_rows(inv, facts):
    """The plan the collection's planner gives for the same facts and policies, in inventory order."""
    hosts = []
    for group in inv["hypervisors"]["children"].values():
        for name in group["hosts"]:
            hosts.append(_inputs(name, facts[name]["guestmemfs"], group["vars"]["guestmemfs_sizing"]))
    order = dict((h, i) for i, h in enumerate(sorted(facts)))
    return sizing.plan_fleet(sorted(hosts, key=lambda h: order[h["name"]]))


def sizing_json(tmp_path):
    return json.loads((tmp_path / "report" / "sizing.json").read_text())["hosts"]


def sizing_from_cache(tmp_path, inv, cache):
    """sizing.yml planned from Ansible's jsonfile fact cache in ``cache``."""
    os.environ.update(ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(cache),
                      ANSIBLE_CACHE_PLUGIN_TIMEOUT="0")
    try:
        return run(tmp_path, inv, os.path.join(PLAYBOOKS, "sizing.yml"), "-e", "guestmemfs_facts_from=cache")
    finally:
        for k in ("ANSIBLE_CACHE_PLUGIN", "ANSIBLE_CACHE_PLUGIN_CONNECTION", "ANSIBLE_CACHE_PLUGIN_TIMEOUT"):
            os.environ.pop(k)


@pytest.mark.min_core
def test_sizing_from_a_facts_file_and_from_the_fact_cache(tmp_path):
    inv, facts = small_fleet()
    expected = expected_rows(inv, facts)
    refused = [r["host"] for r in expected if not r["ok"]]
    assert refused == ["hv000021"] and "NUMA node" in expected[21]["reason"]
    # a facts file: {host: ansible_facts}
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "sizing.yml"), "-e", "guestmemfs_facts_from=%s" % (tmp_path / "facts.json"))
    assert out.returncode == 2, out.stdout + out.stderr  # the refused host fails, named; no host was contacted
    assert "skipping: no hosts matched" in out.stdout  # the facts play
    assert "hv000021: no carve-out: %s" % expected[21]["reason"] in out.stdout
    from_file = sizing_json(tmp_path)
    assert [dict(r, numa=r.get("numa")) for r in from_file] == json.loads(json.dumps(expected))
    # Ansible's jsonfile fact cache, written by Ansible's own cache plugin
    os.remove(str(tmp_path / "report" / "sizing.json"))
    fleet_inventory.write_cache(facts, str(tmp_path / "cache"))
    out = sizing_from_cache(tmp_path, inv, tmp_path / "cache")
    assert out.returncode == 2, out.stdout + out.stderr
    assert sizing_json(tmp_path) == from_file


@pytest.mark.min_core
def test_each_host_records_its_own_row_by_name(tmp_path):
    inv, facts = small_fleet(8)
    # a policy templated per host: each host's own size
    inv["hypervisors"]["vars"]["guestmemfs_sizing"] = {"mode": "absolute", "size": "{{ carve_gib }}G", "reserve": "8G"}
    for group in inv["hypervisors"]["children"].values():
        del group["vars"]["guestmemfs_sizing"]
        for i, (name, hvars) in enumerate(sorted(group["hosts"].items())):
            hvars["carve_gib"] = 8 + int(name[2:])
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "sizing.yml"), "-e", "guestmemfs_facts_from=%s" % (tmp_path / "facts.json"),
              "-e", "guestmemfs_sizing_record=true")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = dict((r["host"], r) for r in sizing_json(tmp_path))
    assert len(rows) == 8
    for name, row in rows.items():
        assert row["size"] == "%dG" % (8 + int(name[2:]))
        assert "%s: %s (%s)" % (name, row["size"], " ".join(row["cmdline_args"])) in out.stdout


@pytest.mark.min_core
def test_sizing_refuses_a_host_whose_backend_its_policy_does_not_plan(tmp_path):
    inv, facts = small_fleet(4)
    group = inv["hypervisors"]["children"]["guestmemfs_vms"]  # guestmemfs_sizing plans guestmemfs
    name = sorted(group["hosts"])[0]
    group["hosts"][name]["guestmemfs_backend"] = "luo"
    group["hosts"][sorted(group["hosts"])[1]]["guestmemfs_backend"] = "guestmemfs"  # agrees
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "sizing.yml"), "-e", "guestmemfs_facts_from=%s" % (tmp_path / "facts.json"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert ("%s: no carve-out: guestmemfs_backend is luo but guestmemfs_sizing plans the guestmemfs backend: "
            "set backend: luo" % name) in out.stdout
    rows = sizing_json(tmp_path)
    assert [(r["host"], r["ok"]) for r in rows] == [(h, h != name) for h in sorted(group["hosts"])]
    assert rows[0]["cmdline_args"] == []


def plan(tmp_path, inv):
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "plan.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    waves = json.loads((tmp_path / "report" / "waves.json").read_text())["waves"]
    limits = sorted(os.listdir(str(tmp_path / "report" / "waves")))
    return waves, limits


def test_plan_writes_one_limit_file_per_wave_and_removes_stale_ones(tmp_path):
    inv, _facts = small_fleet(60)
    waves, limits = plan(tmp_path, inv)
    assert len(waves) > 3
    assert limits == ["wave-%03d.limit" % w["wave"] for w in waves]
    for w in waves:
        assert (tmp_path / "report" / "waves" / ("wave-%03d.limit" % w["wave"])).read_text().split() == w["hosts"]
    # a policy with fewer, larger waves: the earlier plan's extra files go
    inv["hypervisors"]["vars"]["guestmemfs_rollout"] = {"canary": 1, "waves": ["50%"]}
    fewer, limits = plan(tmp_path, inv)
    assert len(fewer) < len(waves) and limits == ["wave-%03d.limit" % w["wave"] for w in fewer]


def numa_host(policy, nodes=(128 * GiB, 128 * GiB)):
    mem = sum(nodes)
    return {"name": "h", "memory_bytes": mem, "numa_node_bytes": list(nodes), "numa_nodes": len(nodes),
            "firmware_ram_ranges": [[0, 0x9FBFF], [0x100000, 0x7FFDBFFF], [4 * GiB, 4 * GiB + mem - 2 * GiB - 1]],
            "policy": policy}


@pytest.mark.min_core
def test_numa_a_vm_larger_than_a_node_is_refused_unless_spread():
    vms = [{"name": "big", "memory": "160G"}, {"name": "small", "memory": "8G"}]
    row = sizing.plan_host(numa_host({"backend": "luo", "mode": "vms", "vms": vms}))
    assert not row["ok"] and "VM big needs 160.0 GiB" in row["reason"] and "NUMA node's 128.0 GiB" in row["reason"]
    row = sizing.plan_host(numa_host({"backend": "luo", "mode": "vms", "vms": vms, "numa": "spread"}))
    assert row["ok"] and row["numa"].startswith("spread: VM big needs 160.0 GiB")
    assert "(NUMA spread: VM big" in sizing.render_table([row])
    # on one node of the same memory nothing spans nodes
    row = sizing.plan_host(numa_host({"backend": "luo", "mode": "vms", "vms": vms}, nodes=(256 * GiB,)))
    assert row["ok"] and row["numa"] is None


@pytest.mark.min_core
def test_numa_a_contiguous_carveout_must_fit_in_a_node():
    for backend in ("pmem", "guestmemfs"):
        vms = [{"name": "v%d" % i, "memory": "1G"} for i in range(150)]
        row = sizing.plan_host(numa_host({"backend": backend, "mode": "vms", "vms": vms, "reserve": "8G"}))
        assert not row["ok"] and "the %s carve-out of" % backend in row["reason"], row
    # luo carves nothing out: the same memory in memfds may spread over the nodes
    row = sizing.plan_host(numa_host({"backend": "luo", "mode": "vms", "vms": vms, "reserve": "8G"}))
    assert row["ok"] and row["numa"] is None
    # a carve-out within a node is fine
    row = sizing.plan_host(numa_host({"backend": "pmem", "mode": "absolute", "size": "100G", "reserve": "8G"}))
    assert row["ok"] and row["numa"] is None
    with pytest.raises(AssertionError):
        assert sizing.plan_host(numa_host({"mode": "absolute", "size": "8G", "numa": "maybe"}))["ok"]


@pytest.mark.min_core
def test_report_files_writes_changed_files_and_removes_stale_ones(tmp_path, capsys):
    d = tmp_path / "waves"
    code, res = conftest.run_main(capsys, report_files, {"path": str(d), "files": {"wave-1.limit": "a\n", "wave-2.limit": "b\n"},
                                                         "exclusive": "wave-*.limit"})
    assert code == 0 and res["changed"] and res["written"] == ["wave-1.limit", "wave-2.limit"]
    (d / "notes.txt").write_text("mine")
    code, res = conftest.run_main(capsys, report_files, {"path": str(d), "files": {"wave-1.limit": "a\n"},
                                                         "exclusive": "wave-*.limit"})
    assert res["changed"] and res["written"] == [] and res["removed"] == ["wave-2.limit"]
    assert sorted(os.listdir(str(d))) == ["notes.txt", "wave-1.limit"]
    code, res = conftest.run_main(capsys, report_files, {"path": str(d), "files": {"wave-1.limit": "a\n"},
                                                         "exclusive": "wave-*.limit"})
    assert not res["changed"]
    code, res = conftest.run_main(capsys, report_files, {"path": str(d), "files": {"../x": "a"}})
    assert code == 1 and "plain names" in res["msg"]


@pytest.mark.min_core
def test_report_files_writes_a_report_given_back_as_data_as_its_json(tmp_path, capsys):
    """ansible-core 2.17 and 2.18 turn a template's result that looks like JSON (the plan's waves.json)
    back into data: the file is still that JSON text, not Python's repr of the data."""
    plan = {"waves": [{"wave": 1, "hosts": ["h1"], "limited_by": [], "ok": True, "share": 0.5}], "policy": None}
    text = waves.render_json(plan)
    code, res = conftest.run_main(capsys, report_files, {"path": str(tmp_path), "files": {"waves.json": json.loads(text)}})
    assert code == 0 and res["written"] == ["waves.json"]
    assert (tmp_path / "waves.json").read_text() == text
    code, res = conftest.run_main(capsys, report_files, {"path": str(tmp_path), "files": {"waves.json": text}})
    assert res["written"] == [] and not res["changed"]


@pytest.mark.min_core
def test_the_memory_backend_role_leaves_a_host_without_vms_as_it_is(tmp_path):
    inv = {"hypervisors": {"hosts": {"empty": {"guestmemfs_carveout": {"ok": True, "size_bytes": 0, "cmdline_args": []}},
                                     "unplanned": {}},
                           "vars": {"ansible_connection": "local", "guestmemfs_vms": [],
                                    "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}
    (tmp_path / "role.yml").write_text(
        "- hosts: hypervisors\n  gather_facts: false\n  roles:\n    - guestmemfs.liveupdate.memory_backend\n")
    out = run(tmp_path, inv, str(tmp_path / "role.yml"), "--check")
    assert out.returncode == 2, out.stdout + out.stderr
    recap = dict((line.split()[0], line.split()[2:]) for line in out.stdout.split("PLAY RECAP")[1].strip().splitlines())
    # the spec, the values check, then it ended
    assert recap["empty"][:4] == ["ok=3", "changed=0", "unreachable=0", "failed=0"]
    refuse = out.stdout.split("TASK [guestmemfs.liveupdate.memory_backend : Refuse a host without a carve-out plan]")[1]
    refuse = refuse.split("PLAY RECAP")[0]
    assert "[unplanned]" in refuse and "[empty]" not in refuse  # the refusal ran for the other host only
    assert "unplanned has no carve-out boot arguments: run playbooks/sizing.yml first" in out.stdout


@pytest.mark.min_core
def test_plan_without_the_vm_check_visits_no_host(tmp_path):
    """guestmemfs_plan_check_vms=false (as liveupdate.yml and a plan made without contacting the hosts
    set it) leaves every host out of the preservability play: no task, not even a skipped one, per host
    (each is a worker process: minutes at 100,000 hosts). Nothing answers on the hosts' port."""
    inv, _facts = small_fleet(12)
    inv["hypervisors"]["vars"].update(ansible_connection="ssh", ansible_port=1, ansible_ssh_timeout=1)
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "plan.yml"), "-e", "guestmemfs_plan_check_vms=false")
    assert out.returncode == 0, out.stdout + out.stderr
    play = out.stdout.split("PLAY [Check which VMs the live update can carry]")[1].split("PLAY RECAP")[0]
    assert "skipping: no hosts matched" in play, play
    assert "hv0000" not in play, play
    assert len(json.loads((tmp_path / "report" / "waves.json").read_text())["waves"]) > 1


@pytest.mark.min_core
def test_a_hosts_variables_without_its_facts_list_no_plugins(tmp_path, monkeypatch):
    """FleetVars reads a host's variables as Ansible assembles them, without its facts, and without
    Ansible's cleaning of the (absent) facts, which lists every connection plugin on disk for each
    host: half the time of a host's variables at 100,000 hosts."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import connection_loader
    from ansible.vars.hostvars import HostVars
    from ansible.vars.manager import VariableManager
    from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import FleetVars

    inv, facts = small_fleet(6)
    (tmp_path / "inventory.yml").write_text(json.dumps(inv))
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(tmp_path / "inventory.yml")])
    vm = VariableManager(loader=loader, inventory=inventory)
    for name, f in facts.items():
        vm.set_host_facts(name, f)
    hostvars = HostVars(inventory=inventory, variable_manager=vm, loader=loader)
    name = "hv000003"
    full = hostvars.raw_get(name)
    assert full["ansible_facts"]["guestmemfs"] == facts[name]["guestmemfs"]
    listed = []
    real_all = connection_loader.all
    monkeypatch.setattr(connection_loader, "all", lambda *a, **kw: listed.append(1) or real_all(*a, **kw))
    fleet = FleetVars(hostvars, ["guestmemfs_sizing", "rack"])
    data = fleet.raw(name)
    assert listed == []
    assert dict((k, v) for k, v in data.items() if k != "ansible_facts") == \
        dict((k, v) for k, v in full.items() if k != "ansible_facts" and k not in facts[name])
    assert not data.get("ansible_facts")
    assert fleet.facts(name)["guestmemfs"] == facts[name]["guestmemfs"]
    assert fleet.get(name, data) == {"guestmemfs_sizing": fleet_inventory.SIZING["guestmemfs_vms"],
                                     "rack": "r0000"}
    hostvars.raw_get(name)  # Ansible's own reading is as it was
    assert listed


@pytest.mark.min_core
def test_the_no_facts_stand_in_answers_as_each_supported_ansible_cores_fact_cache():
    """While FleetVars reads a host's variables, the fact cache it puts in place answers both ways
    ansible-core reads it: get(host) raising KeyError (2.19 on) and get(host, default) (2.17, 2.18)."""
    from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils.fleet import _NoFacts

    with pytest.raises(KeyError):
        _NoFacts().get("h1")
    default = {}
    assert _NoFacts().get("h1", default) is default


@pytest.mark.min_core
def test_planning_from_the_fact_cache_leaves_it_as_it_was(tmp_path):
    """sizing.yml from the fact cache writes no host's entry: a task run once on the controller for a
    play over the hypervisors otherwise has Ansible store its (empty) facts into every host's entry,
    one file per host with the jsonfile cache (most of a 100,000-host plan's time)."""
    inv, facts = small_fleet(8)
    cache = tmp_path / "cache"
    fleet_inventory.write_cache(facts, str(cache))
    before = dict((p.name, (p.stat().st_mtime_ns, p.read_text())) for p in cache.iterdir())
    out = sizing_from_cache(tmp_path, inv, cache)
    assert out.returncode == 0, out.stdout + out.stderr
    after = dict((p.name, (p.stat().st_mtime_ns, p.read_text())) for p in cache.iterdir() if p.name in before)
    assert after == before
