"""The agent's entry point: the VM unit's two steps reach hostupdate without the agent's whole
command line (each VM's unit starts two agent processes inside its blackout); everything else,
and any argv those steps would refuse, goes to the agent's one parser as before."""

import os
import subprocess
import sys

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import agent_entry, durable, hostupdate

AGENT_TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "qemu_vm", "templates", "agent.j2")


def rendered_agent(tmp_path):
    """agent.j2 as the role installs it, its path pointed at this checkout's collection tree."""
    with open(AGENT_TEMPLATE) as fh:
        text = fh.read().replace("# {{ ansible_managed }}", "# managed")
    tree = [p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections", "guestmemfs"))][0]
    path = tmp_path / "agent"
    path.write_text(text.replace('"/usr/lib/guestmemfs-liveupdate"', repr(tree)))
    return str(path)


def test_the_unit_steps_load_neither_the_parser_nor_the_other_commands(tmp_path):
    probe = ("import runpy, sys; from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import "
             "hostupdate; hostupdate.vm_run = lambda name: print(sorted(m.rsplit('.', 1)[-1] for m in sys.modules)) or 0; "
             "sys.argv = [%r, 'vm-run', 'web1']; runpy.run_path(%r, run_name='__main__')")
    agent = rendered_agent(tmp_path)
    tree = [p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections", "guestmemfs"))][0]
    out = subprocess.run([sys.executable, "-S", "-c", probe % (agent, agent)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=tree), check=True).stdout
    loaded = set(eval(out))
    assert "hostupdate" in loaded
    assert not loaded & {"argparse", "agent", "qemu_update", "kernel_build", "termios"}, loaded & {
        "argparse", "agent", "qemu_update", "kernel_build", "termios"}


def test_the_unit_steps_reach_hostupdate(monkeypatch):
    calls = []
    monkeypatch.setattr(hostupdate, "vm_run", lambda name: calls.append(("run", name)) or 3)
    monkeypatch.setattr(hostupdate, "vm_restore", lambda name, run: calls.append(("restore", name, run)) or 9)
    assert agent_entry.main(["vm-run", "web1"]) == 3 and agent_entry.main(["vm-restore", "web1"]) == 9
    assert calls == [("run", "web1"), ("restore", "web1", subprocess.call)]


def test_a_journal_that_does_not_read_is_exit_8_with_its_recovery(monkeypatch, capsys):
    def corrupt(name):
        raise durable.CorruptFile("/var/lib/guestmemfs-liveupdate/journal.json is not JSON. Recover: ...")
    monkeypatch.setattr(hostupdate, "vm_run", corrupt)
    assert agent_entry.main(["vm-run", "web1"]) == 8
    assert "journal.json is not JSON. Recover" in capsys.readouterr().err


def test_every_other_command_is_the_agents(monkeypatch, capsys):
    monkeypatch.setattr(hostupdate, "kexec_now", lambda run: "not kexecing: test")
    assert agent_entry.main(["kexec"]) == 5 and "not kexecing: test" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        agent_entry.main(["--help"])
    assert exc.value.code == 0 and "vm-restore" in capsys.readouterr().out


def test_the_start_benchmark_runs_both_entries_and_writes_its_figures(tmp_path):
    bench = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_agent_start.py")
    out = subprocess.run([sys.executable, bench, "--runs", "1", "--json", str(tmp_path / "f.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "agent_entry / agent: wall min" in out and "agent_entry -I -S / agent: wall min" in out
    import json
    figures = json.loads((tmp_path / "f.json").read_text())
    assert set(figures["entries"]) == {"agent", "agent_entry", "agent_entry -I -S"} and figures["runs"] == 1
