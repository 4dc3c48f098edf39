"""Release hygiene: the built collection holds what operators need and nothing else, galaxy.yml's
links and license, the action group, the modules' standard attributes."""

import os
import re
import subprocess
import sys
import tarfile

import pytest
import yaml

import conftest

# Every test here also runs on the lowest ansible-core claimed (scripts/test).
pytestmark = pytest.mark.min_core

GALAXY = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")


def load(*parts):
    with open(os.path.join(conftest.ROOT, *parts)) as fh:
        return yaml.safe_load(fh) if parts[-1].endswith(".yml") else fh.read()


def test_galaxy_metadata_and_license():
    g = load("galaxy.yml")
    assert g["license"] == ["GPL-3.0-or-later"]
    assert "GNU GENERAL PUBLIC LICENSE" in load("LICENSE") and "Version 3, 29 June 2007" in load("LICENSE")
    for key in ("repository", "documentation", "homepage", "issues"):
        assert g[key].startswith("https://github.com/guestmemfs/liveupdate"), key


def test_the_action_group_holds_every_module():
    modules = sorted(f[:-3] for f in os.listdir(os.path.join(conftest.ROOT, "plugins", "modules")) if f.endswith(".py"))
    assert load("meta", "runtime.yml")["action_groups"]["liveupdate"] == modules


def test_every_module_has_the_standard_attributes_requirements_and_seealso():
    for f in sorted(os.listdir(os.path.join(conftest.ROOT, "plugins", "modules"))):
        text = load("plugins", "modules", f)
        doc = yaml.safe_load(text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0])
        assert "guestmemfs.liveupdate.attributes" in doc["extends_documentation_fragment"], f
        assert set(doc["attributes"]) >= {"check_mode", "diff_mode", "idempotent", "platform"}, f
        assert doc["attributes"]["idempotent"]["support"] in ("full", "partial", "none"), f
        assert doc["requirements"] and doc["seealso"], f


def test_the_built_collection_has_what_the_playbooks_need_and_no_development_tooling(tmp_path):
    out = subprocess.run([GALAXY, "collection", "build", "--output-path", str(tmp_path), conftest.ROOT],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    [name] = os.listdir(str(tmp_path))
    with tarfile.open(str(tmp_path / name)) as tar:
        names = set(tar.getnames())
    tops = set(n.split("/")[0] for n in names)
    assert not tops & {"tests", "molecule", "scripts", ".ci", "execution-environment.yml"}, tops
    for needed in ("LICENSE", "README.md", "meta/runtime.yml", "docs/quickstart.md", "docs/variables.md",
                   "inventory/sample/hosts.yml", "inventory/sample/group_vars/hypervisors.yml",
                   "playbooks/liveupdate.yml", "playbooks/tasks/check_variables.yml", "playbooks/templates/blackout.txt.j2",
                   "plugins/doc_fragments/attributes.py", "plugins/plugin_utils/variables.py",
                   "roles/qemu_vm/tasks/main.yml", "roles/kernel_build/files/liveupdate-fleet.config"):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "guestmemfs-report" in n]


def test_sanity_covers_every_python_the_hypervisors_may_run_the_modules_with():
    """scripts/sanity runs the per-Python sanity tests (compile, import) on 3.9 to 3.13."""
    text = load("scripts", "sanity")
    default = re.search(r'GUESTMEMFS_SANITY_TARGET_PYTHONS:-([0-9. ]+)\}', text)
    assert default, "scripts/sanity no longer names its target Pythons"
    assert default.group(1).split() == ["3.9", "3.10", "3.11", "3.12", "3.13"]
    assert 'targets+=(--target-python "$v")' in text and '"${targets[@]}"' in text


def test_the_min_venv_runs_the_lowest_ansible_core_the_collection_claims():
    """requirements/controller-min.txt pins the newest patch release of requires_ansible's lower bound."""
    claimed = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", load("meta", "runtime.yml")["requires_ansible"].strip())
    assert claimed, "requires_ansible should read >=X.Y.Z"
    pins = dict(line.split("==", 1) for line in load("requirements", "controller-min.txt").splitlines()
                if line.strip() and not line.startswith("#"))
    pinned = pins["ansible-core"].strip().split(".")
    assert pinned[:2] == list(claimed.groups()[:2]) and int(pinned[2]) >= int(claimed.group(3)), (pinned, claimed.groups())
    for role in sorted(os.listdir(os.path.join(conftest.ROOT, "roles"))):
        meta = load("roles", role, "meta", "main.yml")
        assert meta["galaxy_info"]["min_ansible_version"] == "%s.%s" % claimed.groups()[:2], role
    assert "controller-min" in load("scripts", "test")
