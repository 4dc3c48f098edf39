"""The variables reference (docs/variables.md): generated, complete, and the playbooks' refusal of
unknown guestmemfs_* variables."""

import importlib.util
import json
import os
import re

import pytest

import conftest
from test_waves_playbook import PLAYBOOKS, run

from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import variables

# Every test here also runs on the lowest ansible-core claimed (scripts/test).
pytestmark = pytest.mark.min_core

DOC = os.path.join(conftest.ROOT, "docs", "variables.md")
# guestmemfs_* words in playbooks and roles that are no variables: module names and fact keys come
# after a dot, file names after a slash; these are keys of a report's JSON rows.
NOT_VARIABLES = {"guestmemfs_fs"}


def generator():
    spec = importlib.util.spec_from_file_location("variables_doc", os.path.join(conftest.ROOT, "scripts",
                                                                                "variables_doc.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def used_names():
    found = {}
    for top in ("playbooks", "roles"):
        for d, _dirs, files in os.walk(os.path.join(conftest.ROOT, top)):
            for f in files:
                path = os.path.join(d, f)
                with open(path) as fh:
                    for name in re.findall(r"(?<![\w./])guestmemfs_[a-z0-9_]*[a-z0-9]", fh.read()):
                        found.setdefault(name, os.path.relpath(path, conftest.ROOT))
    return found


def test_the_reference_is_what_the_generator_writes():
    with open(DOC) as fh:
        assert fh.read() == generator().render(), "docs/variables.md is stale: run python3 scripts/variables_doc.py"


def test_every_guestmemfs_variable_of_the_playbooks_and_roles_is_in_the_reference():
    with open(DOC) as fh:
        doc = fh.read()
    used = used_names()
    assert "guestmemfs_backend" in used and "guestmemfs_rollout" in used and "guestmemfs_lu_step" in used
    missing = sorted("%s (%s)" % (n, where) for n, where in used.items()
                     if n not in NOT_VARIABLES and "| `%s` |" % n not in doc)
    assert missing == []
    # and the reference lists nothing that nothing reads or sets
    stale = sorted(n for n in variables.KNOWN if n.startswith("guestmemfs_") and n not in used)
    assert stale == []


def test_every_role_option_is_in_the_reference():
    import yaml
    with open(DOC) as fh:
        doc = fh.read()
    for role in os.listdir(os.path.join(conftest.ROOT, "roles")):
        with open(os.path.join(conftest.ROOT, "roles", role, "meta", "argument_specs.yml")) as fh:
            options = yaml.safe_load(fh)["argument_specs"]["main"]["options"]
        assert options and all("| `%s` |" % o in doc for o in options), role


def test_unknown_names_get_the_closest_known_one():
    assert variables.unknown(["guestmemfs_rolout", "guestmemfs_vms", "other", "guestmemfs_zzz"]) == {
        "guestmemfs_rolout": "guestmemfs_rollout", "guestmemfs_zzz": None}
    lines = variables.describe_unknown({"h1": ["guestmemfs_rolout"], "h2": ["guestmemfs_rolout", "guestmemfs_xyzzy_quux"],
                                        "h3": ["guestmemfs_rolout"], "h4": ["guestmemfs_rolout"]})
    assert lines == ["guestmemfs_rolout (h1, h2, h3 and 1 more; did you mean guestmemfs_rollout?)",
                     "guestmemfs_xyzzy_quux (h2)"]


def inventory(**group_vars):
    hosts = dict(("h%d" % i, {"rack": "r%d" % i}) for i in range(1, 4))
    base = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "guestmemfs_rollout": {"canary": 1, "domains": ["rack"], "max_per_domain": {"rack": 1}}}
    base.update(group_vars)
    return {"hypervisors": {"hosts": hosts, "vars": base}}


def test_plan_refuses_a_typo_before_anything_is_written(tmp_path):
    inv = inventory()
    inv["hypervisors"]["hosts"]["h2"]["guestmemfs_rolout"] = {"canary": 2}
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "plan.yml"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Unknown variables, which the collection would ignore: guestmemfs_rolout (h2; did you mean " \
           "guestmemfs_rollout?)" in out.stdout
    assert not (tmp_path / "report").exists()
    # an extra var is a variable of every host
    out = run(tmp_path, inventory(), os.path.join(PLAYBOOKS, "plan.yml"), "-e", "guestmemfs_max_failed=1")
    assert out.returncode == 2 and "guestmemfs_max_failed (h1, h2, h3; did you mean guestmemfs_max_failed_hosts?)" \
        in out.stdout, out.stdout
    # every name known: planned
    out = run(tmp_path, inventory(guestmemfs_max_failed_hosts=1), os.path.join(PLAYBOOKS, "plan.yml"),
              "-e", "guestmemfs_plan_check_vms=false")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((tmp_path / "report" / "waves.json").read_text())["waves"][0]["hosts"]


def test_sizing_refuses_a_typo_before_it_plans(tmp_path):
    inv = inventory(guestmemfs_sizng={"mode": "fraction", "fraction": 0.5})
    (tmp_path / "facts.json").write_text("{}")
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "sizing.yml"), "-e", "guestmemfs_facts_from=%s" % (tmp_path / "facts.json"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "guestmemfs_sizng (h1, h2, h3; did you mean guestmemfs_sizing?)" in out.stdout
    assert "Plan every host" not in out.stdout and not (tmp_path / "report").exists()


# ------------------------------------------------------------------ the sample inventory (docs/quickstart.md)

SAMPLE = os.path.join(conftest.ROOT, "inventory", "sample")


def test_the_sample_inventory_sets_only_known_variables_and_valid_vms():
    import yaml
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import vmdef
    with open(os.path.join(SAMPLE, "group_vars", "hypervisors.yml")) as fh:
        text = fh.read()
    group = yaml.safe_load(text)
    with open(DOC) as fh:
        doc = fh.read()
    # what is set, and what is given commented out as a default
    names = set(group) | set(re.findall(r"^# ?([a-z]+_[a-z_]+):", text, re.M))
    assert {"guestmemfs_backend", "guestmemfs_sizing", "guestmemfs_rollout", "guestmemfs_vms"} <= set(group)
    unknown = sorted(n for n in names if not n.startswith("ansible_") and "| `%s` |" % n not in doc)
    assert unknown == []
    confs = vmdef.normalize_all(group["guestmemfs_vms"])
    assert [c["name"] for c in confs] == ["vm1"]
    assert group["guestmemfs_sizing"]["backend"] == group["guestmemfs_backend"]


def test_the_sample_inventory_plans_its_waves(tmp_path):
    import yaml
    with open(os.path.join(SAMPLE, "hosts.yml")) as fh:
        inv = yaml.safe_load(fh)
    with open(os.path.join(SAMPLE, "group_vars", "hypervisors.yml")) as fh:
        group_vars = yaml.safe_load(fh)
    hv = inv["all"]["children"]["hypervisors"]
    hv["vars"] = dict(group_vars, ansible_connection="local", ansible_python_interpreter="{{ ansible_playbook_python }}")
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "plan.yml"), "-e", "guestmemfs_plan_check_vms=false")
    assert out.returncode == 0, out.stdout + out.stderr
    waves = [w["hosts"] for w in json.loads((tmp_path / "report" / "waves.json").read_text())["waves"]]
    assert sorted(h for w in waves for h in w) == ["hv1", "hv2", "hv3"] and len(waves[0]) == 1
    racks = {"hv1": "r1", "hv2": "r1", "hv3": "r2"}
    assert all(len(set(racks[h] for h in w)) == len(w) for w in waves)  # at most one host per rack at once


def test_prepare_refuses_a_typo_before_its_first_change(tmp_path):
    # --check as well: were the preflight to let it through, nothing on this machine would change
    inv = inventory(guestmemfs_vm={"name": "vm1"})
    out = run(tmp_path, inv, os.path.join(PLAYBOOKS, "prepare.yml"), "--check")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "guestmemfs_vm (h1, h2, h3; did you mean guestmemfs_vms?)" in out.stdout
    assert "Install" not in out.stdout and "TASK [guestmemfs.liveupdate.hypervisor" not in out.stdout
