"""Benchmark: the collection's live update against a minimal hand-written save/kexec/restore of
the same VMs on the same fleet host, blackout side by side (QMP STOP to RESUME).

    python3 tests/bench/bench_blackout.py [--name fleet] [--host host1]

Needs a fleet prepared by scripts/demo (VMs running on the pmem backend). The hand-written run is
what FACTS-style manual operation looks like: load the other kernel first, save each VM over QMP
(cpr-reboot, x-ignore-shared), `kexec -e` directly, then, once SSH answers, start each QEMU with
-incoming defer, load the state and `cont`: no manifest, no journal, no verification, restore
driven from the controller. Afterwards the VMs go back under their units with a cold start (these
are test guests). Prints both blackouts per VM and their ratio.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fleet"))
import fleet  # noqa: E402

QMP_LIB = r'''
import json, os, socket, sys, time
def qmp(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rw")
    f.readline()
    def cmd(c, **a):
        f.write(json.dumps({"execute": c, **({"arguments": a} if a else {})}) + "\n"); f.flush()
        while True:
            r = json.loads(f.readline())
            if "event" in r: events.append(r); continue
            if "error" in r: raise SystemExit("%s: %s" % (c, r["error"]))
            return r.get("return")
    def wait(name, pred=lambda e: True):
        while True:
            for e in list(events):
                if e["event"] == name and pred(e): events.remove(e); return e
            events.append(json.loads(f.readline()))
    events = []
    cmd("qmp_capabilities")
    cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True},
                                                 {"capability": "x-ignore-shared", "state": True}])
    cmd("migrate-set-parameters", mode="cpr-reboot")
    return cmd, wait
def ts(e): return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
done = lambda e: e["data"]["status"] in ("completed", "failed")
'''

SAVE = QMP_LIB + r'''
out = {}
for name in sys.argv[1:]:
    cmd, wait = qmp("/run/guestmemfs-liveupdate/%s.qmp" % name)
    cmd("stop"); stop = wait("STOP")
    cmd("migrate", uri="file:/root/hand-%s.state" % name); wait("MIGRATION", done)
    fd = os.open("/root/hand-%s.state" % name, os.O_RDONLY); os.fsync(fd); os.close(fd)
    try: cmd("quit")
    except Exception: pass
    out[name] = ts(stop)
json.dump(out, open("/root/hand-stop.json", "w")); os.sync()
'''

RESTORE = QMP_LIB + r'''
import subprocess
out = {}
# The backend is mounted from fstab some time after SSH answers: QEMU must not create the RAM file
# on the root disk instead.
while subprocess.call(["mountpoint", "-q", "/mnt/vmmem"]): time.sleep(0.2)
for name in sys.argv[1:]:
    conf = json.load(open("/etc/guestmemfs-liveupdate/vms/%s.json" % name))
    size = "%dM" % (conf["memory_bytes"] // 2**20)
    qmp_path = "/run/guestmemfs-liveupdate/%s.qmp" % name
    argv = ["qemu-system-x86_64", "-name", name, "-nodefaults", "-display", "none", "-machine",
            conf["machine"] + ",memory-backend=ram0", "-accel", conf["accel"], "-m", size, "-object",
            "memory-backend-file,id=ram0,size=%s,mem-path=%s,share=on" % (size, conf["mem_path"]),
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path, "-kernel", conf["kernel"], "-incoming", "defer"]
    subprocess.check_call(["systemd-run", "-q", "--unit", "hand-" + name, "-p", "CPUQuota=20%"] + argv)
    while not os.path.exists(qmp_path): time.sleep(0.05)
    cmd, wait = qmp(qmp_path)
    cmd("migrate-incoming", uri="file:/root/hand-%s.state" % name); wait("MIGRATION", done)
    cmd("cont"); out[name] = ts(wait("RESUME"))
print(json.dumps(out))
'''


def ssh(state, host, command, stdin=None, timeout=600):
    r = subprocess.run(fleet.ssh_base(state, host) + [command], input=stdin, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if r.returncode != 0:
        raise SystemExit("%s: %s failed: %s" % (host["name"], command[:60], r.stderr.strip()))
    return r.stdout.strip()


OTHER_KERNEL = "ls /boot/vmlinuz-* | grep -v \"$(uname -r)\" | tail -1"


def collection_run(state, host, inventory, report):
    env = dict(os.environ, GUESTMEMFS_REPORT_DIR=report)
    other = ssh(state, host, OTHER_KERNEL)
    subprocess.run(["ansible-playbook", "-i", inventory, "guestmemfs.liveupdate.liveupdate", "--limit",
                    host["name"] + ",localhost", "-e", "guestmemfs_kexec_kernel=" + other],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(report, "blackout.json")) as fh:
        return dict((r["vm"], r["blackout_s"]) for r in json.load(fh) if r["host"] == host["name"])


def hand_run(state, host, vms):
    ssh(state, host, "systemctl disable -q guestmemfs-verify.service %s" % " ".join(
        "guestmemfs-vm@%s" % v for v in vms))
    other = ssh(state, host, OTHER_KERNEL)
    initrd = other.replace("vmlinuz-", "initrd.img-")
    before = ssh(state, host, "cat /proc/sys/kernel/random/boot_id")
    ssh(state, host, "kexec -s -l %s --initrd=%s --reuse-cmdline" % (other, initrd))
    ssh(state, host, "cat > /root/hand-save.py", stdin=SAVE)
    ssh(state, host, "cat > /root/hand-restore.py", stdin=RESTORE)
    ssh(state, host, "python3 /root/hand-save.py %s && systemd-run -q --on-active=1 kexec -e" % " ".join(vms))
    wait_new_boot(state, host, before)
    resumed = json.loads(ssh(state, host, "mkdir -p /run/guestmemfs-liveupdate && python3 /root/hand-restore.py %s"
                             % " ".join(vms)))
    stopped = json.loads(ssh(state, host, "cat /root/hand-stop.json"))
    # Back under the collection's units (a cold start of the test guests).
    ssh(state, host, "systemctl stop %s; rm -f /root/hand-*.state; systemctl enable -q guestmemfs-verify.service %s; "
        "systemctl start %s" % (" ".join("hand-%s" % v for v in vms), " ".join("guestmemfs-vm@%s" % v for v in vms),
                                " ".join("guestmemfs-vm@%s" % v for v in vms)))
    return dict((v, round(resumed[v] - stopped[v], 3)) for v in vms)


def wait_new_boot(state, host, before, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ssh(state, host, "cat /proc/sys/kernel/random/boot_id", timeout=20) != before:
                return
        except (SystemExit, subprocess.TimeoutExpired):
            pass
        time.sleep(1)
    raise SystemExit("%s did not come back within %ss" % (host["name"], timeout))


def cold_reboot(state, host, vms):
    before = ssh(state, host, "cat /proc/sys/kernel/random/boot_id")
    ssh(state, host, "systemd-run -q --on-active=1 systemctl reboot")
    wait_new_boot(state, host, before)
    units = " ".join("guestmemfs-vm@%s" % v for v in vms)
    ssh(state, host, "for i in $(seq 300); do systemctl is-active -q %s && exit 0; sleep 1; done; exit 1" % units)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="fleet")
    ap.add_argument("--host", default="host1")
    ap.add_argument("--report", default=os.path.join(fleet.cache_dir(), "bench-blackout"))
    a = ap.parse_args()
    state = fleet.load_state(a.name)
    if not state:
        raise SystemExit("fleet %r is not up: run scripts/demo first" % a.name)
    host = next(h for h in state["hosts"] if h["name"] == a.host)
    vms = ssh(state, host, "ls /etc/guestmemfs-liveupdate/vms | sed 's/.json$//'").split()
    # Both runs go the same way (GRUB's default kernel -> the other one): a cold reboot to the
    # default kernel, the hand-written run, a cold reboot again, then the collection.
    cold_reboot(state, host, vms)
    hand = hand_run(state, host, vms)
    print("hand-written blackout: %s" % hand, flush=True)
    cold_reboot(state, host, vms)
    col = collection_run(state, host, state["inventory"], a.report)
    print("blackout on %s, %d VMs (QMP STOP to RESUME, seconds)" % (a.host, len(vms)))
    print("%-6s %12s %14s %8s" % ("vm", "collection", "hand-written", "ratio"))
    for v in vms:
        print("%-6s %12.1f %14.1f %8.2f" % (v, col[v], hand[v], col[v] / hand[v]))


if __name__ == "__main__":
    main()
