"""The rollout's gates in playbooks/liveupdate.yml (docs/gates.md), run by ansible-playbook on local
stand-in hosts (test_liveupdate_playbook.py's copy of the collection; here its kexec is a stand-in
too, so that a whole update runs): the webhook, a local Prometheus-compatible endpoint and the
controller command are real local processes; the window, the run lock, the failed-host budget and
the operator's confirmation are the playbook's own."""

import datetime
import json
import os
import sys
import time

import pytest

from localhttp import Endpoint, vector
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import gates
from test_liveupdate_playbook import UNAME, collection, hosts_inventory, play, run_rows
from standin_action import DEFAULTS

# A whole update on a stand-in host: it "boots" the running kernel, so that the playbook's own check
# of the booted release (uname -rv on the controller) holds.
STEP = dict(DEFAULTS["update_step"], target_release=UNAME)
PROOF = {"release": UNAME, "version": "#1", "kho_exec_from": "6.1.0-old", "kho_exec_count": 1, "systemd_kexecs": None,
         "verdict": "kexec", "evidence": ["running " + UNAME, "KHO: exec from 6.1.0-old (count 1)"]}
WAIT = dict(DEFAULTS["vm_cpr.wait"], kexec_proof=PROOF)


def fleet(names=("h1", "h2"), **per_host):
    return hosts_inventory(names, **dict((h, dict({"standin": {"update_step": STEP, "vm_cpr.wait": WAIT}}, **per_host.get(h, {})))
                                         for h in names))


@pytest.fixture
def http():
    e = Endpoint()
    yield e
    e.close()


def run(tmp_path, inv, *args, playbook="liveupdate.yml", **kw):
    if not (tmp_path / "collections").exists():
        collection(tmp_path, reboot=True)
    return play(tmp_path, inv, playbook, *args, **kw)


@pytest.mark.min_core
def test_a_whole_rollout_tells_every_event_in_order_and_releases_its_lock(tmp_path, http):
    http.answers['ALERTS{alertstate="firing"}'] = vector()
    inv = fleet()
    inv["hypervisors"]["vars"].update(
        guestmemfs_webhook={"url": http.url + "/hook"},
        guestmemfs_prometheus_gate={"url": http.url, "query": 'ALERTS{alertstate="firing"}'},
        guestmemfs_command_gate={"command": ["sh", "-c", "echo $GUESTMEMFS_GATE_PHASE:$GUESTMEMFS_GATE_HOSTS >> %s"
                                             % (tmp_path / "gate.log")]},
        guestmemfs_guest_gate={"enabled": True})
    out, calls = run(tmp_path, inv)
    assert out.returncode == 0, out.stdout + out.stderr
    assert http.events() == ["rollout_start",
                             "wave_start", "host_kexec", "host_resumed", "wave_end",
                             "wave_start", "host_kexec", "host_resumed", "wave_end", "rollout_end"]
    posts = http.posts
    run_id = posts[0]["run_id"]
    assert run_id and all(p["run_id"] == run_id and p["fleet"].startswith("fleet-") for p in posts)
    assert posts[0]["waves"] == [["h1"], ["h2"]] and posts[0]["degraded"] == {}
    assert [(p["wave"], p.get("host")) for p in posts[1:5]] == [(1, None), (1, "h1"), (1, "h1"), (1, None)]
    assert posts[3]["kexec_proof"]["verdict"] == "kexec" and posts[3]["vms"][0]["vm"] == "vm1"
    assert posts[-1]["reason"] == "every wave ran" and posts[-2]["outcomes"] == {"h2": "updated"}
    # the gates: before each wave and after each host, on the controller; each guest, on the host
    assert (tmp_path / "gate.log").read_text().split() == ["before_wave:h1", "after_resume:h1", "before_wave:h2",
                                                           "after_resume:h2"]
    assert http.queries == ['ALERTS{alertstate="firing"}'] * 4
    assert [c["host"] for c in calls if c["key"] == "guest_health"] == ["h1", "h1", "h2", "h2"]
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"]) for r in rows] == [("h1", "updated"), ("h2", "updated")]
    gates = [(g["phase"], g["gate"], g["ok"]) for g in rows[0]["gates"]]
    assert gates == [("before_wave", "prometheus", True), ("before_wave", "command", True), ("before_wave", "guest", True),
                     ("after_resume", "guest", True), ("after_resume", "prometheus", True), ("after_resume", "command", True)]
    assert rows[0]["gates"][2]["vms"]["vm1"]["detail"] == "guest-ping answered"
    assert rows[0]["kexec_proof"]["kho_exec_from"] == "6.1.0-old"
    table = (tmp_path / "report" / "liveupdate.txt").read_text()
    assert "kexec kho#1" in table and "6 ok" in table
    assert os.listdir(str(tmp_path / "locks")) == []  # released


def test_a_failing_in_guest_gate_on_the_canary_stops_before_wave_2(tmp_path, http):
    bad = dict(DEFAULTS["guest_health"], passed=False, failed_vms=["vm1"],
               vms={"vm1": {"ok": False, "detail": "no answer from the guest agent in time (after 60 s)", "seconds": 60}})
    inv = fleet(("h1", "h2", "h3"), h1={"standin": {"update_step": STEP, "vm_cpr.wait": WAIT,
                                                    "guest_health": [DEFAULTS["guest_health"], bad]}})
    inv["hypervisors"]["vars"].update(guestmemfs_webhook={"url": http.url}, guestmemfs_guest_gate={"enabled": True})
    out, calls = run(tmp_path, inv)
    assert out.returncode == 2, out.stdout + out.stderr
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"]) for r in rows] == [("h1", "failed"), ("h2", "not run"), ("h3", "not run")]
    assert ("is updated to %s" % UNAME) in rows[0]["reason"]
    assert "the in-guest gate: vm1: no answer from the guest agent in time (after 60 s)" in rows[0]["reason"]
    assert rows[0]["gates"][-1]["vms"]["vm1"]["ok"] is False
    assert http.events() == ["rollout_start", "wave_start", "host_kexec", "host_resumed", "wave_end", "rollout_stop"]
    stop = http.posts[-1]
    assert stop["failed"] == ["h1"] and stop["reason"].startswith(
        "1 failed host(s) (h1), more than guestmemfs_max_failed_hosts=0 - h1: h1 is updated to")
    assert not [c for c in calls if c["host"] != "h1" and c["key"] not in ("vm_cpr.status",)]
    assert os.listdir(str(tmp_path / "locks")) == []


@pytest.mark.min_core
def test_a_promql_gate_that_fires_stops_the_next_wave_before_it_starts(tmp_path, http):
    q = 'ALERTS{alertstate="firing", severity="critical"}'
    # wave 1's gate and h1's after-resume gate find nothing; then an alert fires
    http.answers[q] = [vector(), vector(), vector(1)]
    inv = fleet()
    inv["hypervisors"]["vars"].update(guestmemfs_webhook={"url": http.url},
                                      guestmemfs_prometheus_gate={"url": http.url, "query": q, "timeout": 0})
    out, calls = run(tmp_path, inv, "-e", '{"guestmemfs_max_failed_hosts": 1}')
    assert out.returncode == 2, out.stdout + out.stderr
    rows = run_rows(tmp_path)
    assert [(r["host"], r["outcome"]) for r in rows] == [("h1", "updated"), ("h2", "failed")]
    assert rows[1]["reason"].startswith("Not starting wave 2: before_wave gate prometheus: %s: 1 sample, expected an "
                                        "empty result" % q)
    assert "Nothing was done in this wave." in rows[1]["reason"]
    assert not [c for c in calls if c["host"] == "h2" and c["key"] not in ("vm_cpr.status",)]
    assert http.events()[-2:] == ["wave_end", "rollout_stop"] and "wave_start" not in http.events()[5:]
    assert http.posts[-1]["reason"].startswith("every host of wave 2 failed")


@pytest.mark.min_core
def test_a_window_that_excludes_now_refuses_to_start(tmp_path, http):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=3)
    window = {"hours": ["%02d:00-%02d:30" % (later.hour, later.hour)]}
    inv = fleet()
    inv["hypervisors"]["vars"].update(guestmemfs_window=window, guestmemfs_webhook={"url": http.url})
    out, calls = run(tmp_path, inv)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Not starting the rollout: start gate window: outside the window (every day %s UTC)" % window["hours"][0] in out.stdout
    assert "the window next opens" in out.stdout and "Nothing was done." in out.stdout
    assert not calls
    assert http.events() == ["rollout_refused"] and "outside the window" in http.posts[0]["reason"]
    assert not os.path.exists(str(tmp_path / "locks"))  # no lock was taken


def test_a_second_rollout_of_the_fleet_is_refused_naming_the_holder(tmp_path):
    locks = tmp_path / "locks"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    inv = fleet(("h1",))
    # the first run's gate holds its wave (and the lock) until the second run is over
    done = tmp_path / "second-done"
    slow = dict(inv["hypervisors"]["vars"], guestmemfs_command_gate={
        "command": ["sh", "-c", "while [ ! -e %s ]; do sleep 0.2; done" % done], "timeout": 300})
    first_inv = {"hypervisors": dict(inv["hypervisors"], vars=slow)}
    collection(first_dir, reboot=True)
    first = play(first_dir, first_inv, "liveupdate.yml", lock_dir=locks, background=True)[0]
    try:
        for _tick in range(3000):
            if locks.exists() and os.listdir(str(locks)):
                break
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.1)
        held = json.loads((locks / os.listdir(str(locks))[0]).read_text())
        assert held["pid"] == first.pid  # ansible-playbook itself
        out, calls = run(second_dir, inv, lock_dir=locks)
        assert out.returncode == 2, out.stdout
        assert "Not starting the rollout: another rollout of fleet %s is running: %s since %s" % (
            held["fleet"], held["holder"], held["started"]) in out.stdout
        assert not calls
    finally:
        done.write_text("")
        text = first.communicate(timeout=300)[0]
    assert first.returncode == 0, text
    assert os.listdir(str(locks)) == []  # the first run released it


@pytest.mark.min_core
def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path):
    locks = tmp_path / "locks"
    inv = fleet(("h1",))
    # a run killed on this controller: its lock names a process that is gone
    fleet_name = gates.fleet_id({"h1": ("h1", "")})
    locks.mkdir()
    (locks / (fleet_name + ".lock")).write_text(json.dumps({
        "holder": "ops@%s (pid 999999999)" % os.uname()[1], "controller": os.uname()[1], "pid": 999999999,
        "token": "dead", "expires_ts": time.time() + 3600, "expires": "later", "started": "earlier"}))
    out, calls = run(tmp_path, inv, lock_dir=locks)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "took over the lock of ops@%s (pid 999999999): its process (pid 999999999 on %s) is gone" % (
        os.uname()[1], os.uname()[1]) in " ".join((out.stdout + out.stderr).split())
    assert os.listdir(str(locks)) == [n for n in os.listdir(str(locks)) if ".stale-" in n]


def test_hosts_already_degraded_count_against_the_budget(tmp_path):
    held = {"vms": {"vm1": {"state": "held"}}, "phase": "held"}
    inv = fleet(("h1", "h2", "h3"), h3={"standin": {"update_step": STEP, "vm_cpr.wait": WAIT, "vm_cpr.status": held}})
    out, calls = run(tmp_path, inv)
    assert out.returncode == 2, out.stdout
    assert ("Not starting the rollout: Hosts already degraded before the run: h3 (VMs not resumed (vm1): see agent "
            "status): more than guestmemfs_max_failed_hosts=0.") in " ".join(out.stdout.split())
    assert [c["key"] for c in calls] == ["vm_cpr.status"] * 3
    assert os.listdir(str(tmp_path / "locks")) == []
    # with a budget of 1, h3 takes it: the rollout runs, and the first failure stops it
    out, calls = run(tmp_path, inv, "-e", '{"guestmemfs_max_failed_hosts": 1}', "--check")
    assert out.returncode == 0, out.stdout


def test_a_wave_nobody_confirms_does_not_start(tmp_path):
    inv = fleet(("h1",))
    out, calls = run(tmp_path, inv, "-e", '{"guestmemfs_confirm_waves": true}')
    assert out.returncode == 2, out.stdout
    rows = run_rows(tmp_path)
    assert rows[0]["outcome"] == "failed" and "Wave 1 was not confirmed" in rows[0]["reason"]
    assert "without a terminal nobody can confirm" in rows[0]["reason"]
    assert [c["key"] for c in calls] == ["vm_cpr.status"]


def test_the_fleet_check_script_on_stand_in_hosts(tmp_path):
    # tests/fleet/gates_check.py as the fleet runs it, here against the stand-in collection: each
    # guest's agent answers the check run's ping, then fails the first real run's `sh -c 'exit 3'`
    import gates_check  # tests/fleet (conftest puts it on sys.path)
    colls = collection(tmp_path)[0]
    failing = dict(DEFAULTS["guest_health"], passed=False, failed_vms=["vm1"], vms={"vm1": {
        "ok": False, "detail": "/bin/sh -c exit 3 exited 3 in the guest: ", "seconds": 0.2, "exitcode": 3, "stdout": ""}})
    inv = fleet(("h1", "h2"), **dict((h, {"standin": {"update_step": STEP, "vm_cpr.wait": WAIT,
                                                      "guest_health": [DEFAULTS["guest_health"], failing]}})
                                     for h in ("h1", "h2")))
    (tmp_path / "inv.yml").write_text(json.dumps(inv))
    (tmp_path / "async").mkdir()
    env = dict(ANSIBLE_COLLECTIONS_PATH=colls, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false", STANDIN_CALLS=str(tmp_path / "calls"),
               ANSIBLE_ASYNC_DIR=str(tmp_path / "async"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    old = dict(os.environ)
    os.environ.update(env)
    try:
        rc = gates_check.main(["-i", str(tmp_path / "inv.yml"), "--out", str(tmp_path / "out"), "--hold", "300"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    result = json.loads((tmp_path / "out" / "gates-check.json").read_text())
    assert rc == 0, json.dumps(result, indent=1)
    assert [c["check"] for c in result["checks"]] == [
        "check run passes", "h1: every guest's agent answers", "h2: every guest's agent answers",
        "the first run holds the fleet lock", "a second run is refused naming the holder",
        "the first run stops (its gate failed)", "the canary failed on the in-guest gate", "no later wave ran",
        "the lock is released", "the webhook heard the stop in order", "a window that excludes now refuses to start",
        "the refusal is the only event", "no lock is left", "a firing PromQL gate stops the first wave",
        "the endpoint was asked"]


def test_a_second_rollout_in_the_same_playbook_run_starts(tmp_path):
    # molecule's update.yml imports liveupdate.yml twice (the update, then a re-run that must find
    # every host done): on the fleet, 2026-12-05, the re-run refused every wave with "the rollout
    # stopped (every wave ran)", the first rollout's end kept on localhost.
    both = tmp_path / "twice.yml"
    both.write_text("- ansible.builtin.import_playbook: guestmemfs.liveupdate.liveupdate\n"
                    "- ansible.builtin.import_playbook: guestmemfs.liveupdate.liveupdate\n")
    out, _calls = run(tmp_path, fleet(), playbook=str(both))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert "Not starting this wave" not in out.stdout
