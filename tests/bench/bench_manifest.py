"""Benchmark: the memory manifest's modes against a raw sequential read of the same file.

    python tests/bench/bench_manifest.py [--gib 2] [--dir DIR] [--runs 3]

Writes a file of random bytes, drops nothing from the page cache (every mode reads the same cached
pages, so the ratios compare the work, not the disk), and prints per mode and per checksum (crc32,
blake2b, sha256: the full mode with each, side by side, interleaved): median and min seconds, CPU
seconds, GiB/s, the ratio to the raw read, and the manifest's size per GiB.
"""

import argparse
import atexit
import json
import mmap
import os
import shutil
import statistics
import tempfile
import time

from _collection import importable_collection


def raw_read(path):
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        chunk = 1 << 20
        total = 0
        for off in range(0, size, chunk):
            total += len(m[off:off + chunk])
        m.close()
    finally:
        os.close(fd)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    importable_collection()
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import manifest as mf

    d = tempfile.mkdtemp(prefix="glu-manifest-bench-", dir=a.dir)
    atexit.register(shutil.rmtree, d, True)
    path = os.path.join(d, "vm.ram")
    size = int(a.gib * (1 << 30))
    with open(path, "wb") as fh:
        block = os.urandom(1 << 20)
        for _block in range(size >> 20):
            fh.write(block)
    gib = size / (1 << 30)
    cases = [("raw read", lambda: raw_read(path)),
             ("extents", lambda: mf.record_file(path, mode="extents")),
             ("sampled 64", lambda: mf.record_file(path, mode="sampled", samples=64, seed=1))]
    cases += [("full " + algo, lambda algo=algo: mf.record_file(path, mode="full", algo=algo))
              for algo in sorted(mf.ALGOS)]
    raw_read(path)  # warm the page cache once
    base = None
    print("manifest of a %.1f GiB file, %d interleaved runs, %d threads, load %s" % (
        gib, a.runs, min(8, os.cpu_count() or 1), open("/proc/loadavg").read().split()[0]))
    times = dict((name, []) for name, _fn in cases)
    cpu = dict((name, []) for name, _fn in cases)
    outs = {}
    for _run in range(a.runs):
        for name, fn in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print("%-14s %9s %9s %9s %9s %9s %14s" % ("mode", "median_s", "min_s", "cpu_s", "GiB/s", "x raw", "manifest/GiB"))
    for name, _fn in cases:
        med = statistics.median(times[name])
        base = base or med
        size_note = "-" if name == "raw read" else "%.1f KiB" % (len(json.dumps(outs[name])) / gib / 1024)
        row = (name, med, min(times[name]), statistics.median(cpu[name]), gib / med, med / base, size_note)
        print("%-14s %9.3f %9.3f %9.3f %9.2f %9.2f %14s" % row)


if __name__ == "__main__":
    main()
