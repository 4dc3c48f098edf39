"""Release hygiene: the built collection holds what operators need and nothing else, galaxy.yml's
links and license, the action group, the modules' standard attributes."""

import os
import subprocess
import sys
import tarfile

import yaml

import conftest

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
