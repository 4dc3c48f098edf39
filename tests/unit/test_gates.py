"""The controller-side gates (plugins/plugin_utils/gates.py): maintenance windows, the PromQL gate
against a local Prometheus-compatible endpoint, the controller command, the webhook against a
local HTTP server, and the fleet run lock."""

import datetime
import json
import os
import subprocess
import sys

import pytest

from localhttp import Endpoint, scalar, vector
from ansible_collections.guestmemfs.liveupdate.plugins.plugin_utils import gates

UTC = datetime.timezone.utc


def at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


@pytest.fixture
def http():
    e = Endpoint()
    yield e
    e.close()


def test_windows():
    # 2026-12-05 is a Saturday
    night = {"days": ["sat"], "hours": ["22:00-04:00"]}
    assert gates.window_gate(night, at("2026-12-05 23:30"))["ok"]
    assert gates.window_gate(night, at("2026-12-06 03:59"))["ok"]  # past midnight: still Saturday's window
    out = gates.window_gate(night, at("2026-12-06 04:00"))
    assert not out["ok"] and out["next_open"] == "2026-12-12T22:00:00Z"
    assert out["detail"] == ("outside the window (sat 22:00-04:00 UTC): it is Sun 2026-12-06 04:00 UTC; "
                             "the window next opens Sat 2026-12-12 22:00")
    assert not gates.window_gate(night, at("2026-12-05 03:00"))["ok"]  # Friday's night is not in it
    weekdays = {"days": ["Monday", "tue", "wed", "thu", "fri"], "hours": ["09:00-12:00", "13:00-17:00"],
                "timezone": "Europe/Berlin"}
    assert gates.window_gate(weekdays, at("2026-12-07 08:30"))["ok"]  # 09:30 in Berlin
    assert not gates.window_gate(weekdays, at("2026-12-07 11:30"))["ok"]  # 12:30 in Berlin
    assert gates.window_gate(None)["ok"]
    assert gates.window_gate({"hours": "00:00-24:00"}, at("2026-12-07 11:30"))["ok"]


@pytest.mark.parametrize("spec,msg", [
    ({"days": ["someday"]}, "'someday' is not a day"), ({"hours": ["9-17"]}, "is not HH:MM-HH:MM"),
    ({"hours": ["10:00-10:00"]}, "not a range of the day"), ({"timezone": "Mars/Olympus"}, "no such time zone"),
    ({"day": ["mon"]}, "unknown key"), ({"days": []}, "must be a list of days")])
def test_bad_windows_are_refused(spec, msg):
    with pytest.raises(gates.GateError, match=msg):
        gates.window_gate(spec, at("2026-12-07 11:30"))


def test_promql_verdicts():
    assert gates.promql_verdict(vector()) == (True, "empty result")
    ok, detail = gates.promql_verdict(vector(1, 1))  # two alerts firing
    assert not ok and detail.startswith("2 samples, expected an empty result: ") and '"instance": "h1"} 1' in detail
    assert gates.promql_verdict(vector(1, 1), expect="true") == (True, "true (2 samples equal to 1)")
    assert gates.promql_verdict(scalar(1), expect="true") == (True, "true (1 sample equal to 1)")
    assert gates.promql_verdict(vector(1, 0), expect="true")[0] is False
    assert not gates.promql_verdict(vector(), expect="true")[0]
    assert not gates.promql_verdict(scalar(0), expect="true")[0]
    assert gates.promql_verdict({"status": "error", "error": "parse error"}) == (False, "the query failed: parse error")


def test_the_prometheus_gate_asks_a_local_endpoint_until_it_passes(http):
    q = 'ALERTS{alertstate="firing"}'
    http.answers[q] = [vector(1), vector(1), vector()]
    lines = []
    out = gates.prometheus_gate({"url": http.url, "query": q, "timeout": 30, "interval": 0.2}, progress=lines.append)
    assert out["ok"] and out["attempts"] == 3 and out["detail"] == q + ": empty result"
    assert http.queries == [q, q, q] and len(lines) == 2 and "asking again in 0 s" in lines[0]
    failing = gates.prometheus_gate({"url": http.url, "query": q + "x", "timeout": 0})
    assert not failing["ok"] and failing["attempts"] == 1 and "HTTP Error 400" in failing["detail"]
    assert "parse error" in failing["detail"]
    down = gates.prometheus_gate({"url": "http://127.0.0.1:9", "query": "up", "timeout": 0})
    assert not down["ok"] and "cannot ask http://127.0.0.1:9" in down["detail"]
    with pytest.raises(gates.GateError, match="needs url"):
        gates.prometheus_gate({"query": "up"})
    with pytest.raises(gates.GateError, match="on_failure must be one of stop, warn"):
        gates.prometheus_gate({"url": http.url, "query": "up", "on_failure": "ignore"})


def test_the_command_gate(tmp_path):
    script = tmp_path / "gate.sh"
    script.write_text('#!/bin/sh\necho "$GUESTMEMFS_GATE_PHASE $GUESTMEMFS_GATE_HOSTS" >> %s\n'
                      '[ -e %s ] || { echo not yet >&2; touch %s; exit 1; }\n' % (
                          tmp_path / "seen", tmp_path / "ok", tmp_path / "ok"))
    script.chmod(0o755)
    out = gates.command_gate({"command": str(script), "interval": 0.1, "timeout": 10},
                             env={"GUESTMEMFS_GATE_PHASE": "after_resume", "GUESTMEMFS_GATE_HOSTS": "h1"})
    assert out["ok"] and out["attempts"] == 2 and out["rc"] == 0
    assert (tmp_path / "seen").read_text() == "after_resume h1\nafter_resume h1\n"
    bad = gates.command_gate({"command": ["sh", "-c", "echo degraded >&2; exit 4"], "timeout": 0})
    assert not bad["ok"] and bad["detail"] == "sh -c echo degraded >&2; exit 4 exited 4: degraded"
    slow = gates.command_gate({"command": "sleep 30", "timeout": 1})
    assert not slow["ok"] and "no exit within 1 s (killed)" in slow["detail"]


def test_the_webhook(http):
    out = gates.notify({"url": http.url + "/hook", "headers": {"X-Token": "t0"}}, "wave_start",
                       {"run_id": "r1", "wave": 2, "hosts": ["h2", "h3"]})
    assert out["sent"] and out["detail"] == "wave_start: HTTP 200"
    post = http.posts[0]
    assert (post["event"], post["run_id"], post["wave"], post["hosts"]) == ("wave_start", "r1", 2, ["h2", "h3"])
    assert post["_headers"]["X-Token"] == "t0" and post["_headers"]["Content-Type"] == "application/json"
    assert post["time"].endswith("Z")
    http.status = 500
    failed = gates.notify({"url": http.url}, "rollout_stop", {"reason": "r"})
    assert not failed["sent"] and "HTTP Error 500" in failed["detail"] and len(http.posts) == 3  # with its retry
    skipped = gates.notify({"url": http.url, "events": ["rollout_stop"]}, "wave_start", {})
    assert skipped["skipped"] and len(http.posts) == 3
    with pytest.raises(gates.GateError, match="unknown event"):
        gates.notify({"url": http.url}, "wave_middle", {})


def test_the_run_lock(tmp_path):
    path = str(tmp_path / "locks" / "prod.lock")
    me = {"user": "ops", "controller": "ctl1", "pid": os.getpid()}
    first = gates.acquire(path, "prod", 600, run_id="r1", holder=me, now=1000.0)
    assert first["holder"] == "ops@ctl1 (pid %d)" % os.getpid() and first["expires"] == "1970-01-01T00:26:40Z"
    other = {"user": "ann", "controller": "ctl2", "pid": 1}
    with pytest.raises(gates.GateError) as refused:
        gates.acquire(path, "prod", 600, run_id="r2", holder=other, now=1500.0)
    assert str(refused.value).startswith("another rollout of fleet prod is running: ops@ctl1 (pid %d) since "
                                         "1970-01-01T00:16:40Z (run r1)" % os.getpid())
    renewed = gates.renew(path, first["token"], now=1500.0)
    assert renewed["expires_ts"] == 2100.0
    # expired (its controller died elsewhere): taken over, the old one kept aside
    second = gates.acquire(path, "prod", 600, run_id="r2", holder=other, now=2200.0)
    assert second["took_over"] == "took over the lock of ops@ctl1 (pid %d): it expired at 1970-01-01T00:35:00Z" % os.getpid()
    assert [n for n in os.listdir(os.path.dirname(path)) if ".stale-" in n]
    with pytest.raises(gates.GateError, match=r"no longer holds the fleet lock .* \(now held by ann@ctl2"):
        gates.renew(path, first["token"])
    assert gates.release(path, first["token"]).startswith("the lock is not this run's")
    assert gates.release(path, second["token"]) == "released" and not os.path.exists(path)
    assert gates.release(path, second["token"]) == "no lock to release"


def test_a_lock_whose_process_is_gone_is_stale_at_once(tmp_path):
    path = str(tmp_path / "f.lock")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gates.acquire(path, "f", 3600, holder={"user": "ops", "controller": "ctl1", "pid": dead.pid})
    rec = gates.acquire(path, "f", 3600, holder={"user": "ops", "controller": "ctl1", "pid": os.getpid()})
    assert rec["took_over"] == "took over the lock of ops@ctl1 (pid %d): its process (pid %d on ctl1) is gone" % (
        dead.pid, dead.pid)
    assert json.load(open(path))["token"] == rec["token"]
