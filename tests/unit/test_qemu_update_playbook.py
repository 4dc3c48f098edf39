"""playbooks/qemu_update.yml as an operator runs it, by ansible-playbook on local stand-in hosts (the
collection copy of test_liveupdate_playbook, whose qemu_update module is a stand-in on the
controller): the waves of plan.yml, one detached update per host, the reports, a failed host that
stops the run."""

import json

from test_liveupdate_playbook import hosts_inventory, play, run_rows

ROLLED_BACK = {"failed": True, "msg": "QEMU update q1 did not bring every VM to /usr/bin/qemu-system-x86_64: vm1 "
               "rolled back: the new QEMU did not restore it (incoming migration of vm1 ended failed)",
               "outcomes": {"vm1": "rolled_back"},
               "records": {"vm1": {"state": "restored", "blackout_s": 1.9, "rolled_back": True,
                                   "qemu_from": "qemu-system-x86_64", "qemu_to": "/usr/bin/qemu-system-x86_64",
                                   "qemu": "/var/lib/guestmemfs-liveupdate/qemu/0123/bin/qemu-system-x86_64",
                                   "verify": {"status": "ok", "mode": "sampled"}}}}


def test_every_host_in_its_wave_with_a_row_per_vm(tmp_path):
    out, calls = play(tmp_path, hosts_inventory(), "qemu_update.yml")
    assert out.returncode == 0, out.stdout[-3000:]
    moves = [c for c in calls if c["key"] == "qemu_update"]
    # the canary first, then the second wave, whose hosts run at once (their order is the forks')
    assert [c["host"] for c in moves][:1] == ["h1"] and sorted(c["host"] for c in moves[1:]) == ["h2", "h3"]
    assert moves[0]["args"] == {"binary": "/usr/bin/qemu-system-x86_64", "parallel": 1, "memory_check": "sampled"}
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"], r["to_qemu"], r["qemu_version"]) for r in rows] == [
        (h, "updated", "/usr/bin/qemu-system-x86_64", "10.0") for h in ("h1", "h2", "h3")]
    blackout = json.loads((tmp_path / "report" / "blackout.json").read_text())
    assert [(b["host"], b["vm"], b["blackout_s"], b["verify"], b["rolled_back"]) for b in blackout] == [
        (h, "vm1", 0.4, "ok", False) for h in ("h1", "h2", "h3")]
    assert "blackout min 0.4 s" in (tmp_path / "report" / "blackout.txt").read_text()


def test_a_host_that_rolled_back_a_vm_stops_the_run_after_its_wave(tmp_path):
    inv = hosts_inventory(h1={"standin": {"qemu_update": ROLLED_BACK}},
                          guestmemfs_qemu_update_parallel=2)
    out, calls = play(tmp_path, inv, "qemu_update.yml", "-e", "guestmemfs_qemu_update_parallel=2")
    assert out.returncode != 0
    assert [c["host"] for c in calls if c["key"] == "qemu_update"] == ["h1"]
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"]) for r in rows] == [("h1", "failed"), ("h2", "not run"), ("h3", "not run")]
    assert "vm1 rolled back" in rows[0]["reason"]
    blackout = json.loads((tmp_path / "report" / "blackout.json").read_text())
    assert [(b["vm"], b["rolled_back"], b["to_kernel"]) for b in blackout] == [
        ("vm1", True, "/var/lib/guestmemfs-liveupdate/qemu/0123/bin/qemu-system-x86_64")]


def test_check_mode_asks_every_host_and_changes_nothing(tmp_path):
    out, calls = play(tmp_path, hosts_inventory(), "qemu_update.yml", "--check")
    assert out.returncode == 0, out.stdout[-3000:]
    moves = [c for c in calls if c["key"] == "qemu_update"]
    assert [c["host"] for c in moves][:1] == ["h1"]  # the canary first; the second wave's two in any order
    assert sorted((c["host"], c["check_mode"]) for c in moves) == [("h1", True), ("h2", True), ("h3", True)]
    assert [(r["host"], r["outcome"]) for r in run_rows(tmp_path)] == [(h, "checked") for h in ("h1", "h2", "h3")]
