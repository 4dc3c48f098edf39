"""Watch nested test guests from OUTSIDE their fleet hosts, across a live update.

A fleet host kexecs during a live update: every socket it holds dies with its kernel. This probe
runs on the controller, inside the fleet's network namespace (gmfs-<fleet>, made by fleet.py up),
and reaches each guest's workload (tests/fleet/guest/workload.c, TCP 7000) over the L2 guest
network. It opens ONE connection per guest before the update and never reconnects, so a connection
that is still answering afterwards proves the guest (its kernel's TCP state included) ran on.

    guest_probe.py start --fleet NAME --out FILE host1/vm1=10.77.1.11 ...   (daemonizes)
    guest_probe.py stop --out FILE
    guest_probe.py ask --fleet NAME host1/vm1=10.77.1.11 check-disk|sync-ro|status
    guest_probe.py report FILE [--json]

FILE gets one JSON line per event: {ts, mono, target, local_port, ok, reply | error}. A guest that
is paused (saved, host kexecing, restored) answers nothing for a minute or more: the probe keeps
the socket (no keepalive, a TCP user timeout of an hour) and keeps waiting for the reply to the
request it has outstanding, logging a timeout record every --timeout seconds meanwhile; the reply
that finally comes closes the gap. Runs as root (setns).
"""

import argparse
import json
import os
import select
import signal
import socket
import sys
import time

PORT = 7000
CLONE_NEWNET = 0x40000000
TCP_USER_TIMEOUT_MS = 3600 * 1000  # an hour of retransmission before the kernel gives up
SEQ_SLACK = 2  # seq is appended once a second; allow this much beyond the time that passed


def parse_target(text):
    """host1/vm1=10.77.1.11[:port] -> (label, ip, port)."""
    label, sep, addr = text.partition("=")
    if not sep or not label or not addr:
        raise argparse.ArgumentTypeError(f"target {text!r}: expected LABEL=IP[:PORT], e.g. host1/vm1=10.77.1.11")
    ip, _sep, port = addr.partition(":")
    return label, ip, int(port or PORT)


def enter_netns(fleet):
    path = f"/run/netns/gmfs-{fleet}"
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        else:  # Python < 3.12
            import ctypes  # pylint: disable=import-outside-toplevel
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def connect(ip, port, timeout=10):
    s = socket.create_connection((ip, port), timeout=timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    # Retransmit for up to an hour rather than the kernel's default ~15 min; the blackout is minutes.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


class Watch:
    """One target's connection: at most one request outstanding, replies matched in order."""

    def __init__(self, label, ip, port):
        self.label, self.ip, self.port = label, ip, port
        self.sock, self.local_port, self.buf = None, None, b""
        self.sent_mono = None   # when the outstanding request went out (None: none outstanding)
        self.last_timeout_log = None
        self.closed = False


def probe_loop(targets, out, interval, timeout, stop):
    """Poll every target each ``interval`` s; append records to ``out`` until ``stop()``."""
    def emit(w, **rec):
        rec = {"ts": round(time.time(), 3), "mono": round(time.monotonic(), 3), "target": w.label,
               "local_port": w.local_port, **rec}
        out.write(json.dumps(rec) + "\n")
        out.flush()

    watches = [Watch(*t) for t in targets]
    for w in watches:
        try:
            w.sock = connect(w.ip, w.port)
            w.local_port = w.sock.getsockname()[1]
            emit(w, ok=True, event="connected", peer=f"{w.ip}:{w.port}")
        except OSError as exc:
            w.closed = True
            emit(w, ok=False, event="closed", error=f"connect: {exc}")
    next_tick = time.monotonic()
    while not stop() and any(not w.closed for w in watches):
        now = time.monotonic()
        if now >= next_tick:
            for w in watches:
                if w.closed or w.sent_mono is not None:
                    continue  # still waiting for the last answer: never pile up requests
                try:
                    w.sock.send(b"status\n")
                    w.sent_mono, w.last_timeout_log = now, now
                except BlockingIOError:
                    pass  # send buffer full: the guest is not reading; try next tick
                except OSError as exc:
                    w.closed = True
                    emit(w, ok=False, event="closed", error=f"send: {exc}")
            next_tick += interval
            if next_tick < now:
                next_tick = now + interval
        live = [w for w in watches if not w.closed]
        wait = max(0.0, min(next_tick - time.monotonic(), 0.5))
        readable = select.select([w.sock for w in live], [], [], wait)[0] if live else []
        now = time.monotonic()
        for w in live:
            if w.sock in readable:
                try:
                    data = w.sock.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    w.closed = True
                    emit(w, ok=False, event="closed", error=f"recv: {exc}")
                    continue
                if data == b"":
                    w.closed = True
                    emit(w, ok=False, event="closed", error="connection closed by peer")
                    continue
                w.buf += data or b""
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    rtt = None if w.sent_mono is None else round(now - w.sent_mono, 3)
                    w.sent_mono = None
                    try:
                        emit(w, ok=True, rtt_s=rtt, reply=json.loads(line))
                    except ValueError:
                        emit(w, ok=False, rtt_s=rtt, error=f"bad reply: {line[:200]!r}")
            elif w.sent_mono is not None and now - w.last_timeout_log >= timeout:
                # The socket is kept and the request stays outstanding: this only says "silent".
                w.last_timeout_log = now
                emit(w, ok=False, event="timeout", error=f"no reply for {now - w.sent_mono:.0f}s",
                     waiting_s=round(now - w.sent_mono, 1))
    for w in watches:
        if not w.closed:
            emit(w, ok=True, event="stopped")
            w.sock.close()


def daemonize(log_path):
    if os.fork():
        return False
    os.setsid()
    if os.fork():
        os._exit(0)  # pylint: disable=protected-access
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return True


def cmd_start(a):
    pidfile = a.out + ".pid"
    if os.path.exists(pidfile):
        with open(pidfile) as fh:
            pid = int(fh.read().strip() or 0)
        if pid and os.path.exists(f"/proc/{pid}"):
            print(f"probe already running (pid {pid}) for {a.out}", file=sys.stderr)
            return 2
    if not os.path.exists(f"/run/netns/gmfs-{a.fleet}"):
        print(f"no network namespace gmfs-{a.fleet}: is the fleet up (fleet.py --name {a.fleet} up)?",
              file=sys.stderr)
        return 2
    if not daemonize(a.out + ".log"):
        for _attempt in range(100):  # parent: wait until the daemon has written its pidfile
            if os.path.exists(pidfile):
                print(f"probe started: {a.out} (pid file {pidfile})")
                return 0
            time.sleep(0.1)
        print(f"probe did not start; see {a.out}.log", file=sys.stderr)
        return 1
    enter_netns(a.fleet)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)
    try:
        with open(a.out, "a") as out:
            probe_loop(a.targets, out, a.interval, a.timeout, lambda: bool(stopping))
    finally:
        os.unlink(pidfile)
    os._exit(0)  # pylint: disable=protected-access


def cmd_stop(a):
    pidfile = a.out + ".pid"
    try:
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        print(f"no probe running for {a.out}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    for _attempt in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            print(f"probe {pid} stopped")
            return 0
        time.sleep(0.1)
    print(f"probe {pid} did not stop", file=sys.stderr)
    return 1


def cmd_ask(a):
    enter_netns(a.fleet)
    label, ip, port = a.target
    with socket.create_connection((ip, port), timeout=a.timeout) as s:
        s.sendall(a.command.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    print(json.dumps({"target": label, "command": a.command, "reply": json.loads(line) if line else None}))
    return 0 if line else 1


# ---------------------------------------------------------------- report

def load_records(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def analyse(records):
    """Per target: did the one connection last, how long was the guest silent (the longest gap
    between two replies, as seen from outside), and did the same process run on (boot_id and pid
    constant, counter never back and on after the resume, seq continued no faster than time
    allows, its memory intact)."""
    by_target = {}
    for r in records:
        by_target.setdefault(r["target"], []).append(r)
    result = {}
    for target, recs in by_target.items():
        replies = [r for r in recs if r.get("ok") and "reply" in r]
        closed = [r for r in recs if r.get("event") == "closed"]
        gaps = [(b["mono"] - a["mono"], i) for i, (a, b) in enumerate(zip(replies, replies[1:]))]
        gap_s, gap_at = max(gaps) if gaps else (0.0, -1)
        vals = [r["reply"] for r in replies]
        # Never back, and on after the resume. Not strictly up between two replies: a starved guest
        # may not run its 10 ms counter thread between two replies a few ms apart.
        counters = [v.get("counter", -1) for v in vals]
        after = counters[gap_at + 1:] if gaps and len(counters) - gap_at > 2 else counters
        counter_ok = (len(counters) > 1 and all(b >= a for a, b in zip(counters, counters[1:]))
                      and after[-1] > after[0])
        # The guest appends seq by its own clock, which may catch up faster than real time right after
        # the resume: what either clock saw pass, plus the slack.
        seq_ok = all(0 <= b.get("seq", -1) - a.get("seq", 0)
                     <= max(rb["mono"] - ra["mono"], b.get("uptime_s", 0) - a.get("uptime_s", 0)) + SEQ_SLACK
                     for (ra, a), (rb, b) in zip(zip(replies, vals), zip(replies[1:], vals[1:])))
        row = {
            "target": target,
            "local_ports": sorted({r["local_port"] for r in recs if r.get("local_port")}),
            "replies": len(replies),
            "connection_kept": bool(replies) and not closed,
            "closed_error": closed[0].get("error") if closed else None,
            "longest_gap_s": round(gap_s, 1),
            # The guest's clock stands still while it is paused (saved, restored), so what the gap
            # has beyond the guest's own uptime advance is the pause; TCP's retransmission backoff
            # is not in it. An estimate: a starved guest's clock may lag.
            "paused_s_est": round(gap_s - (vals[gap_at + 1].get("uptime_s", 0) - vals[gap_at].get("uptime_s", 0)), 1)
            if gaps else 0.0,
            "gap_start_ts": replies[gap_at]["ts"] if gaps else None,
            "replies_before_gap": gap_at + 1 if gaps else len(replies),
            "replies_after_gap": len(replies) - gap_at - 1 if gaps else 0,
            "timeouts": sum(1 for r in recs if r.get("event") == "timeout"),
            "boot_id_constant": len({v.get("boot_id") for v in vals}) == 1,
            "pid_constant": len({v.get("pid") for v in vals}) == 1,
            "conn_constant": len({v.get("conn") for v in vals}) == 1,
            "counter_continued": counter_ok,
            "seq_continued": seq_ok,
            "pattern_ok_always": bool(vals) and all(v.get("pattern_ok") is True for v in vals),
        }
        row["ok"] = bool(replies) and all(row[k] for k in (
            "connection_kept", "boot_id_constant", "pid_constant", "conn_constant", "counter_continued",
            "seq_continued", "pattern_ok_always"))
        result[target] = row
    return result


def yes(v):
    return "yes" if v else "NO"


def cmd_report(a):
    rows = analyse(load_records(a.file))
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        hdr = (f"{'target':<16} {'kept':<4} {'replies':>7} {'before':>6} {'after':>5} {'gap_s':>6} {'paused':>6} "
               f"{'boot_id':<7} {'pid':<4} {'counter':<7} {'seq':<4} {'pattern':<7} verdict")
        print(hdr)
        for r in rows.values():
            print(f"{r['target']:<16} {yes(r['connection_kept']):<4} {r['replies']:>7} {r['replies_before_gap']:>6} "
                  f"{r['replies_after_gap']:>5} {r['longest_gap_s']:>6.1f} {r['paused_s_est']:>6.1f} {yes(r['boot_id_constant']):<7} "
                  f"{yes(r['pid_constant']):<4} {yes(r['counter_continued']):<7} {yes(r['seq_continued']):<4} "
                  f"{yes(r['pattern_ok_always']):<7} {'ok' if r['ok'] else 'FAIL'}"
                  + (f"  ({r['closed_error']})" if r["closed_error"] else ""))
    return 0 if rows and all(r["ok"] for r in rows.values()) else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("start", help="daemonize and watch targets over one connection each")
    ps.add_argument("--fleet", required=True, help="fleet name (netns gmfs-NAME)")
    ps.add_argument("--out", required=True, help="JSONL file to append to (FILE.pid, FILE.log beside it)")
    ps.add_argument("--interval", type=float, default=1.0, help="seconds between requests (default 1)")
    ps.add_argument("--timeout", type=float, default=5.0,
                    help="log a timeout record after this many silent seconds; the socket is kept (default 5)")
    ps.add_argument("targets", nargs="+", type=parse_target, metavar="TARGET")
    pt = sub.add_parser("stop", help="stop the probe writing FILE")
    pt.add_argument("--out", required=True)
    pa = sub.add_parser("ask", help="one request on a new connection (check-disk, sync-ro, status)")
    pa.add_argument("--fleet", required=True)
    pa.add_argument("--timeout", type=float, default=30.0)
    pa.add_argument("target", type=parse_target)
    pa.add_argument("command", choices=["status", "check-disk", "sync-ro"])
    pr = sub.add_parser("report", help="per-target table (exit 1 unless every target passed)")
    pr.add_argument("file")
    pr.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    return {"start": cmd_start, "stop": cmd_stop, "ask": cmd_ask, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
