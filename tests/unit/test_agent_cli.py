"""The host agent's one command line: every subcommand the units and the playbook run, with its
arguments checked before anything acts."""

import json
import subprocess

import pytest

from conftest import installed_agent

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import agent, hostupdate, memfd_holder


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        agent.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for cmd in ("verify", "vm-run", "vm-restore", "discard-state", "status", "kexec", "cpu-quota", "luo-hold", "luo"):
        assert cmd in out


@pytest.mark.parametrize("argv", [[], ["vm-run"], ["vm-run", "a", "b"], ["vm-restore"], ["kexec", "now"],
                                  ["luo"], ["luo", "ensure", "vm1"], ["luo", "ensure", "vm1", "big"],
                                  ["luo", "retrieve", "vm1"], ["luo", "bogus"], ["reboot"],
                                  ["vm-restore", "Bad Name"], ["vm-run", "--", "-x"]])
@pytest.mark.parametrize("installed", [False, True])  # the installed script: the same refusals
def test_bad_arguments_are_refused_before_anything_acts(argv, installed, capsys, monkeypatch):
    monkeypatch.setattr(memfd_holder, "request", lambda *a, **kw: pytest.fail("acted"))
    monkeypatch.setattr(hostupdate, "vm_run", lambda *a, **kw: pytest.fail("acted"))
    monkeypatch.setattr(hostupdate, "vm_restore", lambda *a, **kw: pytest.fail("acted"))
    if installed:
        code = installed_agent(argv)
    else:
        with pytest.raises(SystemExit) as exc:
            agent.main(argv)
        code = exc.value.code
    assert code == 2 and "usage: agent" in capsys.readouterr().err


def test_subcommands_reach_their_steps(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(hostupdate, "vm_run", lambda name: calls.append(("run", name)) or 0)
    monkeypatch.setattr(hostupdate, "vm_restore", lambda name, run: calls.append(("restore", name, run)) or 0)
    monkeypatch.setattr(hostupdate, "kexec_now", lambda run: "not kexecing: test")
    monkeypatch.setattr(memfd_holder, "request", lambda op, **kw: calls.append((op, kw)) or {"ok": 1})
    assert agent.main(["vm-run", "web1"]) == 0 and agent.main(["vm-restore", "web1"]) == 0
    assert agent.main(["kexec"]) == 5 and "not kexecing: test" in capsys.readouterr().err
    assert agent.main(["luo", "ensure", "vm1", "4096"]) == 0
    assert agent.main(["luo", "retrieve", "vm1", "3"]) == 0
    assert agent.main(["luo", "finish", "--force"]) == 0
    assert agent.main(["luo", "preserve", "a", "b"]) == 0
    assert calls == [("run", "web1"), ("restore", "web1", subprocess.call), ("ensure", {"name": "vm1", "size": 4096}),
                     ("retrieve", {"name": "vm1", "token": 3}), ("finish", {"force": True}),
                     ("preserve", {"names": ["a", "b"]})]


def test_a_refusal_stays_until_its_reader_took_it(monkeypatch):
    """Issue 19 item 9: the guard refused with rc 5 and EMPTY stdout and stderr. Ansible's
    run_command stops reading once a select() of one second came back empty and the process has
    exited: an agent that writes its refusal and exits in that window loses it. The agent must not
    exit while its refusal sits unread in the pipe."""
    import os
    import threading
    import time

    monkeypatch.setattr(hostupdate, "kexec_now", lambda run: "not kexecing: vm1 is running")
    r, w = os.pipe()
    writer = os.fdopen(w, "w")
    monkeypatch.setattr("sys.stderr", writer)
    rc = []
    t = threading.Thread(target=lambda: rc.append(agent.main(["kexec"])))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not select_readable(r) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # a loaded caller, descheduled between its select() and its poll()
        assert t.is_alive(), "the agent exited with its refusal unread: a caller polling now loses it"
        text = os.read(r, 4096).decode()
        t.join(10)
        assert not t.is_alive() and rc == [5] and "not kexecing: vm1 is running" in text
    finally:
        t.join(10)
        writer.close()
        os.close(r)


def select_readable(fd):
    import select
    return bool(select.select([fd], [], [], 0)[0])


def test_status_summarises_what_is_wrong_and_the_next_action(monkeypatch, capsys):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import journal
    j = {"update_id": "u1", "phase": "restored", "from_boot_id": "b0",
         "vms": {"vm1": {"state": "restored"},
                 "vm2": {"state": "held", "verify": {"status": "content_changed", "detail": "chunk 3 differs"}}}}
    monkeypatch.setattr(journal, "load_journal", lambda *a, **kw: j)
    monkeypatch.setattr(journal, "boot_id", lambda: "b1")
    assert agent.main(["status"]) == 4
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "update u1: phase restored (saved on an earlier boot)"
    assert out[1:3] == ["  vm1: restored", "  vm2: held (chunk 3 differs)"]
    assert out[3].startswith("wrong: VMs not resumed after update u1: vm2 (held)")
    assert out[4].startswith("next: follow the recovery above")
    assert agent.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == j
    j.clear()
    assert agent.main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "update -: phase none (no update yet)" and out[1] == "  no VMs in the journal"
    assert out[-1] == "next: nothing to do here: playbooks/liveupdate.yml updates this host"


def test_help_names_the_status_command_and_the_installed_readme(capsys):
    with pytest.raises(SystemExit) as exc:
        agent.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Start with `agent status`" in out and agent.README in out


def test_every_unit_documents_itself_with_a_file_the_role_installs():
    import glob
    import os

    import conftest
    role = os.path.join(conftest.ROOT, "roles", "qemu_vm")
    tasks = open(os.path.join(role, "tasks", "main.yml")).read()
    assert "dest: %s" % agent.README in tasks and os.path.exists(os.path.join(role, "templates", "README.j2"))
    for unit in glob.glob(os.path.join(role, "templates", "*.service.j2")):
        docs = [line for line in open(unit) if line.startswith("Documentation=")]
        assert docs == ["Documentation=file://%s\n" % agent.README], unit
