"""Host side of bench_qemu_update_modes.py (stdlib only; run on a fleet host as root).

    python3 qemu_update_modes_host.py --old OLD_QEMU --new NEW_QEMU --kernel COUNTER_GUEST
                                      --counter-addr ADDR [--modes cpr-reboot,cpr-transfer] [--runs 5]

Per run, one counting guest (128 MiB, on a shared file; the devices of a guest without virtio: an
AHCI disk, an e1000 NIC, its agent port on an ISA serial port) starts on OLD_QEMU, counts, and moves
to NEW_QEMU by one mode:
  cpr-reboot    what the collection's QEMU update does: stop, migrate to a file (x-ignore-shared:
                the memory stays in its file), fsync, quit; then NEW_QEMU -incoming defer loads it
                and conts.
  cpr-transfer  NEW_QEMU starts first and waits on its cpr channel; OLD_QEMU migrates over a UNIX
                socket and hands its memory's descriptor over; NEW_QEMU runs on when it completes.
                QEMU refuses it unless the VM was started with -machine aux-ram-share=on, so both
                modes start the VM so, for a like-for-like pair.
Modes alternate in order round by round. One JSON line per run on stdout: the blackout (the old
QEMU's STOP event -> the new QEMU's RESUME event), the guest's counter at the pause (cpr-reboot),
right after the resume and 2 s later (it must go on from where it stopped), or the error.
"""

import argparse
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

# The collection's QMP client, uploaded beside this script (stdlib only; no installation needed).
from qmp import QMP, event_time as event_ts  # pylint: disable=import-error

WAIT_S = 300


def connect(path, wait=60.0):
    q = QMP(path, timeout=WAIT_S)
    q.connect(wait=wait)
    return q


def migration_over(e):
    return e["data"]["status"] in ("completed", "failed", "cancelled")


class Run:
    def __init__(self, a, work, n):
        self.a, self.work, self.n = a, work, n
        self.ram = os.path.join(work, "ram")
        self.procs = []

    def path(self, name):
        return os.path.join(self.work, "%s-%d" % (name, self.n))

    def argv(self, binary, tag, extra=()):
        w = self.work
        return [binary, "-name", "%s%d" % (tag, self.n), "-nodefaults", "-no-user-config", "-display", "none",
                "-machine", "%s,memory-backend=ram0,aux-ram-share=on" % self.a.machine, "-accel", "tcg",
                "-smp", "1", "-m", "128M",
                "-object", "memory-backend-file,id=ram0,size=128M,mem-path=%s,share=on" % self.ram,
                "-qmp", "unix:%s,server=on,wait=off" % self.path(tag + ".qmp"),
                "-device", "ich9-ahci,id=ahci0", "-drive", "if=none,id=disk0,file=%s/disk.raw,format=raw" % w,
                "-device", "ide-hd,bus=ahci0.0,drive=disk0",
                "-netdev", "user,id=net0", "-device", "e1000,netdev=net0,id=net0-dev",
                "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % self.path(tag + ".qga"),
                "-device", "isa-serial,chardev=qga0", "-kernel", self.a.kernel] + list(extra)

    def start(self, binary, tag, extra=()):
        with open(self.path(tag + ".out"), "w") as out:
            p = subprocess.Popen(self.argv(binary, tag, extra), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def output(self, tag):
        with open(self.path(tag + ".out")) as fh:
            return fh.read()[-500:].strip()

    def counter(self):
        fd = os.open(self.ram, os.O_RDONLY)
        try:
            m = mmap.mmap(fd, self.a.counter_addr + mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            try:
                return struct.unpack_from("<I", m, self.a.counter_addr)[0]
            finally:
                m.close()
        finally:
            os.close(fd)

    def old(self, caps):
        self.start(self.a.old, "old")
        q = connect(self.path("old.qmp"))
        time.sleep(self.a.settle)  # the guest counts
        q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}] + caps)
        return q

    def cpr_reboot(self):
        shared = [{"capability": "x-ignore-shared", "state": True}]
        state = self.path("state")
        q = self.old(shared)
        q.cmd("migrate-set-parameters", mode="cpr-reboot")
        q.cmd("stop")
        stop = event_ts(q.wait_event("STOP", WAIT_S))
        paused_at = self.counter()
        q.cmd("migrate", uri="file:" + state)
        status = q.wait_event("MIGRATION", WAIT_S, migration_over)["data"]["status"]
        if status != "completed":
            raise RuntimeError("the save %s" % status)
        fd = os.open(state, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        q.cmd("quit")
        self.procs[-1].wait()
        self.start(self.a.new, "new", ["-incoming", "defer"])
        nq = connect(self.path("new.qmp"))
        nq.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}] + shared)
        nq.cmd("migrate-set-parameters", mode="cpr-reboot")
        nq.cmd("migrate-incoming", uri="file:" + state)
        status = nq.wait_event("MIGRATION", WAIT_S, migration_over)["data"]["status"]
        if status != "completed":
            raise RuntimeError("the load %s: %s" % (status, self.output("new")))
        nq.cmd("cont")
        resume = event_ts(nq.wait_event("RESUME", WAIT_S))
        return {"blackout_s": round(resume - stop, 3), "paused_at": paused_at, "state_bytes": os.path.getsize(state)}

    def cpr_transfer(self):
        cpr, main = self.path("cpr.sock"), self.path("main.sock")
        q = self.old([])
        q.cmd("migrate-set-parameters", mode="cpr-transfer")
        new = self.start(self.a.new, "new", [
            "-incoming", json.dumps({"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": cpr}}),
            "-incoming", "unix:" + main])
        while not os.path.exists(cpr):  # the new QEMU listens before it builds the machine
            if new.poll() is not None:
                raise RuntimeError("the new QEMU exited: %s" % self.output("new"))
            time.sleep(0.05)
        q.cmd("migrate", channels=[
            {"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": main}},
            {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": cpr}}])
        nq = connect(self.path("new.qmp"), wait=120)
        status = q.wait_event("MIGRATION", WAIT_S, migration_over)["data"]["status"]
        if status != "completed":
            raise RuntimeError("the transfer %s: %s" % (status, self.output("new")))
        stop = event_ts(q.wait_event("STOP", WAIT_S))
        resume = event_ts(nq.wait_event("RESUME", WAIT_S))
        q.cmd("quit")
        return {"blackout_s": round(resume - stop, 3)}

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--kernel", required=True, help="the counting guest (multiboot)")
    ap.add_argument("--counter-addr", type=lambda v: int(v, 0), required=True)
    ap.add_argument("--machine", default="pc-q35-10.0")
    ap.add_argument("--modes", default="cpr-reboot,cpr-transfer")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds the guest counts before the move")
    a = ap.parse_args()
    modes = a.modes.split(",")
    work = tempfile.mkdtemp(prefix="qemu-update-modes-", dir="/var/tmp")
    try:
        subprocess.check_call(["truncate", "-s", "64M", os.path.join(work, "disk.raw")])
        n = 0
        for r in range(a.runs):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                n += 1
                run = Run(a, work, n)
                row = {"mode": mode, "round": r + 1, "load": float(open("/proc/loadavg").read().split()[0])}
                try:
                    row.update(run.cpr_reboot() if mode == "cpr-reboot" else run.cpr_transfer())
                    after = run.counter()
                    time.sleep(2)
                    row["counter"] = [row.pop("paused_at", None), after, run.counter()]
                    row["counting_on"] = row["counter"][2] > after >= (row["counter"][0] or 0)
                except Exception as exc:  # pylint: disable=broad-except  # the next run still runs; the error is its result
                    row["error"] = str(exc)[:600]
                finally:
                    run.close()
                    if os.path.exists(run.ram):
                        os.unlink(run.ram)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
