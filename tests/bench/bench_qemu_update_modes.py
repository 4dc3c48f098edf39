"""Benchmark: a QEMU update's blackout by cpr-reboot (what the collection does) against cpr-transfer,
on one fleet host, interleaved, from one QEMU build to another.

    python3 tests/bench/bench_qemu_update_modes.py [--name fleet] [--host host1] [--runs 5]
        [--install-new qemu-system-x86 --release trixie-backports] [--out DIR]

On the host: the QEMU installed now is kept once as the old one (bin, modules, firmware, in
/var/lib/guestmemfs-bench/qemu-old: Debian's QEMU finds them relative to itself), then
--install-new installs the new one (apt, from --release). The runs (tests/bench/qemu_update_modes_host.py)
move a counting guest without virtio devices (AHCI, e1000, ISA serial) from the old QEMU to the new
one by each mode; per host the old QEMU's STOP -> the new one's RESUME, and whether the guest's
counter went on from where it stopped. Prints a table (min, median per mode; cpr-transfer / cpr-reboot)
and writes bench-qemu-update-modes.json and .txt to --out, also when a run fails.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fleet"))
import fleet  # noqa: E402
from counter_guest import COUNTER_ADDR  # noqa: E402

OLD_DIR = "/var/lib/guestmemfs-bench/qemu-old"
NEW = "/usr/bin/qemu-system-x86_64"
# Debian's layout, relative to the executable: PREFIX/bin, PREFIX/lib/ARCH/qemu, PREFIX/share/qemu.
KEEP_OLD = ("test -x {d}/bin/qemu-system-x86_64 || {{ mkdir -p {d}/bin {d}/lib/x86_64-linux-gnu {d}/share && "
            "cp -a /usr/bin/qemu-system-x86_64 {d}/bin/ && cp -a /usr/lib/x86_64-linux-gnu/qemu {d}/lib/x86_64-linux-gnu/ && "
            "cp -aL /usr/share/qemu {d}/share/; }}").format(d=OLD_DIR)
HOST_SCRIPT = "/root/qemu_update_modes_host.py"
COUNTER_GUEST = "/var/lib/guestmemfs-guest/counter-guest.mb"


def ssh(state, host, command, stdin=None, timeout=900):
    r = subprocess.run(fleet.ssh_base(state, host) + [command], input=stdin, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError("%s: %s failed (rc %d): %s" % (host["name"], command[:80], r.returncode, r.stderr.strip()[-500:]))
    return r.stdout.strip()


def version(state, host, binary):
    return ssh(state, host, "%s --version" % binary).splitlines()[0]


def summary(rows):
    """min and median blackout per mode over the runs that completed with the guest counting on;
    cpr-transfer / cpr-reboot (min over min, median over median)."""
    modes = {}
    for mode in sorted(set(r["mode"] for r in rows)):
        ok = [r["blackout_s"] for r in rows if r["mode"] == mode and "error" not in r and r.get("counting_on")]
        bad = [r for r in rows if r["mode"] == mode and ("error" in r or not r.get("counting_on"))]
        if ok:
            modes[mode] = {"n": len(ok), "failed": len(bad), "min": min(ok), "median": round(statistics.median(ok), 3)}
        else:
            modes[mode] = {"n": 0, "failed": len(bad)}
    ratio = None
    t, c = modes.get("cpr-transfer", {}), modes.get("cpr-reboot", {})
    if t.get("n") and c.get("n"):
        ratio = {"min": round(t["min"] / c["min"], 3), "median": round(t["median"] / c["median"], 3)}
    return {"modes": modes, "cpr-transfer / cpr-reboot": ratio}


def table(meta, rows):
    s = summary(rows)
    lines = ["old %s -> new %s, host %s" % (meta.get("old", "?"), meta.get("new", "?"), meta.get("host", "?")),
             "%-14s %3s %6s %10s %10s" % ("mode", "n", "failed", "min_s", "median_s")]
    for mode, v in s["modes"].items():
        lines.append("%-14s %3d %6d %10s %10s" % (mode, v["n"], v["failed"], v.get("min", "-"), v.get("median", "-")))
    r = s["cpr-transfer / cpr-reboot"]
    if r:
        lines.append("cpr-transfer / cpr-reboot: min %.3f, median %.3f" % (r["min"], r["median"]))
    lines.append("blackout: the old QEMU's STOP -> the new QEMU's RESUME; load (1 min, on the host) per run: %s" % ", ".join(
        "%.1f" % row["load"] for row in rows))
    for row in rows:
        if "error" in row:
            lines.append("FAILED %s round %d: %s" % (row["mode"], row["round"], row["error"][:300]))
    return s, "\n".join(lines) + "\n"


def write(out, meta, rows):
    s, text = table(meta, rows)
    with open(os.path.join(out, "bench-qemu-update-modes.json"), "w") as fh:
        json.dump({"meta": meta, "runs": rows, "summary": s}, fh, indent=1)
    with open(os.path.join(out, "bench-qemu-update-modes.txt"), "w") as fh:
        fh.write(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--name", default="fleet")
    ap.add_argument("--host", default="host1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--install-new", metavar="PACKAGE", help="apt package of the new QEMU (e.g. qemu-system-x86)")
    ap.add_argument("--release", help="the release --install-new comes from (e.g. trixie-backports)")
    ap.add_argument("--out", default=os.path.join(fleet.cache_dir(), "bench-qemu-update-modes"))
    a = ap.parse_args()
    state = fleet.load_state(a.name)
    if not state:
        raise SystemExit("fleet %r is not up: python3 tests/fleet/fleet.py --name %s up" % (a.name, a.name))
    host = dict((h["name"], h) for h in state["hosts"])[a.host]
    os.makedirs(a.out, exist_ok=True)
    ssh(state, host, KEEP_OLD)
    if a.install_new:
        source = " from " + a.release if a.release else ""
        print("[%s] installing %s%s on %s" % (time.strftime("%H:%M:%S"), a.install_new, source, a.host), flush=True)
        ssh(state, host, "DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -q %s%s" % ("-t %s " % a.release if a.release else "", a.install_new), timeout=1800)
    meta = {"host": a.host, "old": version(state, host, OLD_DIR + "/bin/qemu-system-x86_64"), "new": version(state, host, NEW),
            "runs": a.runs, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if meta["old"] == meta["new"]:
        raise SystemExit("the old and the new QEMU are one build (%s): give --install-new" % meta["new"])
    with open(os.path.join(HERE, "qemu_update_modes_host.py")) as fh:
        ssh(state, host, "cat > " + HOST_SCRIPT, stdin=fh.read())
    with open(os.path.join(ROOT, "plugins", "module_utils", "qmp.py")) as fh:  # the host script's QMP client
        ssh(state, host, "cat > " + os.path.join(os.path.dirname(HOST_SCRIPT), "qmp.py"), stdin=fh.read())
    command = "python3 %s --old %s/bin/qemu-system-x86_64 --new %s --kernel %s --counter-addr %#x --runs %d" % (
        HOST_SCRIPT, OLD_DIR, NEW, COUNTER_GUEST, COUNTER_ADDR, a.runs)
    argv = fleet.ssh_base(state, host) + [command]
    print("[%s] %s -> %s, %d rounds" % (time.strftime("%H:%M:%S"), meta["old"], meta["new"], a.runs), flush=True)
    rows = []
    try:
        # One line per run as it ends (each a few seconds to a minute under TCG).
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                row = json.loads(line)
                rows.append(row)
                said = row.get("error") or "blackout %.3f s, counter %s" % (row["blackout_s"], row["counter"])
                print("[%s]   round %d %-13s %s" % (time.strftime("%H:%M:%S"), row["round"], row["mode"], said), flush=True)
                write(a.out, meta, rows)
            err = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit("the host's runs failed (rc %d): %s" % (proc.returncode, err.strip()[-500:]))
    finally:
        sys.stdout.write(write(a.out, meta, rows))
    return 0 if rows and all("error" not in r and r.get("counting_on") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
