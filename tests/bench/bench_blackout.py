"""Benchmark: the collection's live update against the true floor, on the same fleet host,
interleaved, per host first QMP STOP -> last RESUME (the host's blackout).

    python3 tests/bench/bench_blackout.py [--name fleet] [--host host1] [--runs 3]
                                          [--vms 1,8] [--wave host1,host2 --forks 1] [--out DIR]

Needs a fleet prepared by scripts/demo (VMs running on the pmem backend, two kernels installed).
Each round runs the collection (ansible-playbook liveupdate.yml, --limit the host or the wave) and
the floor, one after the other, each into the kernel that is not running (so both go both ways).

The floor is the least a host can do and keep its VMs: on the host, the other kernel loaded first
(outside the clock); then one process saves every VM in parallel over QMP (cpr-reboot,
x-ignore-shared, stop, migrate to a file, fsync, quit), syncs and `kexec -e`; at boot a unit
ordered right after the backend's mount starts each QEMU with -incoming defer, loads the state and
`cont`s. A VM's CPU quota is lifted once it is paused and set again once it runs, as the
collection does. Its QEMU runs as root, unconfined (the VM's definition built with paths where a confined
QEMU is handed descriptors): what confinement costs counts against the collection. No manifest,
no verification, no journal, no SSH on its path. Afterwards its VMs go back
under their units with a cold start (these are test guests).

With --vms, each round runs the floor (at --floor-vms, default every count) and the collection once per VM count: the first N of the
host's VMs run (vm1, the real guest, first), the others are stopped and disabled (outside the clock).
Counts above the fleet's VMs add counting guests (128 MiB, 5% CPU each) to a copy of the fleet's
inventory, which prepare.yml applies once (its carve-out grows: a cold reboot of the fleet hosts).
With --wave, the collection also updates every host of the wave as one wave at --forks (at the
smallest VM count), and each host's blackout is reported; the floor runs on the wave's hosts at
once too (every host armed, then their saves started together), which bounds what two hosts
sharing this machine's cores add to any wave, and on --host alone for the other cases. Every
collection run uses --forks, so the 1-host and the wave runs differ only in the wave.
Prints a table and writes bench-blackout.json (every run, min and median per case, the ratios with
the issue's targets, the load before each run) to --out after every run.
A failed run is recorded as one and left out of the figures; the rounds go on once its hosts answer
and their agents say no operator must act (else they stop, saying why). A host whose kernel panics
during a run (the fleet's TCG boot Oops) is reset through its QEMU's monitor, as a BMC would: that
run is a failed one.
"""

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fleet"))
import fleet  # noqa: E402

QMP_LIB = r'''
import json, os, socket, struct, subprocess, sys, threading, time
# The collection's QMP client and CPU quota calls as installed on the host (stdlib only); nothing else of it.
sys.path.insert(0, "/usr/lib/guestmemfs-liveupdate")
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMP, event_time as ts
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpu_quota
STATE = "/var/lib/guestmemfs-liveupdate/state/floor-%s.state"
WAIT_S = 600  # a TCG fleet host under load answers slowly; a hung QEMU still ends the wait
def qmp(path, wait=0.0):
    q = QMP(path, timeout=WAIT_S)
    q.connect(wait)
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True},
                                                   {"capability": "x-ignore-shared", "state": True}])
    q.cmd("migrate-set-parameters", mode="cpr-reboot")
    return q
done = lambda e: e["data"]["status"] in ("completed", "failed")
VMS = json.load(open("/root/floor-vms.json"))
'''

# The critical path, one process on the host: every VM saved in parallel, sync, kexec -e. The state
# goes where the collection's confined QEMU may write (its state directory), into a file made for
# the QEMU's user (its QMP peer's credentials), as the collection hands it one. A failed save resumes
# every VM and kexecs nothing.
FLOOR_SAVE = QMP_LIB + r'''
stops, errors, conns = {}, {}, {}
def save(name):
    q = conns[name] = qmp("/run/guestmemfs-liveupdate/%s.qmp" % name)
    _pid, uid, gid = struct.unpack("3i", q.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    fd = os.open(STATE % name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600); os.fchown(fd, uid, gid); os.close(fd)
    q.cmd("stop"); stops[name] = ts(q.wait_event("STOP", WAIT_S))
    # paused: its QEMU saves at full speed, as the collection's does
    cpu_quota.lift(subprocess.call, {"name": name, "cpu_quota": VMS[name]["quota"]})
    q.cmd("migrate", uri="file:" + STATE % name)
    status = q.wait_event("MIGRATION", WAIT_S, done)["data"]["status"]
    if status != "completed": raise SystemExit("migration of %s %s" % (name, status))
    fd = os.open(STATE % name, os.O_RDONLY); os.fsync(fd); os.close(fd)
def guarded(name):  # a thread's SystemExit vanishes silently: keep what went wrong
    try: save(name)
    except BaseException as e: errors[name] = repr(e)
threads = [threading.Thread(target=guarded, args=(n,)) for n in VMS]
for t in threads: t.start()
for t in threads: t.join()
json.dump({"stops": stops, "errors": errors}, open("/root/floor-stop.json", "w"))
if errors:
    for q in conns.values():
        try: q.cmd("cont")
        except BaseException: pass
    sys.exit(1)
for q in conns.values():
    try: q.cmd("quit")
    except BaseException: pass
time.sleep(0.2)  # the QEMUs let go of their memory
open("/root/floor-armed", "w").close()
os.sync()
os.execvp("kexec", ["kexec", "-e"])
'''

# At boot, right after the backend's mount (floor-restore.service): every VM in parallel.
FLOOR_RESTORE = QMP_LIB + r'''
os.makedirs("/run/guestmemfs-liveupdate", exist_ok=True)
resumed = {}
def bridges(argv):  # -netdev bridge,id=net0,br=br0
    return [o[3:] for a in argv if a.startswith("bridge,") for o in a.split(",") if o.startswith("br=")]
def restore(name):
    v = VMS[name]
    qmp_path = "/run/guestmemfs-liveupdate/%s.qmp" % name
    # A bridged NIC's helper needs its bridge: wait for the kernel's interface, as the collection's agent does
    # (without it the floor's QEMU died at once in a 2-host wave, its bridge not there yet).
    deadline = time.time() + 180
    while [b for b in bridges(v["argv"]) if not os.path.exists("/sys/class/net/" + b)]:
        if time.time() > deadline: raise RuntimeError("bridges %s never came" % bridges(v["argv"]))
        time.sleep(0.1)
    subprocess.check_call(["systemd-run", "-q", "--unit", "floor-" + name] + v["argv"] + ["-incoming", "defer"])
    q = qmp(qmp_path, wait=WAIT_S)
    q.cmd("migrate-incoming", uri="file:" + STATE % name); q.wait_event("MIGRATION", WAIT_S, done)
    q.cmd("cont"); resumed[name] = ts(q.wait_event("RESUME", WAIT_S))
    if v["quota"]:  # the guest's quota once it runs, as the collection gives it (on the floor's own unit)
        subprocess.call(["systemctl", "set-property", "--runtime", "floor-%s.service" % name, "CPUQuota=" + v["quota"]])
errors = {}
def guarded(name):  # a thread's SystemExit vanishes silently: keep what went wrong
    try: restore(name)
    except BaseException as e: errors[name] = repr(e)
threads = [threading.Thread(target=guarded, args=(n,)) for n in VMS]
for t in threads: t.start()
for t in threads: t.join()
os.unlink("/root/floor-armed")
json.dump({"resumed": resumed, "errors": errors}, open("/root/floor-resume.json", "w"))
'''

FLOOR_UNIT = """[Unit]
Description=benchmark floor: restore the VMs right after the backend's mount
DefaultDependencies=no
After=systemd-remount-fs.service
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


PROGRESS_S = 30  # the longest silence of a long step


def progress(what, started, log_path=None):
    """One line saying what still runs, for how long, and the last line of its log."""
    last = ""
    if log_path and os.path.exists(log_path):
        with open(log_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(log_path) - 4096))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
            last = lines[-1][:120] if lines else ""
    print("[%s]     %s: %ds%s" % (time.strftime("%H:%M:%S"), what, time.time() - started,
                                  ("; log: " + last) if last else ""), flush=True)


def finish(proc, what, timeout=None, stdin=None, log_path=None, every=PROGRESS_S):
    """Wait for ``proc`` (its output, when piped), saying every ``every`` s that it still runs.
    -> (stdout, stderr); the process is killed past ``timeout``."""
    started = time.time()
    while True:
        try:
            out, err = proc.communicate(stdin, timeout=every)
            return out, err
        except subprocess.TimeoutExpired:
            stdin = None  # handed over by the first call
            if timeout is not None and time.time() - started >= timeout:
                proc.kill()
                proc.communicate()
                raise
            progress(what, started, log_path)


def ssh(state, host, command, stdin=None, timeout=600):
    proc = subprocess.Popen(fleet.ssh_base(state, host) + [command], stdin=subprocess.PIPE if stdin is not None
                            else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = finish(proc, "%s: %s" % (host["name"], command[:60]), timeout=timeout, stdin=stdin,
                      every=min(PROGRESS_S, timeout))
    if proc.returncode != 0:
        raise RuntimeError("%s: %s failed (rc %d): %s" % (host["name"], command[:80], proc.returncode, err.strip()))
    return out.strip()


def playbook(argv, log_path, what, env=None):
    """ansible-playbook into ``log_path``, a line of progress every 30 s; raises on failure."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finish(proc, what, log_path=log_path)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv)


def load():
    return float(open("/proc/loadavg").read().split()[0])


def host_blackout(stops, resumes):
    """First STOP -> last RESUME of one host, seconds."""
    return round(max(resumes) - min(stops), 3)


def vm_blackouts(stops, resumes):
    """{vm: its own STOP -> RESUME, seconds}: which VM made the host's blackout."""
    return dict((n, round(resumes[n] - stops[n], 3)) for n in resumes if n in stops)


def collection_run(state, inventory, hosts, forks, out, checks=None, per_vm=None, phases=None):
    """liveupdate.yml over ``hosts`` as one wave -> {host: blackout_s}; ``checks`` gets each host's
    memory check (full while its kernel pair is unproven, then sampled), ``per_vm`` each host's
    vm_blackouts, ``phases`` each VM's unit start as its journal has it."""
    env = dict(os.environ, GUESTMEMFS_REPORT_DIR=os.path.join(out, "report"))
    other = ssh(state, hosts[0], OTHER_KERNEL)
    # One target for the wave: every host must run the same kernel (a host already on the target is
    # "done" and measures an earlier update's journal).
    releases = dict((h["name"], ssh(state, h, "uname -r")) for h in hosts)
    if len(set(releases.values())) > 1:
        raise RuntimeError("the wave's hosts run different kernels: %s (align them first)" % releases)
    boots = dict((h["name"], ssh(state, h, BOOT_ID)) for h in hosts)
    names = [h["name"] for h in hosts]
    # one wave of all the hosts given: the canary wave holds them all
    rollout = json.dumps({"guestmemfs_rollout": {"canary": len(hosts)}})
    playbook(["ansible-playbook", "-i", inventory, "guestmemfs.liveupdate.liveupdate", "-f", str(forks),
              "--limit", ",".join(names) + ",localhost", "-e", "guestmemfs_kexec_kernel=" + other, "-e", rollout],
             os.path.join(out, "collection-%d.log" % int(time.time())), "liveupdate.yml on " + ",".join(names), env=env)
    result = {}
    for h in hosts:
        if ssh(state, h, BOOT_ID) == boots[h["name"]]:
            raise RuntimeError("%s was not updated (same boot): no blackout to measure" % h["name"])
        j = json.loads(ssh(state, h, "python3 /usr/lib/guestmemfs-liveupdate/agent status --json"))
        vms = j["vms"].values()
        if any(v.get("state") != "restored" for v in vms):
            states = dict((n, v.get("state")) for n, v in j["vms"].items())
            raise RuntimeError("%s: not every VM restored: %s" % (h["name"], states))
        result[h["name"]] = host_blackout([v["stop_ts"] for v in vms], [v["resume_ts"] for v in vms])
        if per_vm is not None:
            per_vm[h["name"]] = vm_blackouts(dict((n, v["stop_ts"]) for n, v in j["vms"].items()),
                                             dict((n, v["resume_ts"]) for n, v in j["vms"].items()))
        if phases is not None:
            phases[h["name"]] = dict((n, v.get("phases")) for n, v in j["vms"].items())
        if checks is not None:
            checks[h["name"]] = j.get("manifest_mode")
    return result


COUNTING_VM = {"memory": "128M", "vcpus": 1, "cpu_quota": "5%", "kernel": "/var/lib/guestmemfs-guest/counter-guest.mb"}


def inventory_with_vms(state, count, out):
    """The fleet's inventory, or a copy of it whose hosts have ``count`` VMs: its own, then counting
    guests (vmN) up to ``count``. -> (path, the VM names in order)."""
    with open(state["inventory"]) as fh:
        inv = yaml.safe_load(fh)
    hv_vars = inv["all"]["children"]["hypervisors"]["vars"]
    vms = list(hv_vars["guestmemfs_vms"])
    if count <= len(vms):
        return state["inventory"], [v["name"] for v in vms]
    taken = set(v["name"] for v in vms)
    n = 1
    while len(vms) < count:
        if "vm%d" % n not in taken:
            vms.append(dict(COUNTING_VM, name="vm%d" % n))
        n += 1
    hv_vars["guestmemfs_vms"] = vms
    path = os.path.join(out, "inventory-%dvms.yml" % count)
    with open(path, "w") as fh:
        fh.write("# bench_blackout.py: the fleet's inventory (%s) with %d VMs per host\n" % (state["inventory"], count))
        yaml.safe_dump(inv, fh, default_flow_style=False, sort_keys=False)
    return path, [v["name"] for v in vms]


def prepare_vms(state, inventory, hosts, out):
    """prepare.yml with the bench's VMs: their definitions and units, the carve-out sized for them.
    A carve-out that grows needs a cold reboot, which prepare.yml refuses while QEMUs run: the
    fleet's VMs are test guests, stopped first."""
    for h in hosts:
        ssh(state, h, "systemctl stop 'guestmemfs-vm@*'", timeout=900)
    playbook(["ansible-playbook", "-i", inventory, "guestmemfs.liveupdate.prepare",
              "--limit", ",".join(h["name"] for h in hosts), "-e", "memory_backend_reboot_ok=true"],
             os.path.join(out, "prepare.log"), "prepare.yml")


def use_vms(state, hosts, names, active):
    """Only ``active`` of ``names`` run (and start at boot) on each host; outside the clock."""
    def units(vms):
        return " ".join("guestmemfs-vm@%s" % v for v in vms)
    idle = [v for v in names if v not in active]
    for h in hosts:
        # A floor run cut short leaves its QEMUs on the VMs' memory and its unit armed for the next boot.
        ssh(state, h, "systemctl stop 'floor-vm*' floor-save 2>/dev/null; systemctl reset-failed 'floor-*' 2>/dev/null; "
            "systemctl disable -q floor-restore.service 2>/dev/null; rm -f /root/floor-armed; "
            "systemctl enable -q guestmemfs-verify.service; true")
        if idle:
            ssh(state, h, "systemctl disable -q --now %s" % units(idle))
        ssh(state, h, "systemctl enable -q %s && systemctl start %s" % (units(active), units(active)), timeout=900)
        running = ssh(state, h, "ls /etc/guestmemfs-liveupdate/vms | sed 's/.json$//' | while read v; do "
                      "systemctl is-active -q guestmemfs-vm@$v && echo $v; done; true").split()
        if sorted(running) != sorted(active):
            raise RuntimeError("%s: running %s, wanted %s" % (h["name"], running, active))


def floor_run(state, host, vms, before_save=lambda: None, per_vm=None):
    """The floor on one host -> {host: blackout_s}. ``before_save()`` runs once the host is armed
    (its kernel loaded), right before its save: a wave's hosts wait there for each other.
    ``per_vm`` gets the host's vm_blackouts."""
    quotas = dict((v, json.loads(ssh(state, host, "cat /etc/guestmemfs-liveupdate/vms/%s.json" % v)).get("cpu_quota"))
                  for v in vms)
    argvs = dict((v, json.loads(ssh(state, host, UNCONFINED_ARGV % v))) for v in vms)
    ssh(state, host, "cat > /root/floor-vms.json", stdin=json.dumps(dict(
        (v, {"argv": argvs[v], "quota": quotas[v]}) for v in vms)))
    ssh(state, host, "cat > /root/floor-save.py", stdin=FLOOR_SAVE)
    ssh(state, host, "cat > /root/floor-restore.py", stdin=FLOOR_RESTORE)
    ssh(state, host, "cat > /etc/systemd/system/floor-restore.service", stdin=FLOOR_UNIT)
    # Outside the clock: the collection's units stay off this boot, the kernel is loaded.
    units = " ".join("guestmemfs-vm@%s" % v for v in vms)
    ssh(state, host, "rm -f /var/lib/guestmemfs-liveupdate/state/floor-*.state /root/floor-resume.json /root/floor-stop.json; "
        "systemctl daemon-reload; "
        "systemctl enable -q floor-restore.service; systemctl disable -q guestmemfs-verify.service %s" % units)
    other = ssh(state, host, OTHER_KERNEL)
    ssh(state, host, "kexec -s -l %s --initrd=%s --reuse-cmdline" % (other, other.replace("vmlinuz-", "initrd.img-")))
    before = ssh(state, host, BOOT_ID)
    before_save()
    ssh(state, host, "systemctl reset-failed floor-save 2>/dev/null; systemd-run -q --unit floor-save python3 /root/floor-save.py")
    started = shown = time.time()
    deadline = started + 900
    while time.time() < deadline:
        if time.time() - shown >= PROGRESS_S:
            progress("%s: the floor's save, kexec and boot" % host["name"], started)
            shown = time.time()
        try:
            if ssh(state, host, BOOT_ID, timeout=20) != before:
                break
            saved = json.loads(ssh(state, host, "cat /root/floor-stop.json 2>/dev/null || echo '{}'", timeout=20))
            if saved.get("errors"):
                raise RuntimeError("%s: the floor's save failed, every VM resumed, no kexec: %s" % (host["name"], saved["errors"]))
        except (subprocess.TimeoutExpired, ValueError):
            pass
        except RuntimeError as exc:
            if "floor's save failed" in str(exc):
                raise
        time.sleep(1)
    else:
        raise RuntimeError("%s did not come back within 900s" % host["name"])
    started = shown = time.time()
    deadline = started + 900
    while time.time() < deadline:
        if time.time() - shown >= PROGRESS_S:
            progress("%s: the floor's restore" % host["name"], started)
            shown = time.time()
        try:
            restored = json.loads(ssh(state, host, "cat /root/floor-resume.json", timeout=20))
            break
        except (RuntimeError, subprocess.TimeoutExpired, ValueError):
            time.sleep(1)
    else:
        raise RuntimeError("%s: the floor's restore did not finish" % host["name"])
    stopped = json.loads(ssh(state, host, "cat /root/floor-stop.json"))["stops"]
    resumed = restored["resumed"]
    if restored["errors"] or not resumed:
        raise RuntimeError("%s: the floor's restore failed: %s" % (host["name"], restored["errors"] or "no VM resumed"))
    # Back under the collection's units (a cold start of the test guests).
    ssh(state, host, "systemctl stop %s; rm -f /var/lib/guestmemfs-liveupdate/state/floor-*.state; "
        "systemctl disable -q floor-restore.service; "
        "systemctl enable -q guestmemfs-verify.service %s; systemctl start %s" % (
            " ".join("floor-%s" % v for v in vms), units, units))
    if per_vm is not None:
        per_vm[host["name"]] = vm_blackouts(stopped, resumed)
    return {host["name"]: host_blackout(list(stopped.values()), list(resumed.values()))}


def floor_wave(state, hosts, vms, run=None, timeout=900):
    """The floor on every host of a wave at once: each host armed, then every save started together
    (a barrier), so the hosts kexec and boot side by side as the collection's wave does. A host
    that fails before the barrier breaks it: the others never save. -> {host: blackout_s}"""
    run = run or floor_run
    barrier = threading.Barrier(len(hosts), timeout=timeout)
    results, errors = {}, {}

    def one(h):
        try:
            results.update(run(state, h, vms, before_save=barrier.wait))
        except Exception as exc:  # pylint: disable=broad-except  # gathered, raised below for the whole wave
            barrier.abort()
            errors[h["name"]] = str(exc) or repr(exc)
    threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("the floor's wave: %s" % "; ".join("%s: %s" % e for e in sorted(errors.items())))
    return results


def align_kernels(state, inventory, host, hosts, forks, out):
    """Outside the clock: every host of the wave onto ``host``'s running kernel (the floor and the
    1-host runs flip ``host`` alone), by the collection's own update of each lagging host."""
    release = ssh(state, host, "uname -r")
    for h in hosts:
        if ssh(state, h, "uname -r") != release:
            print("[%s]   %s onto %s first (not measured)" % (time.strftime("%H:%M:%S"), h["name"], release), flush=True)
            collection_run(state, inventory, [h], forks, out)


class PanicReset:
    """During a run, a host whose console shows a new kernel panic is reset through its QEMU's
    monitor, once, as a BMC's watchdog would (a fleet sets panic=N or has one). The fleet's
    multi-threaded TCG hosts sometimes take an int3 Oops while a kexeced kernel boots
    (tests/fleet/fleet.py, restart_if_panicked): unreset, the host sits panicked until the play's
    900-s wait ends it and the benchmark with it. The reset host cold-boots, the collection
    restores its VMs by itself and the play fails saying so: a failed run, recorded as one."""

    def __init__(self, hosts, reset=None, every=5.0):
        self.hosts, self.every, self.reset = hosts, every, reset or fleet.reset_host
        self.resets, self.offsets, self.stop = {}, {}, threading.Event()
        for h in hosts:  # what the console held before the run is an earlier boot's
            self.offsets[h["name"]] = os.path.getsize(h["console"]) if os.path.exists(h["console"]) else 0
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def look(self):
        for h in self.hosts:
            line = None if h["name"] in self.resets else fleet.console_panic(h["console"], self.offsets[h["name"]])
            if line:
                try:
                    self.reset(h)
                    self.resets[h["name"]] = line
                except Exception as exc:  # pylint: disable=broad-except  # said, not fatal: the run fails anyway
                    self.resets[h["name"]] = "%s; its reset failed: %s" % (line, exc)
                print("[%s]     %s: %s; reset through its QEMU's monitor" % (time.strftime("%H:%M:%S"), h["name"], line),
                      flush=True)

    def watch(self):
        while not self.stop.wait(self.every):
            self.look()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.look()


# When the backend's device came, step by step (monotonic, seconds since the kernel's start): the
# kernel registering it, the module loader done, udev done with it, its unit active, the mount.
BACKEND_DEVICE = r"""
journalctl -b -k -o short-monotonic --no-pager | grep -m 4 -E 'pmem|nd_pmem|namespace[0-9]' || true
for u in systemd-modules-load.service systemd-udev-trigger.service dev-pmem0.device mnt-vmmem.mount; do
  printf '%s active at %s\n' $u "$(systemctl show -P ActiveEnterTimestampMonotonic $u | awk '{printf "%.3f", $1/1e6}')"
done
printf 'udev initialised pmem0 at %s\n' "$(udevadm info -q property -n /dev/pmem0 | sed -n 's/^USEC_INITIALIZED=//p' | awk '{printf "%.3f", $1/1e6}')"
for d in $(ls /sys/class/net | grep '^br'); do
  printf 'bridge %s at %s\n' $d "$(systemctl show -P ActiveEnterTimestampMonotonic sys-subsystem-net-devices-$d.device | awk '{printf "%.3f", $1/1e6}')"
done
"""


def boot_analysis(state, host, unit):
    """What the new boot spent before ``unit`` (the floor's restore unit, or vm1's): systemd's own
    account, kept with the run to compare the two boots. Never fails a run."""
    try:
        return {"unit": unit, "time": ssh(state, host, "systemd-analyze time --no-pager", timeout=120),
                "chain": ssh(state, host, "systemd-analyze critical-chain --no-pager %s" % unit, timeout=120),
                "device": ssh(state, host, BACKEND_DEVICE, timeout=120),
                # its own start and end (the chain's first line has no "@" for the unit asked)
                "unit_times": ssh(state, host, "systemctl show -p InactiveExitTimestampMonotonic "
                                  "-p ActiveEnterTimestampMonotonic %s" % unit, timeout=120)}
    except (RuntimeError, subprocess.SubprocessError) as exc:
        return {"unit": unit, "error": str(exc)}


def _seconds(text):
    """systemd's '1min 2.5s', '11.600s', '120ms' -> seconds."""
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)(min|ms|us|s)\b", text):
        total += float(num) * {"min": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return round(total, 3)


def boot_figures(boot):
    """A run's new boot in seconds since its kernel started (from boot_analysis): the kernel and
    initramfs, then when the backend's device came (the module loader done, udev done with it, its
    unit), its mount, the first bridge (a bridged VM's QEMU starts once it exists), and the unit
    that restores (its start and how long it took). Missing -> None."""
    out = dict.fromkeys(("kernel", "initrd", "modules", "udev", "device", "mount", "bridge", "unit_start", "unit_took"))
    text = (boot or {}).get("time") or ""
    for part in ("kernel", "initrd"):
        m = re.search(r"([0-9.a-z ]+?) \(%s\)" % part, text)
        out[part] = _seconds(m.group(1)) if m else None
    userspace_at = (out["kernel"] or 0.0) + (out["initrd"] or 0.0)
    device = (boot or {}).get("device") or ""
    for key, pattern in (("modules", r"systemd-modules-load.service active at ([0-9.]+)"),
                         ("device", r"dev-pmem0.device active at ([0-9.]+)"),
                         ("mount", r"mnt-vmmem.mount active at ([0-9.]+)"),
                         ("udev", r"udev initialised pmem0 at ([0-9.]+)"),
                         ("bridge", r"bridge \S+ at ([0-9.]+)")):  # the first: a bridged VM's QEMU waits for it
        m = re.search(pattern, device)
        out[key] = float(m.group(1)) if m and float(m.group(1)) > 0 else None
    times = dict(line.split("=", 1) for line in ((boot or {}).get("unit_times") or "").splitlines() if "=" in line)
    keys = ("InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    start, active = (int(times.get(k) or 0) / 1e6 for k in keys)
    if start:
        out["unit_start"] = round(start, 3)
        out["unit_took"] = round(active - start, 3) if active >= start else None
        return out
    chain = [line for line in ((boot or {}).get("chain") or "").splitlines() if line.startswith((boot or {}).get("unit") or "-")]
    if chain and out["kernel"] is not None:
        m = re.search(r"\s@(\S+)", chain[0])
        out["unit_start"] = round(userspace_at + _seconds(m.group(1)), 3) if m else None
        m = re.search(r"\s\+(\S+)", chain[0])
        out["unit_took"] = _seconds(m.group(1)) if m else None
    return out


class RoundsStopped(RuntimeError):
    pass


def run_rounds(cases, rounds, run_case, recovered, on_row=lambda runs: None):
    """Each round runs every case once, in alternating order. ``run_case(i, case) -> row`` (a row
    with "error" for a failed run). A failed run is recorded and the rounds go on once
    ``recovered(case)`` finds its hosts back (None), else they stop (RoundsStopped, saying why).
    ``on_row(runs)`` after every run: the figures so far are written whatever comes next."""
    runs = []
    for i in range(rounds):
        for c in (cases if i % 2 == 0 else cases[::-1]):
            row = run_case(i, c)
            runs.append(row)
            problem = recovered(c) if row.get("error") else None
            if problem:
                row["stopped"] = problem
            on_row(runs)
            if problem:
                raise RoundsStopped("%s round %d failed and its hosts did not recover: %s" % (c[0], i + 1, problem))
    return runs


def recovered(state, hosts, wait_s=900):
    """After a failed run: None once every host answers and its agent says no operator must act,
    else what is wrong (the next case's use_vms then starts the VMs it needs, or stops)."""
    for h in hosts:
        deadline = time.time() + wait_s
        while True:
            try:
                proc = subprocess.run(fleet.ssh_base(state, h) + ["python3 /usr/lib/guestmemfs-liveupdate/agent status"],
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
                if proc.returncode == 0:
                    break
                if proc.returncode == 4:
                    return "%s: its agent says an operator must act: %s" % (h["name"], proc.stdout.strip()[-400:])
            except subprocess.TimeoutExpired:
                pass
            if time.time() >= deadline:
                return "%s: no answer from its agent within %d s" % (h["name"], wait_s)
            time.sleep(10)
    return None


# The targets: the collection against the floor at the same VM count; 8 VMs against 1 VM;
# a 2-host wave at forks=1 against 1 host.
TARGET_FLOOR, TARGET_VMS, TARGET_WAVE = 1.10, 1.2, 1.05


def case_label(kind, vms, hosts=1, forks=None):
    if kind == "floor":
        return "floor %dvm" % vms if hosts == 1 else "floor %dhosts %dvm" % (hosts, vms)
    return "collection %dhost%s f%d %dvm" % (hosts, "s" if hosts > 1 else "", forks, vms)


def summary(runs):
    """min and median per case of every host's blackout; the ratios the issue asks for, each with
    its target (min over min, median over median)."""
    cases = {}
    for case in sorted(set(r["case"] for r in runs)):
        figures = [b for r in runs if r["case"] == case and r.get("blackout") for b in r["blackout"].values()]
        if figures:
            cases[case] = {"n": len(figures), "min": min(figures), "median": round(statistics.median(figures), 3)}
    meta = dict((r["case"], r) for r in runs)

    def ratio(name, num, den, target):
        if num in cases and den in cases:
            ratios.append({"ratio": name, "case": num, "against": den, "target": target,
                           "min": round(cases[num]["min"] / cases[den]["min"], 3),
                           "median": round(cases[num]["median"] / cases[den]["median"], 3)})
    ratios = []
    # the runs that proved their kernel pair (full check) are listed, not taken into the ratios
    colls = [c for c in cases if c.startswith("collection") and not c.endswith("full-check")]
    for c in colls:  # each collection case against the floor of its VM count and hosts
        ratio("collection / floor", c, case_label("floor", meta[c]["vms"], meta[c]["hosts"]), TARGET_FLOOR)
    singles = sorted((meta[c]["vms"], c) for c in colls if meta[c]["hosts"] == 1)
    for vms, c in singles[1:]:
        ratio("%d VMs / %d VM%s" % (vms, singles[0][0], "s" if singles[0][0] > 1 else ""), c, singles[0][1],
              TARGET_VMS)
    for c in colls:
        if meta[c]["hosts"] > 1:
            one = case_label("collection", meta[c]["vms"], 1, meta[c]["forks"])
            ratio("%d-host wave / 1 host" % meta[c]["hosts"], c, one, TARGET_WAVE)
    # What the machine itself adds to a wave (its hosts share its cores): the floor's own wave, no target.
    for c in [c for c in cases if c.startswith("floor") and meta[c]["hosts"] > 1]:
        ratio("%d-host wave / 1 host" % meta[c]["hosts"], c, case_label("floor", meta[c]["vms"]), None)
    # ... and to more VMs per host (their QEMUs start on its cores): the floor's own, no target.
    floors = sorted((meta[c]["vms"], c) for c in cases if c.startswith("floor") and meta[c]["hosts"] == 1)
    for vms, c in floors[1:]:
        ratio("%d VMs / %d VM%s" % (vms, floors[0][0], "s" if floors[0][0] > 1 else ""), c, floors[0][1], None)
    return {"cases": cases, "ratios": ratios}


def write(out, args, runs):
    s = summary(runs)
    with open(os.path.join(out, "bench-blackout.json"), "w") as fh:
        json.dump({"args": vars(args), "runs": runs, "summary": s}, fh, indent=1)
    lines = ["%-32s %3s %10s %10s" % ("case", "n", "min_s", "median_s")]
    for case, v in s["cases"].items():
        lines.append("%-32s %3d %10.3f %10.3f" % (case, v["n"], v["min"], v["median"]))
    lines += ["", "%-22s %-32s %-32s %7s %7s %7s" % ("ratio", "case", "against", "min", "median", "target")]
    for r in s["ratios"]:
        row = (r["ratio"], r["case"], r["against"], r["min"], r["median"],
               "<= %.2f" % r["target"] if r["target"] is not None else "-")
        lines.append("%-22s %-32s %-32s %7.3f %7.3f %7s" % row)
    lines.append("per host first STOP -> last RESUME, seconds; load (1 min) before each run: %s" % ", ".join(
        "%.1f" % r["load"] for r in runs))
    lines += ["", "each run's new boot on --host, seconds since its kernel started (systemd's account):",
              "%-32s %5s %-28s %8s %6s %6s %7s %6s %6s %6s %6s %6s %6s" % (
                  "case", "round", "kernel", "blackout", "kernel", "initrd", "modules", "udev", "device", "mount",
                  "bridge", "unit@", "unit+")]
    for r in runs:
        if r.get("error"):
            continue
        f = boot_figures(r.get("boot"))
        cell = dict((k, "-" if v is None else "%.1f" % v) for k, v in f.items())
        lines.append("%-32s %5s %-28s %8.1f %6s %6s %7s %6s %6s %6s %6s %6s %6s" % (
            r["case"], r.get("round", "-"), (r.get("kernel") or "-").replace("+deb13-amd64", ""),
            (r.get("blackout") or {}).get(getattr(args, "host", None), max((r.get("blackout") or {"-": 0.0}).values())),
            cell["kernel"], cell["initrd"], cell["modules"],
            cell["udev"], cell["device"], cell["mount"], cell["bridge"], cell["unit_start"], cell["unit_took"]))
    per_vm = [r for r in runs if not r.get("error") and r.get("per_vm")]
    if per_vm:
        lines += ["", "each run's VMs, their own STOP -> RESUME (seconds), the last to resume first:"]
        for r in per_vm:
            for h, vms in sorted(r["per_vm"].items()):
                lines.append("%-32s %5s %-6s %s" % (r["case"], r.get("round", "-"), h, "  ".join(
                    "%s %.1f" % (n, b) for n, b in sorted(vms.items(), key=lambda nb: -nb[1]))))
    lines += phase_lines(runs)
    failed = [r for r in runs if r.get("error")]
    if failed:
        lines.append("FAILED: " + "; ".join("%s round %d: %s" % (r["case"], r["round"], r["error"][:200]) for r in failed))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "bench-blackout.txt"), "w") as fh:
        fh.write(text)
    return text


PHASES = (("agent_started_at_s", "agent@"), ("imports_s", "imports"), ("verify_s", "verify"),
          ("nic_wait_s", "nics"), ("qemu_up_s", "qemu_up"), ("load_s", "load"), ("resume_s", "resume"))


def phase_lines(runs):
    """Each collection run's VMs, the last to resume first: when its agent started (seconds since
    the kernel's start) and how long each part of its unit's start took (the journal's phases)."""
    rows = [r for r in runs if not r.get("error") and r.get("phases")]
    if not rows:
        return []
    lines = ["", "each VM's unit start on the new boot (agent@: seconds since the kernel started; then seconds):",
             "%-32s %5s %-6s %-6s %8s " % ("case", "round", "host", "vm", "blackout")
             + " ".join("%7s" % label for _k, label in PHASES)]
    for r in rows:
        for h, vms in sorted(r["phases"].items()):
            own = (r.get("per_vm") or {}).get(h) or {}
            for n in sorted(vms, key=lambda n: -own.get(n, 0.0)):
                p = vms[n] or {}
                blackout = "%.1f" % own[n] if n in own else "-"
                lines.append("%-32s %5s %-6s %-6s %8s " % (r["case"], r.get("round", "-"), h, n, blackout)
                             + " ".join("%7s" % ("-" if p.get(k) is None else "%.1f" % p[k]) for k, _l in PHASES))
    return lines


def plan(vm_counts, wave_hosts, forks, floor_counts=None):
    """The cases of one round: per VM count the floor (at ``floor_counts``, default every count) and
    the collection on one host; the wave (the floor's, then the collection's) at the smallest count.
    -> [(label, kind, vms, hosts)]"""
    cases = []
    for n in vm_counts:
        floor = floor_counts is None or n in floor_counts
        if floor:
            cases.append((case_label("floor", n), "floor", n, 1))
        cases.append((case_label("collection", n, 1, forks), "collection", n, 1))
        if wave_hosts > 1 and n == min(vm_counts):
            if floor:  # the floor's wave bounds what the machine adds to any wave
                cases.append((case_label("floor", n, wave_hosts), "floor", n, wave_hosts))
            cases.append((case_label("collection", n, wave_hosts, forks), "collection", n, wave_hosts))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="fleet")
    ap.add_argument("--host", default="host1")
    ap.add_argument("--wave", help="comma-separated hosts the collection also updates as one wave")
    ap.add_argument("--vms", help="comma-separated VM counts per host (default: the VMs the hosts have)")
    ap.add_argument("--floor-vms", help="the VM counts the floor runs at (default: every --vms count)")
    ap.add_argument("--forks", type=int, default=5)
    ap.add_argument("--prepare", action="store_true",
                    help="run prepare.yml first even if the hosts have the VMs: install the collection under test")
    ap.add_argument("--runs", type=int, default=3, help="rounds, each every case once, in alternating order")
    ap.add_argument("--out", default=os.path.join(fleet.cache_dir(), "bench-blackout"))
    a = ap.parse_args()
    state = fleet.load_state(a.name)
    if not state:
        raise SystemExit("fleet %r is not up: run scripts/demo first" % a.name)
    os.makedirs(a.out, exist_ok=True)
    by_name = dict((h["name"], h) for h in state["hosts"])
    host = by_name[a.host]
    wave = [by_name[n] for n in (a.wave.split(",") if a.wave else [a.host])]
    if host not in wave:
        raise SystemExit("--host %s is not in --wave %s" % (a.host, a.wave))
    counts = sorted(set(int(n) for n in a.vms.split(","))) if a.vms else []
    inventory, names = inventory_with_vms(state, max(counts or [0]), a.out)

    def defined(h):
        return set(ssh(state, h, "ls /etc/guestmemfs-liveupdate/vms | sed 's/.json$//'").split())
    if a.prepare or (inventory != state["inventory"] and any(not set(names) <= defined(h) for h in wave)):
        print("[%s] prepare.yml with %d VMs per host (%s)" % (time.strftime("%H:%M:%S"), len(names), inventory), flush=True)
        prepare_vms(state, inventory, wave, a.out)
    if not counts:
        counts = [len(ssh(state, host, "ls /etc/guestmemfs-liveupdate/vms").split())]
    cases = plan(counts, len(wave), a.forks, [int(n) for n in a.floor_vms.split(",")] if a.floor_vms else None)
    runs = []

    def run_case(i, c):
        label, kind, n, nhosts = c
        hosts = wave if nhosts > 1 else [host]
        if a.vms:
            use_vms(state, wave, names, names[:n])
        if nhosts > 1:
            align_kernels(state, inventory, host, wave, a.forks, a.out)
        active = names[:n] if a.vms else ssh(state, host, "ls /etc/guestmemfs-liveupdate/vms | sed 's/.json$//'").split()
        t0, ld = time.time(), load()
        print("[%s] round %d: %s (load %.1f)" % (time.strftime("%H:%M:%S"), i + 1, label, ld), flush=True)
        row = {"case": label, "round": i + 1, "load": ld, "vms": n, "hosts": nhosts, "forks": a.forks}
        before = ssh(state, host, "uname -r")  # the two kernels boot in different times: say which way
        checks, per_vm, phases, panics = {}, {}, {}, PanicReset(hosts)
        try:
            with panics:
                if kind == "floor":
                    one = functools.partial(floor_run, per_vm=per_vm)
                    b = one(state, host, active) if nhosts == 1 else floor_wave(state, hosts, active, run=one)
                else:
                    b = collection_run(state, inventory, hosts, a.forks, a.out, checks, per_vm, phases)
            if panics.resets:  # a blackout with a reset in it measures the reset
                raise RuntimeError("reset after a kernel panic at boot: %s" % panics.resets)
            row.update(blackout=b, wall_s=round(time.time() - t0),
                       kernel="%s -> %s" % (before, ssh(state, host, "uname -r")),
                       boot=boot_analysis(state, host, "floor-restore.service" if kind == "floor"
                                          else "guestmemfs-vm@%s.service" % active[0]))
            if checks:
                row["memory_check"] = checks
            if per_vm:
                row["per_vm"] = per_vm
            if phases:
                row["phases"] = phases
            if "full" in checks.values():
                # the run that proved its kernel pair (a canary): its own case, not the steady state's
                row["case"] = label + " full-check"
            print("  blackout %s%s" % (b, " memory check %s" % checks if checks else ""), flush=True)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            row.update(error=str(exc), wall_s=round(time.time() - t0))
            if panics.resets:
                row["reset"] = panics.resets
            print("  FAILED: %s" % exc, flush=True)
        return row

    def back(c):
        problem = recovered(state, wave if c[3] > 1 else [host])
        print("  %s" % ("hosts back, going on" if problem is None else "stopping: " + problem), flush=True)
        return problem

    def keep(rows):
        runs[:] = rows
        write(a.out, a, runs)

    try:
        run_rounds(cases, a.runs, run_case, back, on_row=keep)
    finally:
        sys.stdout.write(write(a.out, a, runs))


if __name__ == "__main__":
    main()
