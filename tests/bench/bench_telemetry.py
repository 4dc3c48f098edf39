"""Benchmark: what the metrics textfile and the events add to a journal write inside the blackout
window.

    python tests/bench/bench_telemetry.py [--vms 8] [--runs 300] [--dir DIR]

One journal write of one VM's step (read, change, fsynced write under the lock) with the textfile
off and no event, against the same write followed by one event with the textfile on, in phase
``verified`` (the restore: every write renders the textfile) and in phase ``saving`` (the save,
all VMs paused: only phase changes render it), interleaved, on the same filesystem (DIR, default a
temporary directory under /var/tmp). Prints min and median wall milliseconds, CPU milliseconds per
write, the ratio to the journal alone, and the load.
"""

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

from _collection import importable_collection


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    importable_collection()
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import events, journal, metrics
    d = tempfile.mkdtemp(prefix="glu-bench-telemetry-", dir=a.dir or "/var/tmp")
    try:
        journal.JOURNAL = os.path.join(d, "journal.json")
        events.EVENTS = os.path.join(d, "events.jsonl")
        os.makedirs(os.path.join(d, "textfile"))
        on, off = os.path.join(d, "on.json"), os.path.join(d, "off.json")
        with open(on, "w") as fh:
            fh.write('{"textfile_dir": "%s"}' % os.path.join(d, "textfile"))
        with open(off, "w") as fh:
            fh.write('{"textfile_dir": ""}')
        metrics.CONFIG = off
        vms = dict(("vm%d" % i, {"state": "saving", "argv": ["qemu-system-x86_64"] * 40}) for i in range(a.vms))
        journal.update_journal(lambda j: j.update(update_id="bench", phase="saving", vms=vms))
        times = {"journal only": [], "+ event, textfile (verified)": [], "+ event (saving)": []}
        cpus = dict((k, 0.0) for k in times)
        for i in range(a.runs):
            for case in (sorted(times) if i % 2 else sorted(times, reverse=True)):
                metrics.CONFIG = on if case != "journal only" else off
                name = "vm%d" % (i % a.vms)
                phase = "saving" if "saving" in case else "verified"
                journal.update_journal(lambda j, phase=phase: j.update(phase=phase))
                c0, t0 = cpu(), time.perf_counter()
                journal.update_journal(journal.set_vm(name, state="saved", stop_ts=time.time()))
                if case != "journal only":
                    events.emit("save", "bench", name, detail="bench", state_bytes=1)
                times[case].append(time.perf_counter() - t0)
                cpus[case] += cpu() - c0
        base = statistics.median(times["journal only"])
        print("one journal write of %d VMs, %d interleaved runs, on %s, load %s" % (
            a.vms, a.runs, d, open("/proc/loadavg").read().split()[0]))
        print("%-28s %10s %10s %12s %7s" % ("case", "min ms", "median ms", "CPU ms/write", "ratio"))
        for case in sorted(times):
            med = statistics.median(times[case])
            row = (case, min(times[case]) * 1e3, med * 1e3, cpus[case] / a.runs * 1e3, med / base)
            print("%-28s %10.3f %10.3f %12.3f %7.2f" % row)
    finally:
        shutil.rmtree(d, True)


if __name__ == "__main__":
    main()
