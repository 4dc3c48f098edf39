"""playbooks/liveupdate.yml and the other playbooks as an operator runs them, by ansible-playbook on
local stand-in hosts: the real playbooks, templates and task files, in a copy of the collection whose
host modules (update_step, vm_preservability, kexec, kho_handover, vm_cpr, vm_memory,
guestmemfs_facts) are stand-ins on the controller (fixtures/standin/standin_action.py), so that nothing
reaches a kexec, a VM or a mount. Check mode, the reports a failed canary leaves, progress while the
host restores its VMs, --limit, an inventory without the hypervisors group, a host that failed
earlier in the run."""

import json
import os
import subprocess
import sys

import pytest
import yaml

import conftest
from test_fleet_scale import small_fleet
from test_waves_playbook import ANSIBLE_PLAYBOOK

sys.path.insert(0, os.path.join(conftest.FIXTURES, "standin"))
from standin_action import DEFAULTS  # noqa: E402

from ansible_collections.guestmemfs.liveupdate.plugins.lookup.report_dir import report_dir  # noqa: E402

STANDINS = ("update_step", "vm_preservability", "kexec", "kho_handover", "vm_cpr", "vm_memory", "guestmemfs_facts",
            "guest_health", "qemu_update")
UNAME = os.uname().release
# The kernel options the pmem backend needs (its required_kernel_options).
OPTIONS = ("CONFIG_KEXEC_FILE", "CONFIG_X86_PMEM_LEGACY", "CONFIG_BLK_DEV_PMEM", "CONFIG_FS_DAX")


def collection(tmp_path, reboot=False):
    """A copy of the collection (symlinks) whose host modules are answered by the stand-in. With
    ``reboot``, liveupdate.yml's kexec (ansible.builtin.reboot, the one builtin that acts on the host)
    is answered by the stand-in too: the copy of the playbook names it guestmemfs.liveupdate.reboot."""
    top = tmp_path / "collections" / "ansible_collections" / "guestmemfs" / "liveupdate"
    top.mkdir(parents=True)
    for name in os.listdir(conftest.ROOT):
        if name not in ("plugins", ".git", "playbooks"):
            os.symlink(os.path.join(conftest.ROOT, name), str(top / name))
    (top / "playbooks").mkdir()
    for name in os.listdir(os.path.join(conftest.ROOT, "playbooks")):
        src = os.path.join(conftest.ROOT, "playbooks", name)
        if reboot and name == "liveupdate.yml":
            with open(src) as f:
                text = f.read()
            assert text.count("ansible.builtin.reboot:") == 1
            (top / "playbooks" / name).write_text(text.replace("ansible.builtin.reboot:", "guestmemfs.liveupdate.reboot:"))
        else:
            os.symlink(src, str(top / "playbooks" / name))
    (top / "plugins").mkdir()
    for name in os.listdir(os.path.join(conftest.ROOT, "plugins")):
        if name != "action":
            os.symlink(os.path.join(conftest.ROOT, "plugins", name), str(top / "plugins" / name))
    (top / "plugins" / "action").mkdir()
    for name in os.listdir(os.path.join(conftest.ROOT, "plugins", "action")):
        os.symlink(os.path.join(conftest.ROOT, "plugins", "action", name), str(top / "plugins" / "action" / name))
    standin = os.path.join(conftest.FIXTURES, "standin", "standin_action.py")
    for name in STANDINS + (("reboot",) if reboot else ()):
        os.symlink(standin, str(top / "plugins" / "action" / (name + ".py")))
    return str(tmp_path / "collections"), str(top / "playbooks")


def hosts_inventory(names=("h1", "h2", "h3"), group="hypervisors", **hostvars):
    hosts = dict((h, dict(hostvars.get(h, {}))) for h in names)
    group_vars = {"ansible_connection": "local", "ansible_become": False, "ansible_python_interpreter": sys.executable}
    return {group: {"hosts": hosts, "vars": group_vars}}


def playbook_env(tmp_path, lock_dir=None):
    """ansible-playbook's environment: the copy of the collection alone, the stand-in's call log."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_RETRY_FILES_ENABLED="false", STANDIN_CALLS=str(tmp_path / "calls.jsonl"),
               ANSIBLE_ASYNC_DIR=str(tmp_path / "async"), GUESTMEMFS_LOCK_DIR=str(lock_dir or tmp_path / "locks"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("ANSIBLE_CONFIG", None)
    env.pop("GUESTMEMFS_REPORT_DIR", None)
    return env


def play(tmp_path, inv, playbook, *args, report_env=True, lock_dir=None, background=False):
    """ansible-playbook PLAYBOOK (a name in the copy's playbooks/, or a path) from tmp_path ->
    (completed process, the stand-in's calls); ``background``: (the running process, None)."""
    if not (tmp_path / "collections").exists():
        collection(tmp_path)
    colls = str(tmp_path / "collections")
    playbooks = os.path.join(colls, "ansible_collections", "guestmemfs", "liveupdate", "playbooks")
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "async").mkdir(exist_ok=True)
    calls = tmp_path / "calls.jsonl"
    if calls.exists():
        calls.unlink()
    env = playbook_env(tmp_path, lock_dir)
    if report_env:
        env["GUESTMEMFS_REPORT_DIR"] = str(tmp_path / "report")
    path = playbook if os.path.isabs(playbook) else os.path.join(playbooks, playbook)
    if background:
        return subprocess.Popen([ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.yml"), path] + list(args), cwd=str(tmp_path),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), None
    out = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.yml"), path] + list(args),
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300, check=False)
    made = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return out, made


def run_rows(tmp_path):
    return json.loads((tmp_path / "report" / "liveupdate.json").read_text())


@pytest.mark.min_core
def test_check_mode_runs_every_preflight_and_waits_for_nothing(tmp_path):
    inv = hosts_inventory(h3={"standin": {"vm_preservability": {
        "vms": {"vm1": {"preservable": True, "problems": []},
                "vm2": {"preservable": False, "policy": "refuse", "problems": [{"detail": "a vfio device"}]}},
        "skip": False, "shutdown_vms": []}}})
    out, calls = play(tmp_path, inv, "liveupdate.yml", "--check")
    assert out.returncode == 0, out.stdout + out.stderr
    for host, wave in (("h1", 1), ("h2", 2), ("h3", 2)):
        assert "%s: wave %d; 6.1.0-old -> 6.12.0-new; would start (nothing in flight);" % (host, wave) in out.stdout
    assert "h1: wave 1; 6.1.0-old -> 6.12.0-new; would start (nothing in flight); 1 of 1 VMs can be carried." in out.stdout
    assert "2 VMs can be carried; vm2 cannot: a vfio device (policy refuse)" in out.stdout
    assert "Check mode: nothing was changed and nothing waits." in out.stdout
    # every host's preflight ran (in check mode); nothing saved, kexeced or waited for
    assert sorted(c["host"] for c in calls if c["key"] == "kexec") == ["h1", "h2", "h3"]
    assert all(c["check_mode"] for c in calls)
    assert [c["key"] for c in calls if c["key"].startswith("vm_cpr")] == ["vm_cpr.status"] * 3  # the pre-run probe
    rows = run_rows(tmp_path)
    assert [(r["wave"], r["host"], r["outcome"]) for r in rows] == [(1, "h1", "checked"), (2, "h2", "checked"),
                                                                    (2, "h3", "checked")]
    assert rows[0]["run_id"] and rows[0]["start"] and rows[0]["end"]


@pytest.mark.min_core
def test_a_failed_canary_leaves_its_reports(tmp_path):
    inv = hosts_inventory(h1={"standin": {"kexec": {"failed": True, "msg": "kexec_file_load: stand-in refusal"}}})
    out, calls = play(tmp_path, inv, "liveupdate.yml")
    assert out.returncode == 2, out.stdout + out.stderr
    rows = run_rows(tmp_path)
    assert [(r["wave"], r["host"], r["outcome"]) for r in rows] == [(1, "h1", "failed"), (2, "h2", "not run"),
                                                                    (2, "h3", "not run")]
    assert "kexec_file_load: stand-in refusal" in rows[0]["reason"]
    assert rows[0]["run_id"] and rows[0]["start"] <= rows[0]["end"]
    assert json.loads((tmp_path / "report" / "blackout.json").read_text()) == []
    table = (tmp_path / "report" / "liveupdate.txt").read_text()
    assert "failed" in table and "kexec_file_load: stand-in refusal" in table and "1 failed, 2 not run" in table
    # nothing after the failed preflight: no VM saved, no other host touched
    assert not [c for c in calls if c["key"] == "vm_cpr.save"]
    assert not [c for c in calls if c["host"] != "h1" and c["key"] != "vm_cpr.status"]  # the pre-run probe reads


def test_a_wave_stops_before_any_vm_pauses_when_one_host_fails_its_preflight(tmp_path):
    # one wave of two hosts (a canary of 2); the stand-in hosts never get as far as the kexec
    inv = hosts_inventory(("h2", "h3"), h3={"standin": {"kexec": {"failed": True, "msg": "h3 refuses the load"}}})
    inv["hypervisors"]["vars"]["guestmemfs_rollout"] = {"canary": 2}
    out, calls = play(tmp_path, inv, "liveupdate.yml")
    assert out.returncode == 2, out.stdout + out.stderr
    assert not [c for c in calls if c["key"] == "vm_cpr.save"]
    # h2's new kernel is unloaded again, and h2 fails naming h3
    assert [c["args"].get("state") for c in calls if c["key"] == "kexec" and c["host"] == "h2"] == [None, "unloaded"]
    rows = dict((r["host"], r) for r in run_rows(tmp_path))
    assert rows["h3"]["outcome"] == "failed" and "h3 refuses the load" in rows["h3"]["reason"]
    assert rows["h2"]["outcome"] == "failed" and "h3 failed the preflight" in rows["h2"]["reason"]


def test_the_restore_wait_shows_progress(tmp_path):
    vms = {"vm1": {"state": "restored", "blackout_s": 1.5}, "vm2": {"state": "restoring"}}
    standin = {"update_step": {"step": "wait", "reason": "past the kexec", "running_release": "6.1.0-old",
                               "target_release": UNAME, "target_build": "", "kernel": "/boot/vmlinuz", "initrd": ""},
               "vm_cpr.wait": [
                   {"done": False, "vms": vms, "restored": 1, "total": 2, "last_step": "vm2: verifying its memory"},
                   {"done": True, "vms": dict(vms, vm2={"state": "restored", "blackout_s": 2.5}), "restored": 2,
                    "total": 2, "last_step": "vm2 restored", "booted_as_loaded": True}]}
    out, calls = play(tmp_path, hosts_inventory(("h1",), h1={"standin": standin}), "liveupdate.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "h1: restoring, 1 of 2 VMs restored after" in out.stdout
    assert "the host's last step: vm2: verifying its memory" in out.stdout
    waits = [c for c in calls if c["key"] == "vm_cpr.wait"]
    assert len(waits) == 2 and all(int(c["args"]["poll"]) <= 25 for c in waits)
    assert "ASYNC POLL" not in out.stdout
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"], r["reason"]) for r in rows] == [("h1", "updated", "2 of 2 VMs restored")]
    blackout = json.loads((tmp_path / "report" / "blackout.json").read_text())
    assert [(b["host"], b["vm"], b["wave"], b["run_id"] == rows[0]["run_id"]) for b in blackout] == [
        ("h1", "vm1", 1, True), ("h1", "vm2", 1, True)]


@pytest.mark.min_core
def test_the_host_updates_itself_while_the_controller_follows_its_journal(tmp_path):
    # One detached process per host (vm_cpr action=update) saves and kexecs; the controller only follows
    # the journal in slices: saving, kexecing (the host away: it waits for it), then the host's own
    # restore. The canary's memory check is full, and the run's report says so.
    verify = {"status": "ok", "mode": "full", "algo": "crc32", "chunks": 256}
    vms = {"vm1": {"state": "restored", "blackout_s": 1.5, "verify": verify}}
    standin = {"vm_cpr.wait": [
        {"done": False, "progress": "saving", "restored": 0, "total": 1, "last_step": "saving: 0 of 1 VMs saved"},
        {"done": False, "progress": "kexec", "restored": 0, "total": 1, "last_step": "every VM saved, kexecing"},
        {"done": True, "progress": "done", "vms": vms, "restored": 1, "total": 1, "last_step": "vm1 resumed",
         "booted_as_loaded": True}],
        "update_step": dict(DEFAULTS["update_step"], target_release=UNAME)}
    out, calls = play(tmp_path, hosts_inventory(("h1",), h1={"standin": standin}), "liveupdate.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "h1: saving, 0 of 1 VMs restored after" in out.stdout
    assert "h1: kexec, 0 of 1 VMs restored after" in out.stdout
    assert "ASYNC POLL" not in out.stdout
    keys = [c["key"] for c in calls]
    assert "vm_cpr.save" not in keys and keys.count("vm_cpr.update") == 1 and keys.count("vm_cpr.wait") == 3
    update = [c for c in calls if c["key"] == "vm_cpr.update"][0]
    assert update["args"]["manifest_mode"] == "full"  # the canary proves its kernel pair
    assert all(c["args"]["update_id"] == update["args"]["update_id"] for c in calls if c["key"] == "vm_cpr.wait")
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"], r["memory_check"]) for r in rows] == [("h1", "updated", "full")]
    blackout = json.loads((tmp_path / "report" / "blackout.json").read_text())
    assert [(b["vm"], b["verify"], b["verify_mode"], b["checksum"], b["pair"]) for b in blackout] == [
        ("vm1", "ok", "full", "crc32", "6.1.0-old -> " + UNAME)]
    assert "proven by a full memory check in this run" in (tmp_path / "report" / "blackout.txt").read_text()


@pytest.mark.min_core
def test_later_waves_check_a_sample_once_the_canary_proved_the_pair(tmp_path):
    vms = {"vm1": {"state": "restored", "blackout_s": 1.5, "verify": {"status": "ok", "mode": "full"}}}
    step = dict(DEFAULTS["update_step"], target_release=UNAME)
    wait = {"done": True, "vms": vms, "restored": 1, "total": 1, "last_step": "vm1 resumed", "booted_as_loaded": True}
    standins = dict((h, {"standin": {"update_step": step, "vm_cpr.wait": wait}}) for h in ("h1", "h2", "h3"))
    inv = hosts_inventory(("h1", "h2", "h3"), **standins)
    out, calls = play(tmp_path, inv, "liveupdate.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    modes = dict((c["host"], c["args"]["manifest_mode"]) for c in calls if c["key"] == "vm_cpr.update")
    assert modes == {"h1": "full", "h2": "sampled", "h3": "sampled"}, modes
    # guestmemfs_verify: full checks every chunk in every wave
    out, calls = play(tmp_path, inv, "liveupdate.yml", "-e", "guestmemfs_verify=full")
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(c["args"]["manifest_mode"] for c in calls if c["key"] == "vm_cpr.update") == {"full"}


def test_a_pair_a_host_proved_in_an_earlier_run_is_sampled_from_the_canary_on(tmp_path):
    # A rollout run one job per wave (AWX): the canary's job proved the pair and its host keeps the
    # proof in its journal; the next job reads it from every host and samples from its first wave.
    pair = "6.1.0-old -> " + UNAME
    vms = {"vm1": {"state": "restored", "blackout_s": 1.5, "verify": {"status": "ok", "mode": "sampled"}}}
    step = dict(DEFAULTS["update_step"], target_release=UNAME)
    wait = {"done": True, "vms": vms, "restored": 1, "total": 1, "last_step": "vm1 resumed", "booted_as_loaded": True}
    proof = {"result": "proven", "update_id": "u-canary", "ts": 1765000000.0, "vms": 2, "modes": ["full"]}
    standins = dict((h, {"standin": {"update_step": step, "vm_cpr.wait": wait}}) for h in ("h1", "h2", "h3"))
    standins["h0"] = {"standin": {"update_step": dict(step, step="done"),
                                  "vm_cpr.status": {"vms": {}, "phase": "restored", "proofs": {pair: proof}}}}
    inv = hosts_inventory(("h0", "h1", "h2", "h3"), **standins)
    out, calls = play(tmp_path, inv, "liveupdate.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    modes = dict((c["host"], c["args"]["manifest_mode"]) for c in calls if c["key"] == "vm_cpr.update")
    assert modes == {"h1": "sampled", "h2": "sampled", "h3": "sampled"}, modes
    text = (tmp_path / "report" / "blackout.txt").read_text()
    assert ("proven before this run, as the hosts' journals keep it (this run checks extents and a sample): %s "
            "(by h0, update u-canary, 2025-12-06 05:46 UTC)" % pair) in text
    assert "proven by a full memory check in this run" not in text
    assert [r["memory_check"] for r in run_rows(tmp_path) if r["host"] != "h0"] == ["sampled"] * 3
    handed = json.loads((tmp_path / "report" / "kernel_proofs.json").read_text())
    assert handed["guestmemfs_kernel_proofs"][pair]["proven_by"] == ["h0"]
    assert handed["guestmemfs_kernel_proofs"][pair]["proven"] is True

    # The next wave's job sees only its own hosts, none of which proved the pair: the proofs the last
    # run handed on (AWX: its set_stats artifact; here -e @kernel_proofs.json) carry it.
    (tmp_path / "handed.json").write_text(json.dumps(handed))
    del standins["h0"]
    wave2 = hosts_inventory(("h1", "h2", "h3"), **standins)
    out, calls = play(tmp_path, wave2, "liveupdate.yml")
    assert set(c["args"]["manifest_mode"] for c in calls if c["key"] == "vm_cpr.update") == {"full"}
    out, calls = play(tmp_path, wave2, "liveupdate.yml", "-e", "@" + str(tmp_path / "handed.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(c["args"]["manifest_mode"] for c in calls if c["key"] == "vm_cpr.update") == {"sampled"}

    # A check of the pair that failed on any host (h3's journal) takes the proof back: full everywhere,
    # the canary's full pass in this run included, and the report says how to clear it.
    failed = {"result": "failed", "update_id": "u-bad", "ts": 1765000100.0, "detail": "vm1 content_changed: chunk 9"}
    standins["h3"]["standin"]["vm_cpr.status"] = {"vms": {}, "phase": "restored", "proofs": {pair: failed}}
    wave2 = hosts_inventory(("h1", "h2", "h3"), **standins)
    vms["vm1"]["verify"]["mode"] = "full"
    out, calls = play(tmp_path, wave2, "liveupdate.yml", "-e", "@" + str(tmp_path / "handed.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    modes = dict((c["host"], c["args"]["manifest_mode"]) for c in calls if c["key"] == "vm_cpr.update")
    assert modes == {"h1": "full", "h2": "full", "h3": "full"}, modes
    assert ("NOT proven, a memory check of it failed (checked in full on every host until cleared with "
            "`agent proofs --forget '%s'` on h3): %s (h3: vm1 content_changed: chunk 9)" % (pair, pair)) in (
                tmp_path / "report" / "blackout.txt").read_text()


@pytest.mark.min_core
def test_an_update_that_stopped_before_its_kexec_is_reported_and_its_vms_restored(tmp_path):
    # The host's process could not kexec (refused, or the kexec did not start): it restored the VMs
    # itself; the wait fails at once from the journal and the rescue unloads the kernel.
    standin = {"vm_cpr.wait": {"failed": True, "progress": "stopped", "msg": "the update stopped on this boot before a "
                               "kexec (phase rolled_back): the kexec did not happen: no kernel is loaded for kexec"},
               "update_step": [DEFAULTS["update_step"], dict(DEFAULTS["update_step"], step="start", reason="rolled back")]}
    out, calls = play(tmp_path, hosts_inventory(("h1",), h1={"standin": standin}), "liveupdate.yml")
    assert out.returncode == 2, out.stdout + out.stderr
    rows = run_rows(tmp_path)
    assert rows[0]["outcome"] == "failed" and "no kernel is loaded for kexec" in rows[0]["reason"]
    assert "The kexec did not happen: the VMs run on the running kernel" in rows[0]["reason"]
    keys = [c["key"] for c in calls]
    assert keys.index("vm_cpr.update") < keys.index("vm_cpr.wait") < keys.index("vm_cpr.restore")
    unload = [c for c in calls if c["key"] == "kexec" and c["args"].get("state") == "unloaded"]
    assert len(unload) == 1
    restore = [c for c in calls if c["key"] == "vm_cpr.restore"]
    assert restore[0]["args"]["update_id"] == [c for c in calls if c["key"] == "vm_cpr.update"][0]["args"]["update_id"]


def test_a_limit_updates_only_the_limited_hosts(tmp_path):
    out, calls = play(tmp_path, hosts_inventory(), "liveupdate.yml", "--check", "--limit", "h2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "h2: wave 1; 6.1.0-old -> 6.12.0-new" in out.stdout
    assert set(c["host"] for c in calls) == {"h2"}
    assert [r["host"] for r in run_rows(tmp_path)] == ["h2"]


def test_a_host_that_failed_earlier_in_the_run_is_named(tmp_path):
    collection(tmp_path)
    outer = tmp_path / "outer.yml"
    playbooks = tmp_path / "collections" / "ansible_collections" / "guestmemfs" / "liveupdate" / "playbooks"
    outer.write_text(yaml.safe_dump([
        {"name": "Something before the update", "hosts": "hypervisors", "gather_facts": False,
         "tasks": [{"ansible.builtin.fail": {"msg": "injected"}, "when": "inventory_hostname == 'h2'"}]},
        {"ansible.builtin.import_playbook": str(playbooks / "liveupdate.yml")}]))
    out, calls = play(tmp_path, hosts_inventory(), str(outer), "--check")
    assert out.returncode == 2
    assert ("h2 failed earlier in this run (see its error above), and Ansible leaves a failed host out of every "
            "later play") in out.stdout
    assert "--limit '!h2'" in out.stdout
    assert not calls


@pytest.mark.min_core
@pytest.mark.parametrize("playbook", ["plan.yml", "sizing.yml", "prepare.yml", "liveupdate.yml", "report.yml", "kernel.yml"])
def test_an_inventory_without_the_hypervisors_group_is_a_clear_error(tmp_path, playbook):
    out, calls = play(tmp_path, hosts_inventory(group="kvm_hosts"), playbook)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "No host of the inventory is in 'hypervisors'" in out.stdout
    assert "-e guestmemfs_hosts=GROUP" in out.stdout
    assert not calls


def test_sizing_with_a_limit(tmp_path):
    inv, facts = small_fleet(4)
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out, calls = play(tmp_path, inv, "sizing.yml", "-e", "guestmemfs_facts_from=%s" % (tmp_path / "facts.json"),
                      "-e", "guestmemfs_sizing_record=true", "--limit", "hv000001")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "report" / "sizing.json").read_text())["hosts"]
    assert [r["host"] for r in rows] == ["hv000001"]
    assert "hv000001: %s (" % rows[0]["size"] in out.stdout
    assert not calls  # planned from the facts file: no host was asked


def test_reports_default_to_the_directory_the_command_runs_from(tmp_path):
    out, calls = play(tmp_path, hosts_inventory(), "liveupdate.yml", "--check", report_env=False)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("liveupdate.json", "liveupdate.txt", "blackout.json"):
        assert (tmp_path / "guestmemfs-report" / name).exists(), name
    assert not (tmp_path / "report").exists() and calls
    assert report_dir({}, "/srv/ops") == "/srv/ops/guestmemfs-report"
    assert report_dir({"GUESTMEMFS_REPORT_DIR": "out"}, "/srv/ops") == "/srv/ops/out"
    assert report_dir({"GUESTMEMFS_REPORT_DIR": "/var/tmp/r"}, "/srv/ops") == "/var/tmp/r"


@pytest.mark.min_core
def test_the_host_report_gives_a_readiness_verdict(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "qemu-system-x86_64").write_text("#!/bin/sh\necho 'QEMU emulator version 10.1.0'\n")
    (bindir / "qemu-system-x86_64").chmod(0o755)
    ready = {"kernel_release": "6.12.0", "kexec_file": True, "memory": {"total_bytes": 1 << 36, "numa_nodes": [{}]},
             "kernel_config": dict((o, "y") for o in OPTIONS), "cmdline": {"drift": []},
             "backend_mount": {"mounted": True}, "vms_at_stake": []}
    blocked = dict(ready, kexec_file=False, kernel_config=dict(ready["kernel_config"], CONFIG_FS_DAX="n"),
                   backend_mount={"mounted": False}, cmdline={"drift": ["memmap=8G!4G"]})
    h1 = {"standin": {"guestmemfs_facts": {"ansible_facts": {"guestmemfs": ready}},
                      "vm_cpr.status": {"phase": "restored", "vms": {}}},
          "guestmemfs_vms": [{"name": "vm1", "memory": "1G"}]}
    h2 = {"standin": {"guestmemfs_facts": {"ansible_facts": {"guestmemfs": blocked}},
                      "vm_cpr.status": {"phase": "saved", "vms": {}}}}
    inv = hosts_inventory(("h1", "h2"), h1=h1, h2=h2)
    os.environ["PATH"], old = str(bindir) + os.pathsep + os.environ["PATH"], os.environ["PATH"]
    try:
        out, calls = play(tmp_path, inv, "report.yml")
    finally:
        os.environ["PATH"] = old
    assert out.returncode == 0, out.stdout + out.stderr
    rows = dict((r["host"], r) for r in json.loads((tmp_path / "report" / "hosts.json").read_text()))
    assert rows["h1"]["verdict"] == "ready" and rows["h1"]["blocked_by"] == [] and rows["h1"]["vms"] == ["vm1"]
    assert rows["h1"]["backend"] == "pmem" and rows["h1"]["mount"]["mounted"] is True
    assert rows["h2"]["verdict"] == "blocked"
    assert rows["h2"]["blocked_by"] == [
        "the running kernel has no kexec_file_load", "kernel option CONFIG_FS_DAX not set", "ext4 not mounted on /mnt/vmmem",
        "boot configuration drift: memmap=8G!4G",
        "an update is in flight (journal phase saved): re-run liveupdate.yml or see the agent status"]
    assert sorted(c["host"] for c in calls if c["key"] == "vm_cpr.status") == ["h1", "h2"]
    table = (tmp_path / "report" / "hosts.txt").read_text()
    assert "2 hosts: 1 ready, 1 blocked" in table


def test_each_run_keeps_its_own_reports_and_the_top_level_names_the_last(tmp_path):
    # A failed canary (run-1), then a re-run that does nothing (check mode, run-2): run-1's table
    # must survive the re-run, in its own directory; the top-level names and latest show run-2.
    inv = hosts_inventory(h1={"standin": {"kexec": {"failed": True, "msg": "kexec_file_load: stand-in refusal"}}})
    out, calls = play(tmp_path, inv, "liveupdate.yml", "-e", "guestmemfs_run_id=run-1")
    assert out.returncode == 2, out.stdout + out.stderr
    first = run_rows(tmp_path)
    assert [r["outcome"] for r in first] == ["failed", "not run", "not run"]
    out, calls = play(tmp_path, hosts_inventory(), "liveupdate.yml", "--check", "-e", "guestmemfs_run_id=run-2")
    assert out.returncode == 0, out.stdout + out.stderr
    report = tmp_path / "report"
    kept = json.loads((report / "run-1" / "liveupdate.json").read_text())
    assert kept == first and "kexec_file_load: stand-in refusal" in (report / "run-1" / "liveupdate.txt").read_text()
    assert (report / "run-1" / "waves.json").exists() and (report / "run-1" / "waves" / "wave-001.limit").exists()
    assert [r["outcome"] for r in run_rows(tmp_path)] == ["checked"] * 3  # the top-level name: the last run's
    assert os.readlink(str(report / "latest")) == "run-2"
    for name in ("liveupdate.json", "liveupdate.txt", "blackout.json", "blackout.txt"):
        assert os.readlink(str(report / name)) == "run-2/" + name
        assert (report / name).read_text() == (report / "latest" / name).read_text(), name
    # A check run writes no plan: the top-level plan is still the last one written, run-1's.
    assert not (report / "run-2" / "waves.json").exists()
    assert os.readlink(str(report / "waves.json")) == "run-1/waves.json"
    assert os.readlink(str(report / "waves")) == "run-1/waves" and (report / "waves" / "wave-001.limit").read_text()


def quickstart_dry_runs():
    """The commands of docs/quickstart.md's dry runs, as an operator copies them."""
    with open(os.path.join(conftest.ROOT, "docs", "quickstart.md")) as fh:
        doc = fh.read()
    block = doc.split("## 3. Dry runs", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].split() for line in block.splitlines() if line.startswith("ansible-playbook ")]


@pytest.mark.min_core
def test_the_quickstart_dry_runs_on_its_sample_inventory(tmp_path):
    # docs/quickstart.md followed as written: its sample inventory copied to inventory/mycluster, the
    # dry-run commands run from that directory, the hosts local stand-ins (only their connection and
    # what their modules answer are added, in host_vars, which the sample leaves to the operator).
    import shutil
    from fleet_inventory import host_facts
    commands = quickstart_dry_runs()
    assert [c[3] for c in commands] == ["guestmemfs.liveupdate." + n for n in ("report", "sizing", "plan", "liveupdate")]
    mycluster = tmp_path / "inventory" / "mycluster"
    shutil.copytree(os.path.join(conftest.ROOT, "inventory", "sample"), str(mycluster))
    (mycluster / "host_vars").mkdir(exist_ok=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "qemu-system-x86_64").write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.2'\n")
    (bindir / "qemu-system-x86_64").chmod(0o755)
    facts = host_facts(__import__("random").Random(3), 1)["guestmemfs"]
    facts.update(kernel_release="6.12.0", kexec_file=True, cmdline={"drift": []}, vms_at_stake=[],
                 backend_mount={"mounted": True}, kernel_config=dict((o, "y") for o in OPTIONS))
    for host in ("hv1", "hv2", "hv3"):
        (mycluster / "host_vars" / ("%s.yml" % host)).write_text(yaml.safe_dump({
            "ansible_connection": "local", "ansible_become": False, "ansible_python_interpreter": sys.executable,
            "standin": {"guestmemfs_facts": {"ansible_facts": {"guestmemfs": facts}}}}))
    collection(tmp_path)
    os.environ["PATH"], old = str(bindir) + os.pathsep + os.environ["PATH"], os.environ["PATH"]
    try:
        outs = []
        for argv in commands:
            # the installed collection: the copy with stand-in host modules; reports where the command runs
            out, calls = play_argv(tmp_path, argv)
            assert out.returncode == 0, " ".join(argv) + "\n" + out.stdout + out.stderr
            outs.append(out.stdout)
    finally:
        os.environ["PATH"] = old
    report = tmp_path / "guestmemfs-report"
    hosts = json.loads((report / "hosts.json").read_text())
    assert [(r["host"], r["verdict"]) for r in hosts] == [("hv1", "ready"), ("hv2", "ready"), ("hv3", "ready")]
    assert [r["host"] for r in json.loads((report / "sizing.json").read_text())["hosts"]] == ["hv1", "hv2", "hv3"]
    waves = [w["hosts"] for w in json.loads((report / "waves.json").read_text())["waves"]]
    assert waves[0] == ["hv1"] and sorted(h for w in waves for h in w) == ["hv1", "hv2", "hv3"]
    assert [(r["host"], r["outcome"]) for r in json.loads((report / "liveupdate.json").read_text())] == [
        ("hv1", "checked"), ("hv2", "checked"), ("hv3", "checked")]
    assert "Check mode: nothing was changed and nothing waits." in outs[3]
    assert "hv1: wave 1; 6.1.0-old -> 6.12.0-new; would start (nothing in flight)" in outs[3]


def play_argv(tmp_path, argv):
    """One command line of the docs run from tmp_path against the copy of the collection."""
    calls = tmp_path / "calls.jsonl"
    out = subprocess.run([ANSIBLE_PLAYBOOK] + argv[1:], cwd=str(tmp_path), env=playbook_env(tmp_path), capture_output=True, text=True,
                         timeout=300, check=False)
    made = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return out, made


@pytest.mark.parametrize("group", ["hypervisors", "kvm_hosts"])
def test_a_build_only_kernel_run_needs_no_hypervisors_and_installs_nowhere(tmp_path, group):
    # scripts/kernel-build (and so scripts/guest-kernel and scripts/demo on a fresh machine) builds
    # on the controller without an inventory of hypervisors.
    missing = tmp_path / "no-such-source.tar.xz"
    out, calls = play(tmp_path, hosts_inventory(group=group), "kernel.yml", "-e", "kernel_build_only=true",
                      "-e", "kernel_build_tarball=%s" % missing, "-e", "kernel_build_dir=%s" % (tmp_path / "kb"))
    assert "No host of the inventory" not in out.stdout
    # It went on to the build itself, which names its missing source; no hypervisor was touched.
    assert str(missing) in out.stdout, out.stdout + out.stderr
    assert not calls


@pytest.mark.min_core
def test_build_only_lifts_the_inventory_check_for_kernel_yml_alone(tmp_path):
    out, calls = play(tmp_path, hosts_inventory(group="kvm_hosts"), "liveupdate.yml", "-e", "kernel_build_only=true")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "No host of the inventory is in 'hypervisors'" in out.stdout
    assert not calls
