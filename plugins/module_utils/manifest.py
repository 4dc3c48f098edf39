# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is every VM's memory exactly where and what it was? A manifest of each memory file's size, its
physical extents and its content, recorded before kexec and compared after; a VM is resumed only
on an ``ok``.

Content is read through a shared read-only mapping (guestmemfs files have no read()), hashed per
chunk so a mismatch gives the first differing offset. ``full`` hashes every chunk; ``sampled``
hashes ``samples`` chunks chosen by a recorded seed. Extents come from FIEMAP plus the physical
base of the device (pmem) and are compared as physical ranges.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import array
import fcntl
import mmap
import os
import struct
import threading
import time
import zlib

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import read_json, write_json

CHUNK = 1024 * 1024
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HEAD = "=QQLLLL"      # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_FIEMAP_EXTENT = "=QQQQQLLLL"  # logical, physical, length, reserved64[2], flags, reserved32[3]
MANIFEST_PATH = "/var/lib/guestmemfs-liveupdate/manifest.json"

MODES = ("full", "sampled", "extents")
OK, MISSING, SIZE_CHANGED, EXTENTS_MOVED, CONTENT_CHANGED = (
    "ok", "missing", "size_changed", "extents_moved", "content_changed")


def fiemap(path, batch=256):
    """[(logical, physical, length)] of a file's extents, merged where contiguous; None when the
    filesystem has no FIEMAP."""
    extents = []
    start = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            head = struct.pack(_FIEMAP_HEAD, start, 0xFFFFFFFFFFFFFFFF, FIEMAP_FLAG_SYNC, 0, batch, 0)
            buf = array.array("B", head + b"\0" * (struct.calcsize(_FIEMAP_EXTENT) * batch))
            try:
                fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
            except (IOError, OSError):
                return None
            mapped = struct.unpack_from(_FIEMAP_HEAD, buf)[3]
            if mapped == 0:
                break
            last = False
            off = struct.calcsize(_FIEMAP_HEAD)
            for i in range(mapped):
                logical, physical, length, _r1, _r2, flags, _a, _b, _c = struct.unpack_from(
                    _FIEMAP_EXTENT, buf, off + i * struct.calcsize(_FIEMAP_EXTENT))
                if extents and extents[-1][0] + extents[-1][2] == logical and extents[-1][1] + extents[-1][2] == physical:
                    extents[-1] = (extents[-1][0], extents[-1][1], extents[-1][2] + length)
                else:
                    extents.append((logical, physical, length))
                start = logical + length
                last = last or bool(flags & FIEMAP_EXTENT_LAST)
            if last:
                break
    finally:
        os.close(fd)
    return extents


def device_base(path):
    """Physical address where the file's block device starts (pmem namespaces have it), else None."""
    st = os.stat(path)
    sysdev = "/sys/dev/block/%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    for rel in ("device/resource", "resource"):
        try:
            with open(os.path.join(sysdev, rel)) as fh:
                return int(fh.read().strip(), 16)
        except (IOError, OSError, ValueError):
            continue
    return None


# hashlib and random are imported where used: the VM unit's start (on a host still booting) reads a
# manifest's verdict and needs neither (CPU per VM, before its QEMU starts).
def _hashlib():
    import hashlib
    return hashlib


def _random():
    import random
    return random


def _new_seed():
    return _random().SystemRandom().randrange(1 << 62)


# The chunk checksums a manifest may record, each entry naming its own (``algo``; an entry without
# one is sha256, the only one before). crc32 is the default: it catches every burst error up to 32
# bits and any other change of a chunk but one in 2**32, and runs about twice as fast as sha256 and
# four times as fast as blake2b here (tests/bench/bench_manifest.py --algos prints them side by
# side); the threat is memory a kernel or firmware changed, not an adversary writing the host's RAM.
ALGOS = {
    "crc32": lambda b: "%08x" % zlib.crc32(b),  # zlib releases the GIL for large buffers
    "sha256": lambda b: _hashlib().sha256(b).hexdigest()[:32],  # kept to 128 bits
    "blake2b": lambda b: _hashlib().blake2b(b, digest_size=16).hexdigest(),
}
DEFAULT_ALGO = "crc32"
LEGACY_ALGO = "sha256"


def _chunks(size, mode, samples, seed):
    n = (size + CHUNK - 1) // CHUNK
    if mode == "full" or samples >= n:
        return list(range(n))
    return sorted(_random().Random(seed).sample(range(n), samples))


def digests(path, size, indices, workers=None, algo=DEFAULT_ALGO):
    """{str(chunk index): hex digest} read through a shared read-only mapping. Chunks are hashed
    by several threads (hashlib and zlib release the GIL), one per CPU by default."""
    if algo not in ALGOS:
        raise ValueError("checksum %r: use one of %s" % (algo, ", ".join(sorted(ALGOS))))
    fn = ALGOS[algo]
    out = {}
    if size == 0 or not indices:
        return out
    workers = workers or min(8, os.cpu_count() or 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            def work(part):
                for i in part:
                    out[str(i)] = fn(m[i * CHUNK:min(size, (i + 1) * CHUNK)])
            parts = [indices[k::workers] for k in range(workers)]
            threads = [threading.Thread(target=work, args=(part,)) for part in parts if part]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            m.close()
    finally:
        os.close(fd)
    if len(out) != len(indices):
        raise IOError("%s: could not hash every chunk" % path)
    return out


def record_file(path, mode="full", samples=64, seed=None, content=True, algo=DEFAULT_ALGO):
    """One file's manifest entry."""
    if mode not in MODES:
        raise ValueError("manifest mode %r: use full, sampled or extents" % mode)
    if algo not in ALGOS:
        raise ValueError("checksum %r: use one of %s" % (algo, ", ".join(sorted(ALGOS))))
    size = os.path.getsize(path)
    ext = fiemap(path)
    base = device_base(path)
    entry = {"path": path, "size": size, "device_base": base, "mode": mode, "chunk": CHUNK, "algo": algo,
             "extents": [[lo, ph + (base or 0), ln] for lo, ph, ln in ext] if ext is not None else None}
    if mode != "extents" and content:
        if seed is None:
            seed = _new_seed()
        idx = _chunks(size, mode, samples, seed)
        entry.update(seed=seed, samples=samples, digests=digests(path, size, idx, algo=algo))
    return entry


def verify_file(entry):
    """Compare a file with its entry -> {status, detail, first_diff_offset, mode, algo, chunks}:
    the verdict says how much it checked."""
    verdict = _verify_file(entry)
    verdict.update(mode=entry.get("mode"), algo=entry.get("algo", LEGACY_ALGO),
                   chunks=len(entry.get("digests") or {}))
    return verdict


def _verify_file(entry):
    path = entry["path"]
    if not os.path.exists(path):
        return {"status": MISSING, "detail": "%s does not exist" % path}
    size = os.path.getsize(path)
    if size != entry["size"]:
        return {"status": SIZE_CHANGED, "detail": "%s is %d bytes, was %d" % (path, size, entry["size"])}
    if entry.get("extents") is not None:
        ext = fiemap(path)
        base = device_base(path)
        now = [[lo, ph + (base or 0), ln] for lo, ph, ln in ext] if ext is not None else None
        if now != entry["extents"]:
            first = next((i for i, (a, b) in enumerate(zip(now or [], entry["extents"])) if a != b),
                         min(len(now or []), len(entry["extents"])))
            return {"status": EXTENTS_MOVED, "detail": "%s: physical extents differ from extent %d on" % (path, first)}
    recorded = entry.get("digests")
    if recorded:
        idx = sorted(int(i) for i in recorded)
        now = digests(path, size, idx, algo=entry.get("algo", LEGACY_ALGO))
        for i in idx:
            if now[str(i)] != recorded[str(i)]:
                off = first_diff(path, i)
                return {"status": CONTENT_CHANGED, "first_diff_offset": off,
                        "detail": "%s: content differs from offset %d on (chunk %d)" % (path, off, i)}
    return {"status": OK, "detail": "%s: size, extents and %s content (%s) as recorded" % (
        path, entry["mode"], entry.get("algo", LEGACY_ALGO) if recorded else "none")}


def first_diff(path, chunk_index):
    """The chunk's start; the recorded digest cannot say more (no copy of the old bytes is kept)."""
    return chunk_index * CHUNK


def record(files, mode="full", samples=64, seed=None, content=True, algo=DEFAULT_ALGO):
    t0 = time.time()
    entries = dict((name, record_file(path, mode, samples, seed, content, algo)) for name, path in files.items())
    return {"version": 1, "recorded_ts": t0, "record_s": round(time.time() - t0, 3),
            "boot_id": hostinfo.boot_id(), "files": entries}


def add_content(manifest, names=None):
    """Hash the content of entries recorded without it (extents first, content once VMs stop)."""
    t0 = time.time()
    for name, entry in manifest["files"].items():
        if (names is None or name in names) and entry["mode"] != "extents" and "digests" not in entry:
            seed = _new_seed()
            idx = _chunks(entry["size"], entry["mode"], entry.get("samples", 64), seed)
            entry.update(seed=seed, digests=digests(entry["path"], entry["size"], idx,
                                                    algo=entry.get("algo", LEGACY_ALGO)))
    manifest["content_s"] = round(time.time() - t0, 3)
    return manifest


def verify(manifest, names=None):
    return dict((name, verify_file(entry)) for name, entry in manifest["files"].items()
                if names is None or name in names)


# What an operator does about a manifest that is not JSON (durable.CorruptFile names the file).
RECOVERY = ("Recover: nothing was changed; the saved VMs stay unverified (not resumed), their state and memory "
            "files kept. Repair the JSON or restore it from a copy, then run `agent verify`; a VM whose memory can "
            "no longer be verified boots afresh only after `agent discard-state NAME`")


def save(manifest, path=None):
    """Root-only and durable (see durable.write_json)."""
    write_json(path or MANIFEST_PATH, manifest)


def load(path=None):
    return read_json(path or MANIFEST_PATH, recover=RECOVERY)
