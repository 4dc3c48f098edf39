"""The host agent as the qemu_vm role installs it: a Python file without an interpreter line (the
collection's non-module Python may not carry one), so everything that runs it names the host's
Python, and it is not installed as if it were a command of its own."""

import glob
import os

import yaml

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "qemu_vm")
AGENT = "/usr/lib/guestmemfs-liveupdate/agent"


def test_every_task_and_unit_runs_the_agent_with_python():
    # Seen in review: the converge's metrics task ran the agent as a program; execve refused it
    # (Exec format error) and failed_when: false hid that the metrics file was never written.
    with open(os.path.join(ROLE, "tasks", "main.yml")) as fh:
        tasks = yaml.safe_load(fh)
    runs = [t["ansible.builtin.command"]["argv"] for t in tasks
            if AGENT in ((t.get("ansible.builtin.command") or {}).get("argv") or [])]
    assert runs, "no task runs the agent?"
    assert all(argv[:2] == ["/usr/bin/python3", AGENT] for argv in runs), runs
    for unit in glob.glob(os.path.join(ROLE, "templates", "*.service.j2")):
        with open(unit) as fh:
            for line in fh:
                if AGENT in line and line.startswith("Exec"):
                    argv = line.split("=", 1)[1].split()
                    # The boot's units (inside the VMs' blackout): isolated and without site's imports;
                    # the agent is stdlib and its own tree.
                    isolated = os.path.basename(unit) in BOOT_UNITS
                    want = ["/usr/bin/python3"] + (["-I", "-S"] if isolated else []) + [AGENT]
                    assert argv[:len(want)] == want, (unit, line)


BOOT_UNITS = ("guestmemfs-vm@.service.j2", "guestmemfs-verify.service.j2")


def test_the_agent_is_installed_without_the_exec_bit():
    # Run by itself it would be read by the shell ("import: command not found"); without the exec
    # bit the operator gets "Permission denied" and the README names the python3 call.
    with open(os.path.join(ROLE, "tasks", "main.yml")) as fh:
        tasks = yaml.safe_load(fh)
    install = [t for t in tasks if (t.get("ansible.builtin.template") or {}).get("dest") == AGENT]
    assert len(install) == 1 and install[0]["ansible.builtin.template"]["mode"] == "0644", install
    with open(os.path.join(ROLE, "templates", "agent.j2")) as fh:
        assert not fh.readline().startswith("#!")
