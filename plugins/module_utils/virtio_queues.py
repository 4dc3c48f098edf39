# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether another QEMU binary can load a running VM's virtqueues, asked before the VM pauses.

A virtqueue's ring size travels in the device state; since QEMU 11.1 a QEMU refuses a loaded ring
larger than what its own device allocated (``VQ 0 vring.num 1024 exceeds allocated max 256``), and
QEMU builds differ in what they allocate: Debian's 10.0.13 gives every queue 1024 entries whatever
the device's ``queue-size``, 11.1.3 gives virtio-blk 256, virtio-net 256/256/64, virtio-serial
128/32 (docs/qemu-update.md). Both sides are read, nothing is paused: the running QEMU's rings over
its QMP socket (``x-query-virtio-queue-status``, read-only), the other binary's allocation from a
scratch instance started with the VM's machine type and its virtio devices, backends replaced by
null ones (no disk opened, no memory of the VM mapped)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

# Properties naming a backend the scratch instance does not have: dropped (drive: a null block node).
BACKEND_PROPS = ("netdev", "chardev", "rng", "bus", "addr", "bootindex")
# A device that does not start without its backend (virtio-9p's fsdev, virtio-mem's memdev): not probed,
# its rings are not compared (the restore's own refusal still rolls the VM back).
UNPROBED_PROPS = ("fsdev", "memdev")
QUERY_TIMEOUT = 20.0


class QueueProbeError(Exception):
    """The rings could not be read (a QEMU without x-query-virtio, a probe that did not start)."""


def _cmd(f, execute, **arguments):
    msg = {"execute": execute}
    if arguments:
        msg["arguments"] = arguments
    f.write(json.dumps(msg) + "\n")
    f.flush()
    while True:
        line = f.readline()
        if not line:
            raise QueueProbeError("QEMU closed its monitor during %s" % execute)
        r = json.loads(line)
        if "return" in r:
            return r["return"]
        if "error" in r:
            raise QueueProbeError("%s: %s" % (execute, r["error"].get("desc", r["error"])))


def device_key(path, name, anon_seen):
    """``disk0-dev`` for /machine/peripheral/disk0-dev/virtio-backend; an anonymous device by its
    type and rank (``virtio-net#0``), the same in the VM and in the scratch instance."""
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[1] == "peripheral":
        return parts[2]
    k = anon_seen.get(name, 0)
    anon_seen[name] = k + 1
    return "%s#%d" % (name, k)


def queues(f, field):
    """{device key: (type, [ring size of queue 0, 1, ...])} over an open QMP stream ``f``;
    ``field`` is vring-num (what the ring holds now) or vring-num-default (what the device allocated)."""
    out, anon = {}, {}
    try:
        devices = _cmd(f, "x-query-virtio")
    except QueueProbeError as exc:
        if "No virtio devices" in str(exc):
            return out
        raise
    for d in sorted(devices, key=lambda d: d["path"]):
        sizes = []
        while True:
            try:
                st = _cmd(f, "x-query-virtio-queue-status", path=d["path"], queue=len(sizes))
            except QueueProbeError:
                break  # "Invalid virtqueue number": past the device's last queue
            sizes.append(int(st[field]))
        out[device_key(d["path"], d["name"], anon)] = (d["name"], sizes)
    return out


def running_queues(qmp_path, timeout=QUERY_TIMEOUT):
    """The rings of the QEMU serving ``qmp_path`` now (vring-num): read-only, the VM keeps running."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(qmp_path)
        f = s.makefile("rw")
        f.readline()  # greeting
        _cmd(f, "qmp_capabilities")
        return queues(f, "vring-num")
    except (OSError, ValueError) as exc:
        raise QueueProbeError("cannot read the rings over %s: %s" % (qmp_path, exc))
    finally:
        s.close()


def option_value(argv, i):
    return argv[i + 1] if i + 1 < len(argv) else ""


def scratch_args(argv):
    """The virtio devices (with -global and -smp) of a VM's argv, for a scratch instance: each
    ``-device virtio-*`` with its properties but its backends (a drive becomes a null block node)."""
    out, nodes = [], 0
    for i, a in enumerate(argv):
        # -smp: a virtio-blk or virtio-net has one queue (pair) per vCPU by default.
        if a in ("-global", "-smp"):
            out += [a, option_value(argv, i)]
        if a != "-device":
            continue
        fields = option_value(argv, i).split(",")
        if not fields[0].startswith("virtio-") or any(f.split("=", 1)[0] in UNPROBED_PROPS for f in fields):
            continue
        keep = [fields[0]]
        for prop in fields[1:]:
            key = prop.split("=", 1)[0]
            if key == "drive":
                node = "probe-drive%d" % nodes
                nodes += 1
                out += ["-blockdev", "driver=null-co,node-name=%s" % node]
                keep.append("drive=" + node)
            elif key not in BACKEND_PROPS:
                keep.append(prop)
        out += ["-device", ",".join(keep)]
    return out


def allocated_queues(popen, binary, machine, argv, timeout=QUERY_TIMEOUT):
    """What ``binary`` allocates (vring-num-default) for the virtio devices of ``argv`` on
    ``machine``, from a paused scratch instance (TCG, no RAM of the VM, no disk, no network);
    ``popen`` is subprocess.Popen (handed in: the instance runs while its monitor is asked)."""
    devices = scratch_args(argv)
    if "-device" not in devices:
        return {}
    tmp = tempfile.mkdtemp(prefix="guestmemfs-vq-")
    sock = os.path.join(tmp, "qmp.sock")
    cmd = [binary, "-machine", machine, "-accel", "tcg", "-S", "-nodefaults", "-no-user-config", "-display", "none",
           "-m", "16", "-qmp", "unix:%s,server=on,wait=off" % sock] + devices
    p = popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                s.connect(sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                # The socket is bound, then listened on: a loaded host shows the gap between them.
                if p.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        f = s.makefile("rw")
        f.readline()
        _cmd(f, "qmp_capabilities")
        return queues(f, "vring-num-default")
    except (OSError, ValueError, QueueProbeError) as exc:
        # A QEMU that refuses a device opens its monitor first, then exits: its stderr says why.
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        err = p.stderr.read().decode("utf-8", "replace").strip() if p.poll() is not None else ""
        raise QueueProbeError("the scratch %s did not start: %s (%s)" % (binary, (err or str(exc))[-300:], " ".join(cmd)))
    finally:
        s.close()
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


def unprobed(running, allocated):
    """The devices of ``running`` the scratch instance did not have (UNPROBED_PROPS)."""
    return sorted(k for k in running if k not in allocated)


def too_large(running, allocated):
    """The rings ``running`` holds that ``allocated`` cannot take -> [(device, type, queue, ring, allocated)];
    a queue the other side's device lacks counts as allocated 0; a device it lacks is unprobed."""
    out = []
    for key, (kind, sizes) in sorted(running.items()):
        if key not in allocated:
            continue
        alloc = allocated[key][1]
        for q, n in enumerate(sizes):
            have = alloc[q] if q < len(alloc) else 0
            if n > have:
                out.append((key, kind, q, n, have))
    return out


def describe(rows):
    """Per device: ``disk0-dev (virtio-blk): 2 rings larger than the new QEMU allocates (queue 0: 1024 > 256)``."""
    out, seen = [], []
    for key, kind, _q, _n, _have in rows:
        if (key, kind) not in seen:
            seen.append((key, kind))
    for key, kind in seen:
        mine = [r for r in rows if r[0] == key]
        out.append("%s (%s): %d ring%s larger than the new QEMU allocates (queue %d: %d > %d)" % (
            key, kind, len(mine), "s" if len(mine) > 1 else "", mine[0][2], mine[0][3], mine[0][4]))
    return "; ".join(out)
