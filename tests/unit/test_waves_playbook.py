"""playbooks/plan.yml and the batching of playbooks/liveupdate.yml's update play, run by
ansible-playbook on hosts with a local connection (nothing leaves this machine): the plan and its
reports, and that every Ansible batch is exactly one planned wave, in the planned order."""

import json
import os
import subprocess
import sys

import pytest
import yaml

import conftest

# Every test here also runs on the lowest ansible-core claimed (scripts/test).
pytestmark = pytest.mark.min_core

PLAYBOOKS = os.path.join(conftest.ROOT, "playbooks")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

# Racks of 2, 6 and 4 hosts: the plan starts with the largest rack, so its order is not the inventory's.
RACKS = {"h01": "a", "h02": "a", "h03": "b", "h04": "b", "h05": "b", "h06": "b", "h07": "b", "h08": "b",
         "h09": "c", "h10": "c", "h11": "c", "h12": "c"}
POLICY = {"canary": 1, "growth": 2, "domains": ["rack", {"name": "subnet", "prefix": 24}],
          "max_per_domain": {"rack": 1, "subnet": 2}}


def inventory(hosts=None, policy=None, **extra_groups):
    hosts = hosts or dict((h, {"rack": r, "ansible_host": "127.0.%d.%d" % (int(h[1:]) % 3, int(h[1:]))})
                          for h, r in RACKS.items())
    group_vars = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    if policy is not None:
        group_vars["guestmemfs_rollout"] = policy
    inv = {"hypervisors": {"hosts": hosts, "vars": group_vars}}
    inv.update(extra_groups)
    return inv


def batch_playbook(tmp_path):
    """plan.yml, then a play with the update play's own hosts, serial, order and pre_tasks (read
    from liveupdate.yml) whose only task records each batch."""
    with open(os.path.join(PLAYBOOKS, "liveupdate.yml")) as f:
        plays = yaml.safe_load(f)
    assert plays[0] == {"name": "Plan the rollout waves", "ansible.builtin.import_playbook": "plan.yml",
                        "vars": {"guestmemfs_plan_check_vms": False}}
    update = [p for p in plays if p.get("name") == "Live-update hypervisors in waves"][0]
    play = dict((k, update[k]) for k in ("hosts", "serial", "order", "pre_tasks"))
    play.update(name="Record the batches", gather_facts=False, tasks=[{
        "name": "Record this batch",
        "ansible.builtin.lineinfile": {"path": str(tmp_path / "batches.txt"), "line": "{{ ansible_play_batch | join(' ') }}",
                                       "create": True, "mode": "0644"},
        "run_once": True, "delegate_to": "localhost"}])
    path = tmp_path / "batches.yml"
    path.write_text(yaml.safe_dump([{"name": "Plan", "ansible.builtin.import_playbook": os.path.join(PLAYBOOKS, "plan.yml"),
                                     "vars": plays[0]["vars"]}, play], sort_keys=False))
    return str(path)


def run(tmp_path, inv, playbook, *args):
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=conftest._tree, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
               GUESTMEMFS_REPORT_DIR=str(tmp_path / "report"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="false")
    env.pop("ANSIBLE_CONFIG", None)
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.yml"), playbook] + list(args),
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300, check=False)


def batches(tmp_path):
    path = tmp_path / "batches.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_each_batch_is_one_planned_wave(tmp_path):
    out = run(tmp_path, inventory(policy=POLICY), batch_playbook(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    plan = json.loads((tmp_path / "report" / "waves.json").read_text())
    waves = [w["hosts"] for w in plan["waves"]]
    assert waves[0] == ["h03"]  # the canary comes from the largest rack
    assert [h for w in waves for h in w] != sorted(RACKS)
    assert batches(tmp_path) == waves
    table = (tmp_path / "report" / "waves.txt").read_text()
    assert table.splitlines()[0].split()[:5] == ["wave", "size", "target", "rack<=1", "subnet<=2"]
    assert "12 hosts in %d waves" % len(waves) in table and table.splitlines()[1] in out.stdout
    assert len((tmp_path / "report" / "waves.csv").read_text().splitlines()) == 13


def test_a_limit_plans_only_the_limited_hosts(tmp_path):
    out = run(tmp_path, inventory(policy=POLICY), batch_playbook(tmp_path), "--limit", "h03,h04,h05,h09,localhost")
    assert out.returncode == 0, out.stdout + out.stderr
    plan = json.loads((tmp_path / "report" / "waves.json").read_text())
    assert plan["summary"]["hosts"] == 4
    assert batches(tmp_path) == [w["hosts"] for w in plan["waves"]] == [["h03"], ["h04", "h09"], ["h05"]]


def test_no_policy_is_a_canary_then_doubling(tmp_path):
    out = run(tmp_path, inventory(), batch_playbook(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert batches(tmp_path) == [["h01"], ["h02", "h03"], ["h04", "h05", "h06", "h07"], ["h08", "h09", "h10", "h11", "h12"]]


def test_a_bad_plan_stops_before_any_update(tmp_path):
    hosts = dict((h, {"rack": r}) for h, r in RACKS.items())
    del hosts["h07"]["rack"]
    out = run(tmp_path, inventory(hosts, {"max_per_domain": {"rack": 1}}), batch_playbook(tmp_path))
    assert out.returncode != 0
    assert "rollout_waves: cannot plan: h07: no variable 'rack' (domain rack is required)" in out.stdout
    assert batches(tmp_path) == []


def test_hosts_that_disagree_on_the_policy_are_refused(tmp_path):
    inv = inventory(policy=POLICY, racks={"hosts": {"h05": {"guestmemfs_rollout": {"canary": 3}}}})
    out = run(tmp_path, inv, batch_playbook(tmp_path))
    assert out.returncode != 0
    assert "the hosts disagree on guestmemfs_rollout" in out.stdout and "h05: {\\\"canary\\\": 3}" in out.stdout
    assert batches(tmp_path) == []


def test_the_old_wave_variable_is_refused(tmp_path):
    out = run(tmp_path, inventory(), batch_playbook(tmp_path), "-e", '{"guestmemfs_waves": [1, "50%"]}')
    assert out.returncode != 0 and "guestmemfs_waves is replaced by guestmemfs_rollout" in out.stdout
    assert batches(tmp_path) == []


def test_a_batch_that_is_not_a_planned_wave_stops_the_update(tmp_path):
    # exact host names are matched as hosts (not groups or patterns), so only a changed play can
    # break the batching: here, the same play sorting its hosts
    playbook = batch_playbook(tmp_path)
    plays = yaml.safe_load(open(playbook))
    plays[1]["order"] = "sorted"
    with open(playbook, "w") as f:
        yaml.safe_dump(plays, f, sort_keys=False)
    out = run(tmp_path, inventory(policy=POLICY), playbook)
    assert out.returncode != 0
    assert "This batch (h01) is not a planned wave (see waves.txt)" in out.stdout
    assert batches(tmp_path) == []


def test_plan_lists_each_hosts_preservability(tmp_path):
    # Local stand-ins with no VM configured: every host is checked and reported, none refused.
    inv = inventory(hosts={"h01": {"rack": "r1"}, "h02": {"rack": "r2"}})
    inv["hypervisors"]["vars"]["ansible_become"] = False
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "plan.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "report" / "preservability.json").read_text())
    want = [("h01", None, "no VMs configured"), ("h02", None, "no VMs configured")]
    assert [(r["host"], r["vm"], r["why"]) for r in rows] == want
    table = (tmp_path / "report" / "preservability.txt").read_text()
    assert table.splitlines()[0].split() == ["host", "vm", "preservable", "policy", "why", "not"]
    assert "0 VMs on 2 hosts; 0 cannot be carried as they are" in table


def test_liveupdate_playbook_resolves_by_fqcn(tmp_path):
    out = run(tmp_path, inventory(), "guestmemfs.liveupdate.liveupdate", "--syntax-check")
    assert out.returncode == 0, out.stdout + out.stderr
