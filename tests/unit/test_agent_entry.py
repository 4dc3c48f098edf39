"""The installed agent script's entry: the VM unit's two steps reach hostupdate without the agent's
whole command line (each VM's unit starts two agent processes inside its blackout); everything
else, and any argv those steps would refuse, goes to the agent's one parser as before."""

import json
import os
import subprocess
import sys

import pytest
from conftest import installed_agent, rendered_agent

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import agent_entry, durable, hostupdate


def test_the_unit_steps_load_neither_the_parser_nor_the_other_commands(tmp_path):
    agent = rendered_agent(str(tmp_path / "agent"))
    probe = ("import runpy, sys; from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import "
             "hostupdate; hostupdate.vm_run = lambda name: print(sorted(m.rsplit('.', 1)[-1] for m in sys.modules)) or 0; "
             "sys.argv = [%r, 'vm-run', 'web1']; runpy.run_path(%r, run_name='__main__')")
    tree = [p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections", "guestmemfs"))][0]
    out = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, %r); " % tree
                          + probe % (agent, agent)], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    assert "hostupdate" in loaded
    unused = {"argparse", "agent", "qemu_update", "kernel_build", "termios"}
    assert not loaded & unused, loaded & unused
    # nor the standard library only other paths need (the save's update id, a sampled or non-default
    # checksum, tempfile's own imports): each is CPU on a host still booting, once per VM
    other_paths = {"uuid", "platform", "hashlib", "random", "tempfile", "shutil", "bz2", "lzma", "datetime"}
    assert not loaded & other_paths, loaded & other_paths


def test_the_unit_steps_reach_hostupdate(monkeypatch):
    calls = []
    monkeypatch.setattr(hostupdate, "vm_run", lambda name: calls.append(("run", name)) or 3)
    monkeypatch.setattr(hostupdate, "vm_restore", lambda name, run: calls.append(("restore", name, run)) or 9)
    assert installed_agent(["vm-run", "web1"]) == 3 and installed_agent(["vm-restore", "web1"]) == 9
    assert calls == [("run", "web1"), ("restore", "web1", subprocess.call)]
    assert agent_entry.unit_step(["kexec"]) is None  # not a unit step: the parser's


def test_a_journal_that_does_not_read_is_exit_8_with_its_recovery(monkeypatch, capsys):
    def corrupt(name):
        raise durable.CorruptFile("/var/lib/guestmemfs-liveupdate/journal.json is not JSON. Recover: ...")
    monkeypatch.setattr(hostupdate, "vm_run", corrupt)
    assert installed_agent(["vm-run", "web1"]) == 8
    assert "journal.json is not JSON. Recover" in capsys.readouterr().err


def test_every_other_command_is_the_agents(monkeypatch, capsys):
    monkeypatch.setattr(hostupdate, "kexec_now", lambda run: "not kexecing: test")
    assert installed_agent(["kexec"]) == 5 and "not kexecing: test" in capsys.readouterr().err
    assert installed_agent(["--help"]) == 0 and "vm-restore" in capsys.readouterr().out


def test_the_start_benchmark_runs_every_entry_and_writes_its_figures(tmp_path):
    bench = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_agent_start.py")
    out = subprocess.run([sys.executable, bench, "--runs", "1", "--json", str(tmp_path / "f.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "agent_entry / agent: wall min" in out and "agent_entry -I -S / agent: wall min" in out
    figures = json.loads((tmp_path / "f.json").read_text())
    assert set(figures["entries"]) == {"agent", "agent_entry", "agent_entry -I -S"} and figures["runs"] == 1


def test_a_bad_name_is_the_parsers_refusal(monkeypatch, capsys):
    monkeypatch.setattr(hostupdate, "vm_run", lambda *a, **kw: pytest.fail("acted"))
    assert installed_agent(["vm-run", "Bad Name"]) == 2 and "VM name" in capsys.readouterr().err
