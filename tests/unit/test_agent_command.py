"""The host agent as the qemu_vm role installs it (roles/qemu_vm/templates/agent.j2)."""

import os
import subprocess
import sys

import jinja2
from conftest import _tree


def test_the_installed_agent_runs_as_a_command(tmp_path):
    # The role installs it 0755 as /usr/lib/guestmemfs-liveupdate/agent: `agent status` on the host
    # must run it with Python, not the shell (it did: "import: command not found").
    src = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "qemu_vm", "templates", "agent.j2")
    with open(src) as fh:
        text = jinja2.Template(fh.read()).render(ansible_managed="Ansible managed")
    assert text.startswith("#!/usr/bin/python3\n")
    agent = tmp_path / "agent"
    # this test's interpreter in place of the host's /usr/bin/python3 (same first line otherwise)
    agent.write_text(text.replace("#!/usr/bin/python3", "#!" + sys.executable, 1))
    agent.chmod(0o755)
    r = subprocess.run([str(agent), "--help"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=_tree),
                       check=False)
    assert r.returncode == 0 and "status" in r.stdout, r.stdout + r.stderr
