# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout's gates on the controller (docs/gates.md): when a wave may start (windows), whether
the fleet is healthy enough to go on (a PromQL query, a command), who is told (a webhook), and that
only one rollout runs per fleet (the run lock). Each gate is a small function with its inputs
checked first; the action plugins rollout_gate, rollout_notify and rollout_lock put them in front
of the playbook. None of them runs between a host's first pause and its last resume."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import json
import os
import re
import shlex
import socket
import subprocess
import time
import uuid

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # pragma: no cover - Python < 3.9 on the controller: UTC and local time only
    ZoneInfo = None
    ZoneInfoNotFoundError = KeyError

from ansible.module_utils.six.moves.urllib.parse import urlencode
from ansible.module_utils.urls import open_url

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import replace_file


class GateError(Exception):
    """Bad input for a gate: refused before anything acts."""


ON_FAILURE = ("stop", "warn")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)$")


def _keys(name, spec, allowed):
    if not isinstance(spec, dict):
        raise GateError("%s must be a dict, not %r" % (name, spec))
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise GateError("%s: unknown key(s) %s (known: %s)" % (name, ", ".join(extra), ", ".join(sorted(allowed))))


def _seconds(name, value, default, minimum=0):
    value = default if value is None else value
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise GateError("%s must be a number of seconds, not %r" % (name, value))
    if value < minimum:
        raise GateError("%s must be at least %s, not %s" % (name, minimum, value))
    return value


def on_failure(name, spec):
    action = (spec or {}).get("on_failure", "stop")
    if action not in ON_FAILURE:
        raise GateError("%s.on_failure must be one of %s, not %r" % (name, ", ".join(ON_FAILURE), action))
    return action


# ------------------------------------------------------------------------------------- windows

def parse_window(spec):
    """guestmemfs_window -> (days as weekday numbers, [(start_min, end_min)], tzinfo, tz name)."""
    _keys("guestmemfs_window", spec, ("days", "hours", "timezone"))
    days = spec.get("days", list(DAYS))
    if isinstance(days, str):
        days = [days]
    if not isinstance(days, list) or not days:
        raise GateError("guestmemfs_window.days must be a list of days (%s)" % ", ".join(DAYS))
    numbers = []
    for d in days:
        key = str(d).strip().lower()[:3]
        if key not in DAYS:
            raise GateError("guestmemfs_window.days: %r is not a day (%s)" % (d, ", ".join(DAYS)))
        numbers.append(DAYS.index(key))
    hours = spec.get("hours", ["00:00-24:00"])
    if isinstance(hours, str):
        hours = [hours]
    if not isinstance(hours, list) or not hours:
        raise GateError("guestmemfs_window.hours must be a list of HH:MM-HH:MM ranges")
    ranges = []
    for h in hours:
        m = _HOURS.match(str(h).replace(" ", ""))
        if not m:
            raise GateError("guestmemfs_window.hours: %r is not HH:MM-HH:MM (e.g. 22:00-04:00)" % (h,))
        start, end = int(m.group(1)) * 60 + int(m.group(2)), int(m.group(3)) * 60 + int(m.group(4))
        if start > 24 * 60 or end > 24 * 60 or start == end:
            raise GateError("guestmemfs_window.hours: %r is not a range of the day" % (h,))
        ranges.append((start, end))
    tzname = spec.get("timezone", "UTC")
    if tzname in ("UTC", "utc"):
        tz = datetime.timezone.utc
    elif tzname == "local":
        tz = datetime.datetime.now().astimezone().tzinfo
    else:
        if ZoneInfo is None:
            raise GateError("guestmemfs_window.timezone %r needs Python 3.9 on the controller (or UTC, local)" % tzname)
        try:
            tz = ZoneInfo(str(tzname))
        except (ZoneInfoNotFoundError, ValueError):
            raise GateError("guestmemfs_window.timezone: no such time zone %r (e.g. Europe/Berlin, UTC, local)" % tzname)
    return sorted(set(numbers)), ranges, tz, tzname


def in_window(window, when):
    """Whether ``when`` (an aware datetime) lies in the window. A range that ends before it starts
    (22:00-04:00) runs past midnight and belongs to the day it starts on."""
    days, ranges, tz, _name = window
    t = when.astimezone(tz)
    minute = t.hour * 60 + t.minute
    yesterday = (t.weekday() - 1) % 7
    for start, end in ranges:
        if start < end:
            if t.weekday() in days and start <= minute < end:
                return True
        elif (t.weekday() in days and minute >= start) or (yesterday in days and minute < end):
            return True
    return False


def window_gate(spec, now=None):
    """-> {ok, detail, next_open}: whether a wave may start now."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not spec:
        return {"ok": True, "detail": "no window set: any time", "next_open": None}
    window = parse_window(spec)
    if in_window(window, now):
        return {"ok": True, "detail": "inside the window (%s)" % describe_window(spec), "next_open": None}
    t = now.replace(second=0, microsecond=0)
    for _minute in range(8 * 24 * 60):
        t += datetime.timedelta(minutes=1)
        if in_window(window, t):
            break
    else:  # pragma: no cover - every valid window opens within a week
        t = None
    local = now.astimezone(window[2]).strftime("%a %Y-%m-%d %H:%M")
    opens = t.astimezone(window[2]).strftime("%a %Y-%m-%d %H:%M") if t else "never"
    return {"ok": False, "next_open": t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None,
            "detail": "outside the window (%s): it is %s %s; the window next opens %s" % (
                describe_window(spec), local, window[3], opens)}


def describe_window(spec):
    days = spec.get("days", list(DAYS))
    hours = spec.get("hours", ["00:00-24:00"])
    days = [days] if isinstance(days, str) else days
    days = "every day" if set(str(d).lower()[:3] for d in days) == set(DAYS) else ",".join(days)
    return "%s %s %s" % (days,
                         ",".join([hours] if isinstance(hours, str) else hours), spec.get("timezone", "UTC"))


# ------------------------------------------------------------------------------ health gates

def _retrying(check, timeout, interval, progress=None, clock=time.monotonic, sleep=time.sleep):
    """Ask ``check()`` -> (ok, detail, extra) until it passes or ``timeout`` seconds passed."""
    start = clock()
    attempts = 0
    while True:
        attempts += 1
        ok, detail, extra = check()
        took = round(clock() - start, 3)
        if ok or clock() + interval > start + timeout:
            out = {"ok": ok, "detail": detail, "seconds": took, "attempts": attempts}
            out.update(extra)
            return out
        if progress:
            progress("%s; asking again in %.0f s (at most %.0f s)" % (detail, interval, timeout))
        sleep(interval)


def check_prometheus(spec, name="guestmemfs_prometheus_gate"):
    _keys(name, spec, ("url", "query", "expect", "timeout", "interval", "on_failure", "before_wave", "after_resume",
                       "headers", "validate_certs"))
    if not spec.get("url") or not spec.get("query"):
        raise GateError("%s needs url (the Prometheus server, e.g. http://prometheus:9090) and query" % name)
    if spec.get("expect", "empty") not in EXPECT:
        raise GateError("%s.expect must be empty or true, not %r" % (name, spec.get("expect")))
    on_failure(name, spec)


# empty: no sample at all (ALERTS{alertstate="firing"} finds none: its samples are 1 when they fire,
# so a sample's value cannot mean "healthy" here); true: a scalar or at least one sample, each equal
# to 1 (a comparison with ``bool`` that holds, e.g. sum(up{job="node"}) == bool 12).
EXPECT = ("empty", "true")


def promql_verdict(answer, expect="empty"):
    """A /api/v1/query answer -> (ok, detail), as ``expect`` (EXPECT) wants it."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        err = answer.get("error") if isinstance(answer, dict) else None
        return False, "the query failed: %s" % (err or "status %r" % (answer.get("status") if isinstance(answer, dict) else answer))
    data = answer.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        values = [result[1]] if isinstance(result, list) and len(result) == 2 else []
        samples = ["scalar %s" % v for v in values]
    elif kind in ("vector", "matrix"):
        values, samples = [], []
        for s in result or []:
            vals = [s.get("value")] if kind == "vector" else s.get("values") or []
            for v in vals:
                values.append(v[1])
                samples.append("%s %s" % (json.dumps(s.get("metric", {}), sort_keys=True), v[1]))
    else:
        return False, "the query returned a %s, not a vector or scalar" % kind
    if not values:
        return (True, "empty result") if expect == "empty" else (False, "empty result, but the gate expects true")
    if expect == "true" and all(_float(v) == 1.0 for v in values):
        return True, "true (%d sample%s equal to 1)" % (len(values), "" if len(values) == 1 else "s")
    shown = "; ".join(samples[:5]) + (" and %d more" % (len(samples) - 5) if len(samples) > 5 else "")
    return False, "%d sample%s, expected %s: %s" % (len(values), "" if len(values) == 1 else "s",
                                                    "an empty result" if expect == "empty" else "true (1)", shown)


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def prometheus_gate(spec, progress=None, **kw):
    """Ask Prometheus (GET /api/v1/query) until the query gives what ``expect`` wants, or the timeout passed."""
    check_prometheus(spec)
    url = spec["url"].rstrip("/") + "/api/v1/query?" + urlencode({"query": spec["query"]})
    timeout = _seconds("guestmemfs_prometheus_gate.timeout", spec.get("timeout"), 60)
    interval = _seconds("guestmemfs_prometheus_gate.interval", spec.get("interval"), 10, minimum=0.1)

    def check():
        try:
            resp = open_url(url, method="GET", headers=spec.get("headers") or {}, timeout=max(1, min(timeout, 30)),
                            validate_certs=spec.get("validate_certs", True))
            answer = json.loads(resp.read().decode("utf-8"))
        except Exception as exc:  # pylint: disable=broad-except  # any failure to ask is a failed gate
            body = ""
            if hasattr(exc, "read"):
                try:
                    body = ": " + exc.read().decode("utf-8", "replace")[:300]
                except Exception:  # pylint: disable=broad-except
                    pass
            return False, "cannot ask %s: %s%s" % (spec["url"], exc, body), {}
        ok, detail = promql_verdict(answer, spec.get("expect", "empty"))
        return ok, "%s: %s" % (spec["query"], detail), {}
    return _retrying(check, timeout, interval, progress, **kw)


def check_command(spec, name="guestmemfs_command_gate"):
    _keys(name, spec, ("command", "timeout", "interval", "on_failure", "before_wave", "after_resume"))
    cmd = spec.get("command")
    if not cmd or not isinstance(cmd, (str, list)):
        raise GateError("%s.command must be a command line or a list (program and arguments)" % name)
    on_failure(name, spec)


def command_gate(spec, env=None, progress=None, **kw):
    """Run the command on the controller until it exits 0, or the timeout passed. It is given
    GUESTMEMFS_GATE_* in its environment (phase, wave, hosts, host)."""
    check_command(spec)
    cmd = spec["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
    timeout = _seconds("guestmemfs_command_gate.timeout", spec.get("timeout"), 60)
    interval = _seconds("guestmemfs_command_gate.interval", spec.get("interval"), 10, minimum=0.1)
    full_env = dict(os.environ)
    full_env.update(dict((k, str(v)) for k, v in (env or {}).items()))
    deadline = time.monotonic() + timeout

    def check():
        try:
            proc = subprocess.run(argv, env=full_env, capture_output=True, text=True, check=False,
                                  timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False, "%s: no exit within %.0f s (killed)" % (" ".join(argv), timeout), {"rc": None}
        except OSError as exc:
            return False, "%s: %s" % (" ".join(argv), exc), {"rc": None}
        tail = (proc.stderr.strip() or proc.stdout.strip())[-500:]
        detail = "%s exited %d%s" % (" ".join(argv), proc.returncode, (": " + tail) if tail else "")
        return proc.returncode == 0, detail, {"rc": proc.returncode, "stdout": proc.stdout[-2000:],
                                              "stderr": proc.stderr[-2000:], "cmd": argv}
    return _retrying(check, timeout, interval, progress, **kw)


# ------------------------------------------------------------------------------- notifications

EVENTS = ("rollout_start", "wave_start", "wave_end", "host_kexec", "host_resumed", "gate_failed", "rollout_stop",
          "rollout_end", "rollout_refused")


def check_webhook(spec, name="guestmemfs_webhook"):
    _keys(name, spec, ("url", "headers", "timeout", "required", "events", "validate_certs"))
    if not spec.get("url"):
        raise GateError("%s needs url (where the events are POSTed as JSON)" % name)
    unknown = sorted(set(spec.get("events") or []) - set(EVENTS))
    if unknown:
        raise GateError("%s.events: unknown event(s) %s (known: %s)" % (name, ", ".join(unknown), ", ".join(EVENTS)))


def notify(spec, event, payload, now=None):
    """POST {event, time, ...payload} as JSON -> {sent, detail}; one retry after a second. A webhook
    that is down does not stop the rollout unless it is ``required``."""
    check_webhook(spec)
    if event not in EVENTS:
        raise GateError("unknown event %r" % event)
    if spec.get("events") and event not in spec["events"]:
        return {"sent": False, "detail": "event %s not in guestmemfs_webhook.events" % event, "skipped": True}
    body = dict(payload, event=event,
                time=(now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    headers = {"Content-Type": "application/json"}
    headers.update(spec.get("headers") or {})
    last = None
    for attempt in range(2):
        try:
            resp = open_url(spec["url"], data=json.dumps(body, sort_keys=True), method="POST", headers=headers,
                            timeout=_seconds("guestmemfs_webhook.timeout", spec.get("timeout"), 10, minimum=1),
                            validate_certs=spec.get("validate_certs", True))
            return {"sent": True, "detail": "%s: HTTP %s" % (event, resp.getcode()), "body": body}
        except Exception as exc:  # pylint: disable=broad-except  # reported, the caller decides
            last = exc
            if attempt == 0:
                time.sleep(1)
    return {"sent": False, "detail": "%s: POST %s failed: %s" % (event, spec["url"], last), "body": body}


# -------------------------------------------------------------------------------- the run lock

LOCK_DIR_ENV = "GUESTMEMFS_LOCK_DIR"


def check_guest(spec, name="guestmemfs_guest_gate"):
    """guestmemfs_guest_gate's input (the in-guest gate runs on the hosts, guest_health)."""
    _keys(name, spec, ("enabled", "command", "timeout", "on_failure", "before_wave", "after_resume"))
    cmd = spec.get("command")
    if cmd is not None and (not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd)):
        raise GateError("%s.command must be a list: the program and its arguments, run in each guest" % name)
    _seconds(name + ".timeout", spec.get("timeout"), 60, minimum=1)
    on_failure(name, spec)


def check_lock(spec, name="guestmemfs_lock"):
    _keys(name, spec, ("enabled", "path", "fleet", "ttl"))
    _seconds(name + ".ttl", spec.get("ttl"), 3600, minimum=60)


def fleet_id(hosts):
    """A fleet's name when none is given: its hosts and where they are ({name: (address, port)}), so
    that one inventory always gives one lock, and two fleets (two test fleets on other ports) two."""
    text = "\n".join("%s@%s:%s" % (h, a, p) for h, (a, p) in sorted(hosts.items()))
    return "fleet-" + __import__("hashlib").sha256(text.encode()).hexdigest()[:12]


def lock_path(fleet, environ=None):
    """Where a fleet's lock lives by default: $GUESTMEMFS_LOCK_DIR, else ~/.cache/guestmemfs-liveupdate/locks."""
    environ = os.environ if environ is None else environ
    directory = environ.get(LOCK_DIR_ENV) or os.path.join("~", ".cache", "guestmemfs-liveupdate", "locks")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", fleet)
    return os.path.join(os.path.expanduser(directory), safe + ".lock")


def lock_holder():
    """Who runs this rollout: user, controller and the ansible-playbook process (this plugin's parent)."""
    try:
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        user = str(os.getuid())
    return {"user": user, "controller": socket.gethostname(), "pid": os.getppid()}


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    except (TypeError, ValueError):
        return True  # not a pid: cannot tell, so only its expiry frees it
    return True


def _read_lock(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise GateError("cannot read the fleet lock %s: %s" % (path, exc))
    except ValueError:
        return {"holder": "unknown (the lock file is not JSON)", "expires_ts": 0}


def _describe(rec):
    return "%s since %s (run %s), renewed %s, expires %s" % (
        rec.get("holder"), rec.get("started"), rec.get("run_id"), rec.get("renewed"), rec.get("expires"))


def _stamp(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stale_reason(rec, now, holder):
    """Why a lock no longer holds (None if it does): expired, or its process on this controller is gone."""
    if float(rec.get("expires_ts", 0)) < now:
        return "it expired at %s" % rec.get("expires")
    if rec.get("controller") == holder["controller"] and rec.get("pid") and not _pid_alive(rec["pid"]):
        return "its process (pid %s on %s) is gone" % (rec["pid"], rec["controller"])
    return None


def acquire(path, fleet, ttl, run_id=None, holder=None, now=None):
    """Take the fleet's run lock -> the lock record (with its ``token``) and ``took_over`` (why an
    earlier lock was stale), or GateError naming the holder. Created with O_EXCL; a stale lock is
    first renamed aside, which only one of two racing runs can do."""
    ttl = _seconds("guestmemfs_lock.ttl", ttl, 3600, minimum=60)
    holder = holder or lock_holder()
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    took_over = None
    for _attempt in range(3):
        now_ts = now if now is not None else time.time()
        rec = dict(holder, fleet=fleet, run_id=run_id, token=uuid.uuid4().hex,
                   holder="%s@%s (pid %s)" % (holder["user"], holder["controller"], holder["pid"]),
                   started=_stamp(now_ts), renewed=_stamp(now_ts), expires=_stamp(now_ts + ttl),
                   started_ts=now_ts, expires_ts=now_ts + ttl, ttl=ttl)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise GateError("cannot create the fleet lock %s: %s" % (path, exc))
            other = _read_lock(path)
            if other is None:
                continue  # released meanwhile
            why = stale_reason(other, now_ts, holder)
            if why is None:
                raise GateError("another rollout of fleet %s is running: %s. Lock: %s. Wait for it to end; if its "
                                "controller is gone, the lock frees itself when it expires" % (fleet, _describe(other), path))
            aside = "%s.stale-%s" % (path, rec["token"])
            try:
                os.rename(path, aside)
            except OSError:
                continue  # another run moved it first: try again
            took_over = "took over the lock of %s: %s" % (other.get("holder"), why)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(rec, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        return dict(rec, took_over=took_over, path=path)
    raise GateError("could not take the fleet lock %s: it changed hands three times while trying" % path)


def renew(path, token, now=None):
    """Push the expiry of our lock on by its TTL -> the record; GateError when it is no longer ours."""
    rec = _read_lock(path)
    if rec is None or rec.get("token") != token:
        raise GateError("this run no longer holds the fleet lock %s (%s): stopping here, as another rollout may be "
                        "running" % (path, "now held by " + _describe(rec) if rec else "it was removed"))
    now_ts = now if now is not None else time.time()
    rec.update(renewed=_stamp(now_ts), expires=_stamp(now_ts + rec["ttl"]), expires_ts=now_ts + rec["ttl"])
    replace_file(path, json.dumps(rec, indent=2, sort_keys=True).encode(), mode=0o644)
    return dict(rec, path=path)


def release(path, token):
    """Remove our lock -> what was done; another run's lock is left alone."""
    rec = _read_lock(path)
    if rec is None:
        return "no lock to release"
    if rec.get("token") != token:
        return "the lock is not this run's (%s): left alone" % _describe(rec)
    os.unlink(path)
    return "released"


def read_lock(path):
    return _read_lock(path)
