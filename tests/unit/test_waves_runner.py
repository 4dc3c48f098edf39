"""The rollout run as AWX runs it (docs/scale.md): ansible-runner, the library AWX runs its jobs
with, runs playbooks/plan.yml, then one run per wave from the plan's limit files, in plan order,
and stops after a wave that failed. The waves run a harmless stand-in playbook on local stand-in
hosts (a local connection, distinct inventory names), never the live update."""

import json
import os
import sys

import pytest
import yaml

import conftest
from test_waves_playbook import PLAYBOOKS

ansible_runner = pytest.importorskip("ansible_runner")

RACKS = dict(("hv%02d" % i, "r%d" % (i % 3)) for i in range(1, 13))
POLICY = {"canary": 1, "growth": 2, "max_per_domain": {"rack": 2}}

STANDIN = [{
    "name": "Stand-in for one wave of the live update",
    "hosts": "hypervisors",
    "gather_facts": False,
    "tasks": [
        {"name": "Journal this host's turn", "throttle": 1,
         "ansible.builtin.lineinfile": {"path": "{{ standin_journal }}", "line": "{{ standin_wave }} {{ inventory_hostname }}",
                                        "create": True, "mode": "0644"}},
        {"name": "Fail where the test asks", "ansible.builtin.fail": {"msg": "stand-in failure"},
         "when": "standin_fail | default(false) | bool"}]}]


def setup(tmp_path, failing=()):
    hosts = dict((h, {"rack": r, "standin_fail": h in failing}) for h, r in RACKS.items())
    inv = {"hypervisors": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "guestmemfs_rollout": POLICY}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "standin.yml").write_text(yaml.safe_dump(STANDIN, sort_keys=False))
    bindir = os.path.dirname(sys.executable)
    return {"ANSIBLE_COLLECTIONS_PATH": conftest._tree, "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "GUESTMEMFS_REPORT_DIR": str(tmp_path / "report"), "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def runner(tmp_path, env, name, playbook, **kwargs):
    """One job, as an AWX job template launch: its own private data directory."""
    (tmp_path / "jobs" / name).mkdir(parents=True, exist_ok=True)
    return ansible_runner.run(private_data_dir=str(tmp_path / "jobs" / name), playbook=playbook,
                              inventory=str(tmp_path / "inventory.yml"), envvars=env, quiet=True, **kwargs)


def rollout(tmp_path, env):
    """The workflow: plan, then each wave's job in plan order until one fails -> (plan, statuses)."""
    job = runner(tmp_path, env, "plan", os.path.join(PLAYBOOKS, "plan.yml"))
    assert job.status == "successful", job.stdout.read()
    plan = json.loads((tmp_path / "report" / "waves.json").read_text())
    limits = sorted((tmp_path / "report" / "waves").iterdir())
    statuses = []
    for path in limits:
        wave = path.name[len("wave-"):-len(".limit")]
        job = runner(tmp_path, env, "wave-" + wave, str(tmp_path / "standin.yml"), limit="@" + str(path),
                     extravars={"standin_journal": str(tmp_path / "journal.txt"), "standin_wave": wave})
        statuses.append(job.status)
        if job.status != "successful":
            break
    return plan, limits, statuses


def journal(tmp_path):
    """{wave number: hosts that ran in it}, in the order the waves ran."""
    runs = {}
    for line in (tmp_path / "journal.txt").read_text().splitlines():
        wave, host = line.split()
        runs.setdefault(int(wave), []).append(host)
    return runs


def test_each_wave_is_one_run_in_plan_order(tmp_path):
    env = setup(tmp_path)
    plan, limits, statuses = rollout(tmp_path, env)
    waves = [w["hosts"] for w in plan["waves"]]
    assert len(limits) == len(waves) > 3 and set(statuses) == {"successful"}
    runs = journal(tmp_path)
    assert list(runs) == list(range(1, len(waves) + 1))
    assert [sorted(runs[w]) for w in runs] == [sorted(hosts) for hosts in waves]


def test_a_failed_wave_stops_the_rollout(tmp_path):
    env = setup(tmp_path)
    plan, _limits, _statuses = rollout(tmp_path, env)
    waves = [w["hosts"] for w in plan["waves"]]
    # fail one host of the third wave, plan and roll out again from scratch
    failing = waves[2][-1]
    os.remove(str(tmp_path / "journal.txt"))
    env = setup(tmp_path, failing=(failing,))
    plan2, _limits, statuses = rollout(tmp_path, env)
    assert [w["hosts"] for w in plan2["waves"]] == waves  # the same plan
    assert statuses == ["successful", "successful", "failed"]
    runs = journal(tmp_path)
    assert list(runs) == [1, 2, 3]  # nothing after the failed wave ran
    assert sorted(runs[3]) == sorted(waves[2]) and failing in runs[3]
