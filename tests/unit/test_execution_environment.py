"""execution-environment.yml builds its context with ansible-builder (no container engine needed):
ansible-core and ansible-runner pinned as in requirements/controller.txt, the collection from this
checkout, installable from the context, and its Python requirements declared for any EE."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

import conftest

BIN = os.path.dirname(sys.executable)
BUILDER = os.path.join(BIN, "ansible-builder")


def pins():
    out = {}
    with open(os.path.join(conftest.ROOT, "requirements", "controller.txt")) as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
            if m:
                out[m.group(1).lower()] = m.group(2)
    return out


@pytest.mark.skipif(not os.path.exists(BUILDER), reason="ansible-builder is not installed (requirements/controller.txt)")
def test_ansible_builder_creates_the_context(tmp_path):
    ctx = tmp_path / "context"
    out = subprocess.run([BUILDER, "create", "-f", "execution-environment.yml", "-c", str(ctx)], cwd=conftest.ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    containerfile = next(p for p in (ctx / "Containerfile", ctx / "Dockerfile") if p.exists()).read_text()
    p = pins()
    assert 'ANSIBLE_INSTALL_REFS="ansible-core==%s ansible-runner==%s"' % (p["ansible-core"], p["ansible-runner"]) in containerfile
    assert "ansible-galaxy collection install" in containerfile
    reqs = yaml.safe_load((ctx / "_build" / "requirements.yml").read_text())
    assert reqs["collections"] == [{"name": "/build/collection", "type": "dir"}]
    coll = ctx / "_build" / "collection"
    galaxy = yaml.safe_load((coll / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("guestmemfs", "liveupdate")
    for rel in ("plugins/action/sizing_plan.py", "plugins/modules/report_files.py", "plugins/filter/waves.py",
                "playbooks/plan.yml", "playbooks/liveupdate.yml", "roles/memory_backend/tasks/main.yml"):
        assert (coll / rel).is_file(), rel
    # what an EE that includes the collection installs for its plugins, pinned as on the controller
    meta = yaml.safe_load((coll / "meta" / "execution-environment.yml").read_text())
    with open(str(coll / meta["dependencies"]["python"])) as f:
        ee_reqs = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert ee_reqs == ["netaddr==%s" % p["netaddr"]]
    # the context's collection installs, and its playbooks resolve by FQCN; only the installed copy
    # counts: none of the Ansible settings the caller or other tests left behind
    dest = tmp_path / "collections"
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("ANSIBLE_"))
    env.update(ANSIBLE_COLLECTIONS_PATH=str(dest), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false")
    out = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", str(dest), str(coll)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (dest / "ansible_collections" / "guestmemfs" / "liveupdate" / "playbooks" / "plan.yml").is_file(), out.stdout
    out = subprocess.run([os.path.join(BIN, "ansible-playbook"), "--syntax-check", "guestmemfs.liveupdate.plan"],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.rmtree(str(ctx))
