"""Benchmark: the collection's live update against the true floor, on the same fleet host,
interleaved, per host first QMP STOP -> last RESUME (the host's blackout).

    python3 tests/bench/bench_blackout.py [--name fleet] [--host host1] [--runs 3]
                                          [--wave host1,host2 --forks 1] [--out DIR]

Needs a fleet prepared by scripts/demo (VMs running on the pmem backend, two kernels installed).
Each round runs the collection (ansible-playbook liveupdate.yml, --limit the host or the wave) and
the floor, one after the other, each into the kernel that is not running (so both go both ways).

The floor is the least a host can do and keep its VMs: on the host, the other kernel loaded first
(outside the clock); then one process saves every VM in parallel over QMP (cpr-reboot,
x-ignore-shared, stop, migrate to a file, fsync, quit), syncs and `kexec -e`; at boot a unit
ordered right after the backend's mount starts each QEMU with -incoming defer, loads the state and
`cont`s. Its QEMU runs as root, unconfined (the VM's definition built with paths where a confined
QEMU is handed descriptors): what confinement costs counts against the collection. No manifest,
no verification, no journal, no SSH on its path. Afterwards its VMs go back
under their units with a cold start (these are test guests).

With --wave, the collection's runs update every host of the wave as one wave at --forks, and each
host's blackout is reported; the floor runs on --host only. Prints a table and writes
bench-blackout.json (every run, min and median per case, the ratios, the load before each run) to
--out, also when a run fails.
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

QMP_LIB = r'''
import json, os, socket, subprocess, sys, threading, time
def qmp(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rw")
    f.readline()
    events = []
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
    cmd("qmp_capabilities")
    cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True},
                                                 {"capability": "x-ignore-shared", "state": True}])
    cmd("migrate-set-parameters", mode="cpr-reboot")
    return cmd, wait
def ts(e): return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
done = lambda e: e["data"]["status"] in ("completed", "failed")
VMS = json.load(open("/root/floor-vms.json"))
'''

# The critical path, one process on the host: every VM saved in parallel, sync, kexec -e.
FLOOR_SAVE = QMP_LIB + r'''
stops = {}
def save(name):
    cmd, wait = qmp("/run/guestmemfs-liveupdate/%s.qmp" % name)
    cmd("stop"); stops[name] = ts(wait("STOP"))
    cmd("migrate", uri="file:/root/floor-%s.state" % name); wait("MIGRATION", done)
    fd = os.open("/root/floor-%s.state" % name, os.O_RDONLY); os.fsync(fd); os.close(fd)
    try: cmd("quit")
    except Exception: pass
threads = [threading.Thread(target=save, args=(n,)) for n in VMS]
for t in threads: t.start()
for t in threads: t.join()
json.dump(stops, open("/root/floor-stop.json", "w"))
open("/root/floor-armed", "w").close()
os.sync()
os.execvp("kexec", ["kexec", "-e"])
'''

# At boot, right after the backend's mount (floor-restore.service): every VM in parallel.
FLOOR_RESTORE = QMP_LIB + r'''
os.makedirs("/run/guestmemfs-liveupdate", exist_ok=True)
resumed = {}
def restore(name):
    v = VMS[name]
    qmp_path = "/run/guestmemfs-liveupdate/%s.qmp" % name
    subprocess.check_call(["systemd-run", "-q", "--unit", "floor-" + name] + v["props"] + v["argv"] + ["-incoming", "defer"])
    while not os.path.exists(qmp_path): time.sleep(0.01)
    cmd, wait = qmp(qmp_path)
    cmd("migrate-incoming", uri="file:/root/floor-%s.state" % name); wait("MIGRATION", done)
    cmd("cont"); resumed[name] = ts(wait("RESUME"))
threads = [threading.Thread(target=restore, args=(n,)) for n in VMS]
for t in threads: t.start()
for t in threads: t.join()
os.unlink("/root/floor-armed")
json.dump(resumed, open("/root/floor-resume.json", "w"))
'''

FLOOR_UNIT = """[Unit]
Description=benchmark floor: restore the VMs right after the backend's mount
DefaultDependencies=no
After=systemd-remount-fs.service systemd-tmpfiles-setup.service
RequiresMountsFor=/mnt/vmmem /root
ConditionPathExists=/root/floor-armed
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /root/floor-restore.py
[Install]
WantedBy=sysinit.target
"""

# The floor's QEMU runs as root, with paths instead of the descriptors a confined QEMU is handed (QMP,
# guest agent, taps): the VM's own definition built unconfined. The same devices, so the same state.
UNCONFINED_ARGV = (
    "python3 -c 'import json, sys; sys.path.insert(0, \"/usr/lib/guestmemfs-liveupdate\"); "
    "from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, vmdef; "
    "print(json.dumps(vmdef.build_argv(dict(cpr.VM.load(sys.argv[1]).conf, qemu_user=None), cpr.RUN_DIR)))' %s")

OTHER_KERNEL = "ls /boot/vmlinuz-* | grep -v \"$(uname -r)\" | tail -1"
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def ssh(state, host, command, stdin=None, timeout=600):
    r = subprocess.run(fleet.ssh_base(state, host) + [command], input=stdin, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError("%s: %s failed (rc %d): %s" % (host["name"], command[:80], r.returncode, r.stderr.strip()))
    return r.stdout.strip()


def load():
    return float(open("/proc/loadavg").read().split()[0])


def host_blackout(stops, resumes):
    """First STOP -> last RESUME of one host, seconds."""
    return round(max(resumes) - min(stops), 3)


def collection_run(state, hosts, forks, out):
    env = dict(os.environ, GUESTMEMFS_REPORT_DIR=os.path.join(out, "report"))
    other = ssh(state, hosts[0], OTHER_KERNEL)
    names = [h["name"] for h in hosts]
    # one wave of all the hosts given: the canary wave holds them all
    rollout = json.dumps({"guestmemfs_rollout": {"canary": len(hosts)}})
    log = open(os.path.join(out, "collection-%d.log" % int(time.time())), "w")
    subprocess.run(["ansible-playbook", "-i", state["inventory"], "guestmemfs.liveupdate.liveupdate", "-f", str(forks),
                    "--limit", ",".join(names) + ",localhost", "-e", "guestmemfs_kexec_kernel=" + other, "-e", rollout],
                   env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    result = {}
    for h in hosts:
        j = json.loads(ssh(state, h, "python3 /usr/lib/guestmemfs-liveupdate/agent status --json"))
        vms = j["vms"].values()
        if any(v.get("state") != "restored" for v in vms):
            states = dict((n, v.get("state")) for n, v in j["vms"].items())
            raise RuntimeError("%s: not every VM restored: %s" % (h["name"], states))
        result[h["name"]] = host_blackout([v["stop_ts"] for v in vms], [v["resume_ts"] for v in vms])
    return result


def floor_run(state, host, vms):
    props = {}
    for v in vms:
        quota = ssh(state, host, "systemctl show -P CPUQuotaPerSecUSec guestmemfs-vm@%s" % v)
        props[v] = ["-p", "CPUQuota=%d%%" % (float(quota[:-1]) * 100)] if quota.endswith("s") else []
    argvs = dict((v, json.loads(ssh(state, host, UNCONFINED_ARGV % v))) for v in vms)
    ssh(state, host, "cat > /root/floor-vms.json", stdin=json.dumps(dict(
        (v, {"argv": argvs[v], "props": props[v]}) for v in vms)))
    ssh(state, host, "cat > /root/floor-save.py", stdin=FLOOR_SAVE)
    ssh(state, host, "cat > /root/floor-restore.py", stdin=FLOOR_RESTORE)
    ssh(state, host, "cat > /etc/systemd/system/floor-restore.service", stdin=FLOOR_UNIT)
    # Outside the clock: the collection's units stay off this boot, the kernel is loaded.
    units = " ".join("guestmemfs-vm@%s" % v for v in vms)
    ssh(state, host, "rm -f /root/floor-*.state /root/floor-resume.json; systemctl daemon-reload; "
        "systemctl enable -q floor-restore.service; systemctl disable -q guestmemfs-verify.service %s" % units)
    other = ssh(state, host, OTHER_KERNEL)
    ssh(state, host, "kexec -s -l %s --initrd=%s --reuse-cmdline" % (other, other.replace("vmlinuz-", "initrd.img-")))
    before = ssh(state, host, BOOT_ID)
    ssh(state, host, "systemd-run -q --unit floor-save python3 /root/floor-save.py")
    wait_new_boot(state, host, before)
    deadline = time.time() + 900
    while time.time() < deadline:
        try:
            resumed = json.loads(ssh(state, host, "cat /root/floor-resume.json", timeout=20))
            break
        except (RuntimeError, subprocess.TimeoutExpired, ValueError):
            time.sleep(1)
    else:
        raise RuntimeError("%s: the floor's restore did not finish" % host["name"])
    stopped = json.loads(ssh(state, host, "cat /root/floor-stop.json"))
    # Back under the collection's units (a cold start of the test guests).
    ssh(state, host, "systemctl stop %s; rm -f /root/floor-*.state; systemctl disable -q floor-restore.service; "
        "systemctl enable -q guestmemfs-verify.service %s; systemctl start %s" % (
            " ".join("floor-%s" % v for v in vms), units, units))
    return {host["name"]: host_blackout(list(stopped.values()), list(resumed.values()))}


def wait_new_boot(state, host, before, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ssh(state, host, BOOT_ID, timeout=20) != before:
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(1)
    raise RuntimeError("%s did not come back within %ss" % (host["name"], timeout))


def summary(runs):
    out = {}
    for case in sorted(set(r["case"] for r in runs)):
        figures = [b for r in runs if r["case"] == case and r.get("blackout") for b in r["blackout"].values()]
        if figures:
            out[case] = {"n": len(figures), "min": min(figures), "median": round(statistics.median(figures), 3)}
    if "floor" in out:
        for case, s in out.items():
            s["ratio_min"] = round(s["min"] / out["floor"]["min"], 3)
            s["ratio_median"] = round(s["median"] / out["floor"]["median"], 3)
    return out


def write(out, args, runs):
    s = summary(runs)
    with open(os.path.join(out, "bench-blackout.json"), "w") as fh:
        json.dump({"args": vars(args), "runs": runs, "summary": s}, fh, indent=1)
    lines = ["%-24s %3s %10s %10s %10s %10s" % ("case", "n", "min_s", "median_s", "x floor min", "x floor med")]
    for case, v in s.items():
        row = (case, v["n"], v["min"], v["median"], v.get("ratio_min", "-"), v.get("ratio_median", "-"))
        lines.append("%-24s %3d %10.3f %10.3f %10s %10s" % row)
    lines.append("per host first STOP -> last RESUME; load (1 min) before each run: %s" % ", ".join(
        "%.1f" % r["load"] for r in runs))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "bench-blackout.txt"), "w") as fh:
        fh.write(text)
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="fleet")
    ap.add_argument("--host", default="host1")
    ap.add_argument("--wave", help="comma-separated hosts the collection updates as one wave (default: --host)")
    ap.add_argument("--forks", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="rounds, each a collection run and a floor run")
    ap.add_argument("--out", default=os.path.join(fleet.cache_dir(), "bench-blackout"))
    a = ap.parse_args()
    state = fleet.load_state(a.name)
    if not state:
        raise SystemExit("fleet %r is not up: run scripts/demo first" % a.name)
    os.makedirs(a.out, exist_ok=True)
    by_name = dict((h["name"], h) for h in state["hosts"])
    host = by_name[a.host]
    wave = [by_name[n] for n in (a.wave.split(",") if a.wave else [a.host])]
    vms = ssh(state, host, "ls /etc/guestmemfs-liveupdate/vms | sed 's/.json$//'").split()
    label = "collection %d host%s f%d" % (len(wave), "s" if len(wave) > 1 else "", a.forks)
    runs = []
    try:
        for i in range(a.runs):
            for case in ((label, "floor") if i % 2 == 0 else ("floor", label)):
                t0, ld = time.time(), load()
                print("[%s] round %d: %s (load %.1f)" % (time.strftime("%H:%M:%S"), i + 1, case, ld), flush=True)
                try:
                    b = floor_run(state, host, vms) if case == "floor" else collection_run(state, wave, a.forks, a.out)
                    runs.append({"case": case, "round": i + 1, "load": ld, "blackout": b, "wall_s": round(time.time() - t0)})
                    print("  blackout %s" % b, flush=True)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    runs.append({"case": case, "round": i + 1, "load": ld, "error": str(exc)})
                    print("  FAILED: %s" % exc, flush=True)
                    raise
                finally:
                    write(a.out, a, runs)
    finally:
        sys.stdout.write(write(a.out, a, runs))


if __name__ == "__main__":
    main()
