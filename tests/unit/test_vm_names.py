"""Issue 19, security: one VM-name rule (vmdef.NAME_RE) in every module, the role and the agent.
A name becomes a file name, a unit instance and a QEMU id: '../x', 'a b' or 'VM:1' must be refused
before anything acts (vm_cpr joined names into paths unchecked)."""

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import agent, hostupdate, memfd_holder, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.modules import memory_manifest, vm_cpr, vm_preservability

from conftest import run_main

BAD = ["../../etc/cron.d/x", "vm1\n", "a b", "vm\nExecStart=/bin/sh", "VM1", "-rf", ""]


@pytest.fixture
def nothing_acts(monkeypatch):
    for fn in ("save_all", "shutdown_for_update", "rollback", "vm_run", "vm_restore", "verify_pending"):
        monkeypatch.setattr(hostupdate, fn, lambda *a, **kw: pytest.fail("acted on a bad VM name"))
    monkeypatch.setattr(memfd_holder, "request", lambda *a, **kw: pytest.fail("acted on a bad VM name"))


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("argv", [["vm-run"], ["vm-restore"], ["verify"], ["luo", "drop"], ["luo", "retrieve"]])
def test_the_agent_refuses_a_bad_vm_name(argv, name, nothing_acts, capsys):
    extra = ["3"] if argv == ["luo", "retrieve"] else []
    with pytest.raises(SystemExit) as exc:
        agent.main(argv + ["--", name] + extra if name.startswith("-") else argv + [name] + extra)
    assert exc.value.code == 2 and "VM name" in capsys.readouterr().err


def test_the_memfd_holder_uses_the_one_rule():
    assert memfd_holder.NAME_RE is vmdef.NAME_RE


@pytest.mark.parametrize("action", ["save", "shutdown", "restore", "wait", "status"])
def test_vm_cpr_refuses_a_bad_vm_name_before_anything(action, nothing_acts, capsys):
    rc, out = run_main(capsys, vm_cpr, {"action": action, "vms": ["vm1", "../../etc/x"]})
    assert rc == 1 and vmdef.NAME_RULE in out["msg"] and "../../etc/x" in out["msg"]


def test_memory_manifest_refuses_a_bad_vm_name(tmp_path, capsys):
    f = tmp_path / "x.ram"
    f.write_bytes(b"x")
    rc, out = run_main(capsys, memory_manifest, {"action": "record", "files": {"../x": str(f)},
                                                 "path": str(tmp_path / "m.json")})
    assert rc == 1 and vmdef.NAME_RULE in out["msg"]


def test_vm_preservability_refuses_a_bad_vm_name(tmp_path, capsys):
    rc, out = run_main(capsys, vm_preservability, {"vms": ["a b"], "conf_dir": str(tmp_path)})
    assert rc == 1 and vmdef.NAME_RULE in out["msg"]


def test_vm_cpr_wait_with_poll_returns_where_the_restore_stands(monkeypatch, capsys):
    # A restore still under way: with poll, the wait returns (not failed) with the progress.
    j = {"phase": "verified", "update_id": "u1", "log": [{"msg": "vm2: verifying its memory"}],
         "vms": {"vm1": {"state": "restored"}, "vm2": {"state": "restoring"}}}
    monkeypatch.setattr(hostupdate, "load_journal", lambda *a, **kw: j)
    monkeypatch.setattr(vm_cpr.time, "sleep", lambda s: None)
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(vm_cpr.time, "monotonic", lambda: next(clock))
    rc, out = run_main(capsys, vm_cpr, {"action": "wait", "poll": 25, "timeout": 600})
    assert rc == 0 and out["done"] is False and not out.get("failed")
    assert (out["restored"], out["total"], out["last_step"]) == (1, 2, "vm2: verifying its memory")
    j["vms"]["vm2"]["state"] = "restored"
    rc, out = run_main(capsys, vm_cpr, {"action": "wait", "poll": 25, "timeout": 600})
    assert rc == 0 and out["done"] is True and out["restored"] == 2


def test_vm_cpr_wait_fails_at_once_on_a_vm_its_unit_did_not_start(monkeypatch, capsys):
    # Final, not resumed: the controller's wait ends on it (not at its timeout), naming it and why,
    # not its memory's verdict (which was ok).
    j = {"phase": "held", "update_id": "u1", "from_boot_id": "boot-a",
         "vms": {"vm1": {"state": "restored"},
                 "vm2": {"state": "not_started", "verify": {"status": "ok", "detail": "64 MiB sampled"},
                         "error": "bridge br-late does not exist after 180s"}}}
    monkeypatch.setattr(hostupdate, "load_journal", lambda *a, **kw: j)
    monkeypatch.setattr(vm_cpr.time, "sleep", lambda s: None)
    rc, out = run_main(capsys, vm_cpr, {"action": "wait", "poll": 25, "timeout": 600})
    assert rc == 1 and "vm2 not_started (bridge br-late does not exist after 180s)" in out["msg"]
