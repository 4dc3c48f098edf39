"""Fault-injection suite: the live update under the faults a fleet meets, on one host of the
virtual fleet, run as an operator runs it (ansible-playbook guestmemfs.liveupdate.liveupdate).

    scripts/faults [--name fleet] [--host host1] [--only FAULT ...]

Needs a fleet prepared by scripts/demo (two VMs on the pmem backend per host). For each fault the
suite writes a fresh 4 MiB random pattern into every VM's RAM (outside what the test guest
touches), injects the fault, runs the collection, and then checks, from the host itself:
- what the collection did (its failure message, the journal's phase and each VM's state);
- that no VM's memory was lost: every pattern is intact (or, for the VM whose memory the fault
  altered on purpose, still altered: the file was kept as found, not "repaired" or reused);
- that no VM was resumed on unverified memory: a VM restored by this fault's run carries an `ok`
  verdict, a VM that is not `ok` has no running QEMU;
- that the documented recovery command brings every VM back.
It prints a table and writes faults.json and faults.txt (--report, default the cache's report/).
"""

import argparse
import json
import os
import re
import signal
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fleet"))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
import fleet  # noqa: E402
from _collection import importable_collection  # noqa: E402

importable_collection()
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMP  # noqa: E402

AGENT = "python3 /usr/lib/guestmemfs-liveupdate/agent"
PATTERN_OFFSET_MIB = 32


def log(msg):
    print("[faults %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class Host(object):
    def __init__(self, state, name, report):
        self.state = state
        self.h = next(h for h in state["hosts"] if h["name"] == name)
        self.name = name
        self.report = report
        self._ram = {}

    # A command may start a VM's unit, which returns once the VM runs: minutes for a TCG guest on a
    # loaded machine (a cold start's recovery took 5.5 min at a load of 13).
    def ssh(self, command, timeout=900, check=True):
        r = subprocess.run(fleet.ssh_base(self.state, self.h) + [command], capture_output=True, text=True,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError("%s: `%s` failed (rc %d): %s" % (self.name, command[:80], r.returncode,
                                                                r.stderr.strip()[-500:]))
        return r

    def out(self, command, **kw):
        return self.ssh(command, **kw).stdout.strip()

    def try_out(self, command, timeout=20):
        try:
            r = self.ssh(command, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    def journal(self, timeout=900):
        """The host's journal; through a moment the host does not answer (ssh's own rc 255: it may
        be kexecing between two reads), up to ``timeout``."""
        deadline = time.time() + timeout
        while True:
            r = self.ssh("%s status --json" % AGENT, check=False)
            if r.returncode != 255:
                break
            if time.time() >= deadline:
                raise RuntimeError("%s: no answer over SSH for %ss: %s" % (self.name, timeout, r.stderr.strip()[-300:]))
            time.sleep(5)
        if r.returncode != 0:
            raise RuntimeError("%s: `%s status --json` failed (rc %d): %s" % (
                self.name, AGENT, r.returncode, r.stderr.strip()[-500:]))
        return json.loads(r.stdout)

    def vms(self):
        return self.out("ls /etc/guestmemfs-liveupdate/vms | sed 's/.json$//'").split()

    def boot_id(self):
        return self.out("cat /proc/sys/kernel/random/boot_id")

    def ram(self, vm):
        """The VM's RAM file as its configuration names it (pmem: /mnt/vmmem/NAME.ram; luo: the
        holder's link /run/guestmemfs-liveupdate/luo/NAME)."""
        if vm not in self._ram:
            self._ram[vm] = self.out("python3 -c \"import json; print(json.load(open("
                                     "'/etc/guestmemfs-liveupdate/vms/%s.json'))['mem_path'])\"" % vm)
        return self._ram[vm]

    def backend(self):
        return "luo" if all(self.ram(vm).startswith("/run/guestmemfs-liveupdate/luo/") for vm in self.vms()) else "file"

    def other_kernel(self):
        return self.out('ls /boot/vmlinuz-* | grep -v "$(uname -r)" | tail -1')

    def active(self, vm):
        return self.ssh("systemctl is-active -q guestmemfs-vm@%s" % vm, check=False).returncode == 0

    def write_patterns(self):
        digests = {}
        for vm in self.vms():
            digests[vm] = self.out(
                "set -o pipefail; head -c 4M /dev/urandom | dd of=%s bs=1M seek=%d conv=notrunc,fsync "
                "status=none && dd if=%s bs=1M skip=%d count=4 status=none | sha256sum | cut -c1-64"
                % (self.ram(vm), PATTERN_OFFSET_MIB, self.ram(vm), PATTERN_OFFSET_MIB))
        return digests

    def pattern_digests(self):
        return dict((vm, self.out("dd if=%s bs=1M skip=%d count=4 status=none | sha256sum | cut -c1-64"
                                  % (self.ram(vm), PATTERN_OFFSET_MIB))) for vm in self.vms())

    def wait_ssh(self, timeout=900):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.try_out("true") is not None:
                return
            time.sleep(3)
        raise RuntimeError("%s: no SSH within %ss" % (self.name, timeout))

    def wait_vms_active(self, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(self.active(vm) for vm in self.vms()):
                return True
            time.sleep(3)
        return False

    def set_link(self, up):
        with QMP(self.h["qmp"], timeout=10) as q:
            q.connect()
            q.cmd("set_link", name="n0", up=up)

    def hard_reset(self):
        """A hard reset of the host (its own QEMU's system_reset): no shutdown, no sync."""
        with QMP(self.h["qmp"], timeout=10) as q:
            q.connect()
            q.cmd("system_reset")

    def watch(self, unit, script, marker):
        """Start ``script`` (python3, run as root) as a transient unit on the host, a stale one and
        its ``marker`` file (what it writes when it acted) removed first."""
        self.stop_watch(unit)
        self.ssh("rm -f %s" % marker)
        self.ssh("systemd-run -q --unit=%s python3 -c \"%s\"" % (unit, script))

    def stop_watch(self, unit):
        self.ssh("systemctl stop %s 2>/dev/null; systemctl reset-failed %s 2>/dev/null; true" % (unit, unit),
                 check=False)

    def wait_file(self, path, proc=None, timeout=1200):
        """The content of ``path`` on the host once it exists (polled), or None when ``proc`` ended
        or the time ran out first."""
        deadline = time.time() + timeout
        while time.time() < deadline and (proc is None or proc.poll() is None):
            out = self.try_out("cat %s" % path)
            if out:
                return out
            time.sleep(0.5)
        return self.try_out("cat %s" % path)

    def playbook(self, *extra, background=False, timeout=2400, log=None, limit=None):
        """The live update of this host (or of the hosts ``limit`` names); ``background``: its Popen,
        its output on a pipe, or in the file ``log`` (a pipe nobody reads for a while stops a long run)."""
        argv = ["ansible-playbook", "-i", self.state["inventory"], "guestmemfs.liveupdate.liveupdate",
                "--limit", (limit or self.name) + ",localhost"]
        for e in extra:
            argv += ["-e", e]
        env = dict(os.environ, GUESTMEMFS_REPORT_DIR=os.path.join(self.report, "runs"), ANSIBLE_NOCOLOR="1")
        if background:
            out = open(log, "w") if log else subprocess.PIPE  # pylint: disable=consider-using-with
            try:
                return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
            finally:
                if log:
                    out.close()  # the child has its own copy
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        return r.returncode, r.stdout + r.stderr


def finished(proc, log, timeout=3600):
    """Wait for a playbook started with a ``log`` file -> (rc, its output)."""
    proc.wait(timeout=timeout)
    with open(log) as fh:
        return proc.returncode, fh.read()


def failure_messages(output):
    """The msg of every failed task in ansible-playbook's default output."""
    msgs = []
    for line in output.splitlines():
        m = re.match(r"^fatal: \[[^]]+\]: [A-Z!]+ => (\{.*\})\s*$", line)
        if m:
            try:
                msgs.append(json.loads(m.group(1)).get("msg", ""))
            except ValueError:
                msgs.append(m.group(1)[:300])
    return msgs


def saves_since(journal, since_ts):
    """How many saves the journal logged since ``since_ts`` (a second save of one update would show)."""
    return sum(1 for e in journal.get("log", []) if e["msg"].startswith("saving ") and e["ts"] >= since_ts)


def summarize(msgs):
    text = " | ".join(str(m) for m in msgs) or "-"
    return re.sub(r"\s+", " ", text)


# ---------------------------------------------------------------- the faults
# Each returns (what the collection did, recovery command) and leaves the host with every VM running.

def fault_qemu_killed_during_save(host, ctx):
    """QEMU of vm2 is killed while the save runs (the moment its state file starts)."""
    vm = host.vms()[-1]
    # A watcher on the host itself: kill vm2's QEMU as soon as its migration starts writing.
    host.ssh("systemd-run -q --unit=fault-killer python3 -c \"import os,time,subprocess\n"
             "p='/var/lib/guestmemfs-liveupdate/state/%s.state.partial'\n"
             "pid=int(subprocess.check_output(['systemctl','show','-P','MainPID','guestmemfs-vm@%s']))\n"
             "end=time.time()+600\n"
             "while not os.path.exists(p) and time.time()<end: time.sleep(0.005)\n"
             "os.kill(pid,9)\"" % (vm, vm))
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    host.ssh("systemctl stop fault-killer 2>/dev/null; systemctl reset-failed fault-killer 2>/dev/null", check=False)
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    ctx["device_state_lost"] = [vm]  # killed by the fault, not by the collection: its memory stays
    recovery = "systemctl start guestmemfs-vm@%s  # cold-boots the VM whose QEMU died; its RAM file is kept" % vm
    host.ssh(recovery.split("  #")[0])
    return recovery


def fault_bad_kernel_path(host, ctx):
    """A kernel path that does not exist: nothing may pause."""
    rc, output = host.playbook("guestmemfs_kexec_kernel=/boot/vmlinuz-does-not-exist")
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    return "fix guestmemfs_kexec_kernel and re-run ansible-playbook guestmemfs.liveupdate.liveupdate"


def fault_kexec_load_fails(host, ctx):
    """A kernel image that passes for one but cannot load (its first 1 MiB only): kexec_file_load
    refuses it; nothing may pause."""
    host.ssh("head -c 1M %s > /boot/vmlinuz-fault-truncated" % ctx["target"])
    try:
        rc, output = host.playbook("guestmemfs_kexec_kernel=/boot/vmlinuz-fault-truncated",
                                   "guestmemfs_kexec_initrd=" + ctx["target"].replace("vmlinuz-", "initrd.img-"))
    finally:
        host.ssh("rm -f /boot/vmlinuz-fault-truncated", check=False)
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    return "stage a kernel that loads (kexec -s -l by hand shows why), re-run the live update"


def fault_new_kernel_does_not_boot(host, ctx):
    """The new kernel panics (an initramfs it cannot unpack, panic=5): the host cold-boots into
    its default kernel via GRUB, whose cmdline carries the carve-out again."""
    host.ssh("head -c 1M /dev/urandom > /boot/fault-initrd.img")
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"],
                               "guestmemfs_kexec_initrd=/boot/fault-initrd.img",
                               '{"guestmemfs_kexec_append": ["panic=5"]}')
    host.ssh("rm -f /boot/fault-initrd.img")
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False
    return "none needed for the VMs (restored at boot); fix the kernel, then re-run the live update"


def fault_memory_altered(host, ctx):
    """One byte of vm2's RAM changes between the save and the restore (after the VMs are saved,
    before the kexec); the update is then driven by a re-run, which must not save again."""
    vm = host.vms()[-1]
    t0 = time.time()
    before = host.out("uname -r")
    save = subprocess.run(["ansible", "-i", host.state["inventory"], host.name, "-m",
                           "guestmemfs.liveupdate.vm_cpr", "-a", "action=save"],
                          capture_output=True, text=True, check=False)
    if save.returncode != 0:
        raise RuntimeError("save failed: %s" % save.stdout[-800:])
    update_id = host.journal().get("update_id")
    offset = 100 * 2**20 + 7
    flip = ("python3 -c \"f=open('%s','r+b'); f.seek(%d); b=f.read(1); f.seek(%d); "
            "f.write(bytes([b[0]^255])); f.close()\"" % (host.ram(vm), offset, offset))
    host.ssh(flip)
    ctx["altered"] = {vm: offset}
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False
    j = host.journal()
    ctx["same_update"] = j.get("update_id") == update_id
    ctx["saves"] = saves_since(j, t0)
    ctx["held_before_recovery"] = dict((n, (v.get("verify") or {}).get("detail")) for n, v in j.get("vms", {}).items()
                                       if v.get("state") == "held")
    # The pair's failure, kept on the host: every later run checks the pair in full until it is forgotten.
    pair = "%s -> %s" % (before, host.out("uname -r"))
    kept = (j.get("proofs") or {}).get(pair) or {}
    ctx["proof_after"] = {host.name: "%s %s" % (pair, kept.get("result"))}
    if kept.get("result") != "failed":
        ctx.setdefault("problems", []).append("the journal does not keep the pair %s as failed: %s" % (pair, kept))
    forget = "%s proofs --forget %s" % (AGENT, shlex.quote(pair))
    recovery = ("put the memory back, then %s verify %s && systemctl start guestmemfs-vm@%s; once the failure is "
                "understood, %s" % (AGENT, vm, vm, forget))
    host.ssh("%s && %s verify %s && systemctl start guestmemfs-vm@%s && %s" % (flip, AGENT, vm, vm, forget))
    return recovery


# A quarter of a 256 MiB VM's RAM, far from the suite's pattern at 32 MiB.
REGION_OFFSET_MIB, REGION_MIB = 128, 64


def fault_large_region_altered_later_wave(host, ctx):
    """64 MiB of a VM's RAM change after its save, on a host of a later wave: the canary wave (the
    fleet's first host) proves the kernel pair with the full check, so this host's VMs get the
    cheaper one (extents and a sampled content check), which must still hold the VM. A watcher on
    the host freezes its update process once the VM's digests are recorded (journal: saved),
    overwrites the region (the original kept on disk), and lets the update go on to its kexec."""
    first = host.state["hosts"][0]["name"]
    if first == host.name:
        raise RuntimeError("the canary wave is the fleet's first host (%s): run this fault with --host on "
                           "another host (e.g. --host host2)" % first)
    canary = Host(host.state, first, host.report)
    if not canary.wait_vms_active(600):
        raise RuntimeError("%s: not every VM runs: fix the canary host first" % first)
    releases = (canary.out("uname -r"), host.out("uname -r"))
    if releases[0] != releases[1] or canary.other_kernel() != ctx["target"]:
        raise RuntimeError("the canary (%s) and %s must run the same kernel and update to the same one: %s, %s"
                           % (first, host.name, releases, (canary.other_kernel(), ctx["target"])))
    # A pair the fleet proved in an earlier run stays proven (the hosts' journals keep it): the canary
    # then checks a sample too.
    proven_before = dict((k, v.get("result")) for k, v in (canary.journal().get("proofs") or {}).items()
                         if k.startswith(releases[0] + " -> "))
    end = (REGION_OFFSET_MIB + REGION_MIB) << 20
    big = [v for v in host.vms() if int(host.out("stat -Lc %%s %s" % host.ram(v))) >= end]
    if not big:
        raise RuntimeError("%s: no VM has %d MiB of RAM for the region" % (host.name, end >> 20))
    vm = big[-1]
    ram = host.ram(vm)
    marker, orig = "/var/tmp/fault-region-altered", "/var/tmp/fault-region.orig"
    host.ssh("rm -f %s %s" % (marker, orig))
    host.watch("fault-alterer", WATCH_JOURNAL
               + "vm=%r\n" % vm
               + "while not ((journal().get('vms') or {}).get(vm,{}).get('state')=='saved' and journal().get('saver_pid')) "
                 "and time.time()<end: time.sleep(0.005)\n"
               + "saver=journal().get('saver_pid') if time.time()<end else None\n"
               + "if saver:\n"
                 "    os.kill(saver,signal.SIGSTOP)\n"
                 "    try:\n"
               + "        f=open(%r,'r+b'); f.seek(%d); old=f.read(%d)\n" % (ram, REGION_OFFSET_MIB << 20, REGION_MIB << 20)
               + "        o=open(%r,'wb'); o.write(old); o.flush(); os.fsync(o.fileno()); o.close()\n" % orig
               + "        f.seek(%d); f.write(os.urandom(%d)); f.flush(); os.fsync(f.fileno()); f.close()\n"
                 % (REGION_OFFSET_MIB << 20, REGION_MIB << 20)
               + "        m=open(%r,'w'); m.write('%%s %%s' %% (saver, journal().get('phase'))); m.flush(); "
                 "os.fsync(m.fileno()); m.close()\n" % marker
               + "    finally:\n"
                 "        os.kill(saver,signal.SIGCONT)\n", marker)
    try:
        rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"], limit="%s,%s" % (first, host.name))
    finally:
        host.stop_watch("fault-alterer")
    altered = host.try_out("cat %s" % marker)
    if not altered:
        raise RuntimeError("the region was not altered before the kexec (the watcher lost the race or the save "
                           "never started; play rc %s): nothing to show, re-run the fault" % rc)
    ctx["altered"] = {vm: "%d MiB at %d MiB (update process %s frozen at phase %s)" % (
        (REGION_MIB, REGION_OFFSET_MIB) + tuple(altered.split(" ", 1)))}
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False
    j, jc = host.journal(), canary.journal()
    modes = {}
    for name, journal_ in ((first, jc), (host.name, j)):
        modes[name] = dict((n, "%s %s: %s" % (v.get("state"), (v.get("verify") or {}).get("mode"),
                                              (v.get("verify") or {}).get("status")))
                           for n, v in (journal_.get("vms") or {}).items())
    ctx["verify_modes"] = modes
    ctx["held_before_recovery"] = dict((n, (v.get("verify") or {}).get("detail")) for n, v in j.get("vms", {}).items()
                                       if v.get("state") == "held")
    problems = ctx.setdefault("problems", [])
    pair = "%s -> %s" % (releases[0], host.out("uname -r"))
    canary_mode = "sampled" if proven_before.get(pair) == "proven" else "full"
    if any(((v.get("verify") or {}).get("mode")) != canary_mode for v in (jc.get("vms") or {}).values()):
        problems.append("the canary's VMs were not all checked %s (the pair's proof before the run: %s): %s"
                        % (canary_mode, proven_before.get(pair), modes[first]))
    kept = (j.get("proofs") or {}).get(pair) or {}
    ctx["proof_after"] = {host.name: "%s %s" % (pair, kept.get("result"))}
    if kept.get("result") != "failed":
        problems.append("%s's journal does not keep the pair %s as failed: %s" % (host.name, pair, kept))
    if ((j.get("vms") or {}).get(vm, {}).get("verify") or {}).get("mode") != "sampled":
        problems.append("%s's VMs were not checked by the later wave's sampled check: %s" % (host.name, modes[host.name]))
    if vm not in ctx["held_before_recovery"]:
        problems.append("%s was not held: %s" % (vm, modes[host.name]))
    put_back = "dd if=%s of=%s bs=1M seek=%d conv=notrunc,fsync status=none" % (orig, ram, REGION_OFFSET_MIB)
    # The failure is this fault's own doing, understood: the host forgets it, or the pair would be
    # checked in full on every host from now on.
    forget = "%s proofs --forget %s" % (AGENT, shlex.quote(pair))
    host.ssh("%s && %s verify %s && systemctl start guestmemfs-vm@%s && %s && rm -f %s %s" % (
        put_back, AGENT, vm, vm, forget, orig, marker))
    return ("put the memory back (here: %s), then %s verify %s && systemctl start guestmemfs-vm@%s; once the "
            "failure is understood, %s" % (put_back, AGENT, vm, vm, forget))


def fault_controller_killed(host, ctx):
    """The controller dies mid-wave, right after the host saved its VMs; a re-run finishes."""
    t0 = time.time()
    before = host.journal().get("update_id")
    p = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"], background=True)
    deadline = time.time() + 1200
    phase, started = None, False
    while time.time() < deadline and p.poll() is None:
        out = host.try_out("%s status --json" % AGENT)
        if out:
            j = json.loads(out)
            started = started or j.get("update_id") != before
            phase = j.get("phase") if started else phase
        # The host's own update process goes from saving through saved to its kexec faster than a
        # poll over SSH on a loaded machine: the controller is killed once the save has begun, or
        # once the host stops answering after its update began (its kexec).
        if phase in ("saving", "saved", "kexec", "booted") or (started and not out):
            phase = phase if out else "%s, then unreachable (kexec)" % phase
            break
        time.sleep(1)
    if p.poll() is not None:
        raise RuntimeError("the run ended (rc %s) before the host's journal said saving: nothing to kill" % p.returncode)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    ctx["killed_at"] = phase
    host.wait_ssh()
    update_id = host.journal().get("update_id")
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    j = host.journal()
    ctx["same_update"] = j.get("update_id") == update_id
    ctx["saves"] = saves_since(j, t0)
    ctx["expect_same_boot"] = False
    return "re-run ansible-playbook guestmemfs.liveupdate.liveupdate (it resumes from each host's journal)"


def fault_state_storage_full(host, ctx):
    """The state files' filesystem is full (a 64 KiB tmpfs over the state directory)."""
    host.ssh("mkdir -p /var/lib/guestmemfs-liveupdate/state && "
             "mount -t tmpfs -o size=64k,mode=0700 fault-full /var/lib/guestmemfs-liveupdate/state")
    try:
        rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    finally:
        host.ssh("umount /var/lib/guestmemfs-liveupdate/state", check=False)
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    return "free space where /var/lib/guestmemfs-liveupdate/state lives, re-run the live update"


def fault_unreachable_after_kexec(host, ctx):
    """The host's network goes away as its new kernel starts: the controller times out, the host
    restores its VMs by itself; a re-run once it answers again finds it done."""
    # A watcher on the host prints a marker on its serial console the moment the journal says
    # "kexec" (SSH polls miss that window; a quiet kernel prints nothing to wait for): from then on
    # the controller must not reach the new kernel.
    marker = "FAULT-KEXEC-%d" % os.getpid()
    host.ssh("systemctl stop fault-kexec-marker; systemctl reset-failed fault-kexec-marker; true", check=False)
    host.ssh("systemd-run -q --unit=fault-kexec-marker python3 -c \"import json,time\n"
             "end=time.time()+1800\n"
             "while time.time()<end:\n"
             "    try: ph=json.load(open('/var/lib/guestmemfs-liveupdate/journal.json')).get('phase')\n"
             "    except Exception: ph=None\n"
             "    if ph=='kexec': open('/dev/ttyS0','w').write('\\\\n%s\\\\n'); break\n"
             "    time.sleep(0.05)\"" % marker)
    p = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"], "guestmemfs_kexec_timeout=150", background=True)
    deadline = time.time() + 1800
    phase = None
    while time.time() < deadline and p.poll() is None:
        with open(host.h["console"], "rb") as fh:
            if marker.encode() in fh.read():
                phase = "kexec"
                break
        time.sleep(0.1)
    if phase is None:
        raise RuntimeError("the play ended (rc %s) before the host reached the kexec" % p.returncode)
    host.set_link(False)
    ctx["link_cut_at_phase"] = phase
    try:
        output = p.communicate(timeout=2400)[0]
        ctx["msgs"], ctx["rc"] = failure_messages(output), p.returncode
        time.sleep(90)  # nobody is watching: the host boots and restores its VMs by itself
    finally:
        host.set_link(True)
    host.wait_ssh()
    ctx["phase_when_reachable_again"] = host.journal().get("phase")
    rc2, output2 = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rerun_rc"], ctx["rerun_msgs"] = rc2, failure_messages(output2)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False
    return "wait for the host to answer, then re-run the live update (it reports the host done)"


# Watchers (python3 on the host, in a transient unit) share these lines: the journal (parsed again
# only when it changed: a slow host's CPU belongs to the save), and the first VM state file that
# starts being written after the watcher started (a stale one left by an earlier fault does not count).
WATCH_JOURNAL = ("import glob,json,os,signal,time\n"
                 "J='/var/lib/guestmemfs-liveupdate/journal.json'\n"
                 "seen=[None,{}]\n"
                 "def journal():\n"
                 "    try:\n"
                 "        m=os.stat(J).st_mtime_ns\n"
                 "        if m!=seen[0]: seen[1]=json.load(open(J)); seen[0]=m\n"
                 "    except Exception: return {}\n"
                 "    return seen[1]\n"
                 "t0=time.time()\n"
                 "end=t0+1800\n")
WATCH_FIRST_PARTIAL = ("def partial():\n"
                       "    for f in glob.glob('/var/lib/guestmemfs-liveupdate/state/*.state.partial'):\n"
                       "        try:\n"
                       "            if os.stat(f).st_mtime>=t0: return f\n"
                       "        except OSError: pass\n"
                       "while not (partial() and journal().get('phase')=='saving') and time.time()<end: "
                       "time.sleep(0.005)\n"
                       "saver=journal().get('saver_pid') if time.time()<end else None\n")


def fault_power_loss_during_save(host, ctx):
    """The host is hard-reset (its QEMU's system_reset) while its save runs: a watcher on the host
    freezes the update process (SIGSTOP) the moment the first VM's state file starts, so the reset
    lands mid-save however long the harness takes to send it. The host cold-boots into its default
    kernel; its boot-time verify finalises the save: a VM saved completely is verified and restored,
    the others are down with their memory kept and their units boot them afresh."""
    host.watch("fault-freezer", WATCH_JOURNAL + WATCH_FIRST_PARTIAL
               + "if saver:\n"
               "    os.kill(saver,signal.SIGSTOP)\n"
               "    open('/run/fault-frozen','w').write('%s %s' % (saver, journal().get('phase')))", "/run/fault-frozen")
    log = os.path.join(host.report, "power_loss_during_save.log")
    p = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"], background=True, log=log)
    frozen = host.wait_file("/run/fault-frozen", proc=p)
    if not frozen:
        host.stop_watch("fault-freezer")
        os.killpg(p.pid, signal.SIGKILL)
        raise RuntimeError("the play ended (rc %s) before any VM's save started" % p.poll())
    ctx["frozen"] = "update process %s frozen at phase %s" % tuple(frozen.split(" ", 1))
    vms_at_reset = dict((n, v.get("state")) for n, v in (host.journal().get("vms") or {}).items())
    host.hard_reset()
    ctx["reset_at"] = vms_at_reset
    rc, output = finished(p, log)  # it waits for the host to answer, then follows the update
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    host.wait_ssh()
    host.wait_vms_active(600)
    j = host.journal()
    ctx["interrupted_save"] = j.get("interrupted_save")
    ctx["phase_when_reachable_again"] = j.get("phase")
    ctx["device_state_lost"] = sorted(n for n, v in (j.get("vms") or {}).items()
                                      if str(v.get("state", "")).startswith("down"))
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False
    step = host.ssh("%s status >/dev/null && python3 -c \"import sys; sys.path.insert(0, '/usr/lib/guestmemfs-liveupdate')\n"
                    "from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import journal\n"
                    "print(journal.next_step(journal.load_journal(), journal.boot_id())[0])\"" % AGENT,
                    check=False).stdout.strip()
    ctx["next_step_after_boot"] = step
    if step != "start":
        ctx.setdefault("problems", []).append("after the boot the host's next step is %r, not start (a re-run "
                                              "could not update it)" % step)
    return "none for the VMs (their units restored the saved ones, booted the others afresh on their kept memory " \
           "at boot); re-run the live update"


def fault_two_updates_at_once(host, ctx):
    """Two live updates of the host started together, as two controllers would (each without the
    controller-side run lock, which only guards one controller's runs): the host's own update lock
    and idle-journal check let exactly one save; the other is refused (or follows that update)."""
    t0 = time.time()
    unlocked = '{"guestmemfs_lock": {"enabled": false}}'
    logs = [os.path.join(host.report, "two_updates_at_once.%d.log" % i) for i in (1, 2)]
    procs = [host.playbook("guestmemfs_kexec_kernel=" + ctx["target"], unlocked, background=True, log=log)
             for log in logs]
    ends = [finished(p, log) for p, log in zip(procs, logs)]
    ctx["runs"] = [{"rc": rc, "msgs": summarize(failure_messages(out))[:600]} for rc, out in ends]
    ctx["rc"] = 0 if any(rc == 0 for rc, _o in ends) else ends[0][0]
    ctx["msgs"] = ["run %d (rc %d): %s" % (i + 1, r["rc"], r["msgs"]) for i, r in enumerate(ctx["runs"])]
    j = host.journal()
    ctx["saves"] = saves_since(j, t0)
    ctx["expect_same_boot"] = False
    return "none: the refused run changed nothing; re-run it if it did not follow the other's update"


def fault_journal_fs_full_during_save(host, ctx):
    """The filesystem of the journal and manifest (/var/lib/guestmemfs-liveupdate) fills the moment
    the save starts (journal phase saving, after the free-space check): a watcher on the host
    fallocates all its free blocks, and frees them once the update process has ended."""
    fill = "/var/lib/guestmemfs-liveupdate/fault-fill"
    host.watch("fault-filler", WATCH_JOURNAL
               + "while journal().get('phase')!='saving' and time.time()<end: time.sleep(0.01)\n"
               "saver=journal().get('saver_pid')\n"
               "n=0\n"
               "for i in range(8):\n"
               "    st=os.statvfs(J); free=st.f_bfree*st.f_frsize\n"
               "    if free<65536: break\n"
               "    fd=os.open('%s.%%d' %% i,os.O_WRONLY|os.O_CREAT,0o600)\n"
               "    try: os.posix_fallocate(fd,0,free); n+=free\n"
               "    except OSError:\n"
               "        try: os.posix_fallocate(fd,0,free-free//16); n+=free-free//16\n"
               "        except OSError: pass\n"
               "    os.close(fd)\n"
               "st=os.statvfs(J)\n"
               "open('/run/fault-filled','w').write('%%d MiB filled, %%d KiB left, update process %%s' %% "
               "(n>>20,st.f_bfree*st.f_frsize>>10,saver))\n"
               "while saver and os.path.exists('/proc/%%d' %% saver) and journal().get('phase') not in "
               "('saved','kexec') and time.time()<end: time.sleep(0.2)\n"
               "for f in glob.glob('%s.*'): os.unlink(f)\n" % (fill, fill), "/run/fault-filled")
    try:
        rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    finally:
        host.stop_watch("fault-filler")
        host.ssh("rm -f %s.*" % fill, check=False)
    ctx["filled"] = host.try_out("cat /run/fault-filled && rm -f /run/fault-filled")
    if not ctx["filled"]:
        raise RuntimeError("the filesystem was not filled: the watcher never saw the phase saving (play rc %s: %s)"
                           % (rc, summarize(failure_messages(output))[:300]))
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    ctx["phase_after_run"] = host.journal().get("phase")
    recovery = "free space where /var/lib/guestmemfs-liveupdate lives; re-run the live update"
    if ctx["phase_after_run"] == "saving":  # the journal could not record the end: what a re-run does first
        recovery += " (its first step resumes or restores each VM of the interrupted save on this kernel)"
        _vm_cpr(host, "action=restore")
    return recovery


def fault_save_process_killed(host, ctx):
    """The host-side update process (vm_cpr action=update, started detached by the controller) is
    killed (SIGKILL) the moment the first VM's state file starts; the run's rescue resumes or
    restores the VMs on this kernel; a re-run then updates the host."""
    host.watch("fault-save-killer", WATCH_JOURNAL + WATCH_FIRST_PARTIAL
               + "if saver:\n"
               "    os.kill(saver,signal.SIGKILL)\n"
               "    open('/run/fault-save-killed','w').write(str(saver))", "/run/fault-save-killed")
    try:
        rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    finally:
        host.stop_watch("fault-save-killer")
    ctx["killed"] = host.try_out("cat /run/fault-save-killed && rm -f /run/fault-save-killed")
    if not ctx["killed"]:
        raise RuntimeError("the update process was not killed: no VM's save started (play rc %s)" % rc)
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    j = host.journal()
    ctx["phase_after_run"] = j.get("phase")
    ctx["vms_after_run"] = dict((n, v.get("state")) for n, v in (j.get("vms") or {}).items())
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False  # the re-run kexecs
    rc2, output2 = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rerun_rc"], ctx["rerun_msgs"] = rc2, failure_messages(output2)
    return "none for the VMs (the run's rescue resumed them on this kernel); re-run the live update"


def fault_corrupt_journal(host, ctx):
    """The journal (/var/lib/guestmemfs-liveupdate/journal.json) is cut to half its length while
    no update runs: the run must fail with an error naming the file and the recovery, nothing
    paused; the recovery puts the journal back from a copy taken first."""
    path = "/var/lib/guestmemfs-liveupdate/journal.json"
    host.ssh("cp -p %s /run/fault-journal.json && truncate -s $(( $(stat -c %%s %s) / 2 )) %s" % (path, path, path))
    try:
        rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
        ctx["still_corrupt"] = host.ssh("%s status" % AGENT, check=False).returncode == 8
    finally:
        host.ssh("cp -p /run/fault-journal.json %s && rm -f /run/fault-journal.json" % path, check=False)
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    ctx["expect_in_msgs"] = [path, "Recover"]
    if not ctx["still_corrupt"]:
        ctx.setdefault("problems", []).append("the run changed the corrupt journal (agent status read it after)")
    return "restore %s from a copy (or repair its JSON); agent status reads it again; re-run" % path


def _vm_cpr(host, args):
    r = subprocess.run(["ansible", "-i", host.state["inventory"], host.name, "-m", "guestmemfs.liveupdate.vm_cpr",
                        "-a", args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError("vm_cpr %s failed: %s" % (args, r.stdout[-800:]))


# ---------------------------------------------------------------- the luo backend's own faults
# On a host whose VMs live in memfds held by guestmemfs-luo.service (scripts/demo with
# GUESTMEMFS_BACKEND=luo; scripts/faults --name luo).

def _save_by_hand(host):
    _vm_cpr(host, "action=save")


def fault_luo_preserve_fails(host, ctx):
    """The preserve before the save fails (here: the holder already has a session preserving vm1
    only, so it refuses a second): the update stops before any VM pauses."""
    vm = host.vms()[0]
    host.ssh("%s luo preserve %s" % (AGENT, vm))
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = True
    recovery = "%s luo unpreserve  # then re-run the live update" % AGENT
    host.ssh("%s luo unpreserve" % AGENT)
    return recovery


def fault_luo_holder_killed(host, ctx):
    """The memfd holder is killed (SIGKILL) right after the VMs are saved, before the kexec: its fds
    live on in systemd's fd store, systemd restarts it, it takes them back and does the kexec."""
    host.ssh("systemctl stop fault-holder-killer; systemctl reset-failed fault-holder-killer; true", check=False)
    host.ssh("systemd-run -q --unit=fault-holder-killer python3 -c \"import json,os,subprocess,time\n"
             "end=time.time()+1800\n"
             "while time.time()<end:\n"
             "    try: ph=json.load(open('/var/lib/guestmemfs-liveupdate/journal.json')).get('phase')\n"
             "    except Exception: ph=None\n"
             "    if ph=='saved':\n"
             "        pid=int(subprocess.check_output(['systemctl','show','-P','MainPID','guestmemfs-luo']))\n"
             "        os.kill(pid,9); open('/var/lib/fault-holder-killed','w').write(str(pid)); os.sync(); break\n"
             "    time.sleep(0.02)\"")
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_same_boot"] = False
    ctx["holder_killed"] = host.try_out("cat /var/lib/fault-holder-killed && rm -f /var/lib/fault-holder-killed")
    if not ctx["holder_killed"]:
        raise RuntimeError("the holder was not killed: the watcher never saw the phase saved")
    return "none: systemd restarts the holder, which takes every fd back from its fd store"


def fault_luo_retrieve_fails(host, ctx):
    """After the kexec, one VM's memfd does not come back (its token in the journal is wrong): that
    VM is held, not resumed; the session is not finished, so its memory stays retrievable; the
    manifest's token brings it back."""
    vm = host.vms()[-1]
    _save_by_hand(host)
    host.ssh("python3 -c \"import sys; sys.path.insert(0, '/usr/lib/guestmemfs-liveupdate')\n"
             "from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostupdate\n"
             "hostupdate.update_journal(lambda j: j['luo']['tokens'].update({'%s': 99}), msg='fault: wrong token')\"" % vm)
    rc, output = host.playbook("guestmemfs_kexec_kernel=" + ctx["target"])
    ctx["rc"], ctx["msgs"] = rc, failure_messages(output)
    ctx["expect_failure"] = True
    ctx["expect_same_boot"] = False
    j = host.journal()
    ctx["held_before_recovery"] = dict((n, (v.get("verify") or {}).get("detail")) for n, v in j.get("vms", {}).items()
                                       if v.get("state") == "held")
    luo_rec = j.get("luo") or {}
    ctx["luo_before_recovery"] = dict((k, luo_rec.get(k)) for k in ("retrieved", "retrieve_errors", "finished_ts"))
    token = host.out("python3 -c \"import json; print(json.load(open('/var/lib/guestmemfs-liveupdate/manifest.json'))"
                     "['files']['%s']['luo_token'])\"" % vm)
    recovery = "%s luo retrieve %s %s && %s verify %s && systemctl start guestmemfs-vm@%s" % (
        AGENT, vm, token, AGENT, vm, vm)
    host.ssh(recovery)
    return recovery


FAULTS = [
    ("qemu_killed_during_save", fault_qemu_killed_during_save),
    ("bad_kernel_path", fault_bad_kernel_path),
    ("kexec_load_fails", fault_kexec_load_fails),
    ("new_kernel_does_not_boot", fault_new_kernel_does_not_boot),
    ("memory_altered", fault_memory_altered),
    ("large_region_altered_later_wave", fault_large_region_altered_later_wave),
    ("controller_killed", fault_controller_killed),
    ("state_storage_full", fault_state_storage_full),
    ("unreachable_after_kexec", fault_unreachable_after_kexec),
    ("power_loss_during_save", fault_power_loss_during_save),
    ("two_updates_at_once", fault_two_updates_at_once),
    ("journal_fs_full_during_save", fault_journal_fs_full_during_save),
    ("save_process_killed", fault_save_process_killed),
    ("corrupt_journal", fault_corrupt_journal),
    ("luo_preserve_fails", fault_luo_preserve_fails),
    ("luo_holder_killed", fault_luo_holder_killed),
    ("luo_retrieve_fails", fault_luo_retrieve_fails),
]
# Faults that only a luo host has; on such a host the generic faults that alter a file run too.
LUO_ONLY = ("luo_preserve_fails", "luo_holder_killed", "luo_retrieve_fails")


def run_fault(host, name, fn):
    log("%s: preparing" % name)
    if not host.wait_vms_active(120):
        raise RuntimeError("%s: not every VM runs before the fault: fix the host first" % name)
    before = {"boot_id": host.boot_id(), "release": host.out("uname -r"), "patterns": host.write_patterns()}
    ctx = {"target": host.other_kernel()}
    t0 = time.time()
    log("%s: injecting" % name)
    recovery = fn(host, ctx)
    host.wait_ssh()
    host.wait_vms_active(600)
    j = host.journal()
    after = {"boot_id": host.boot_id(), "release": host.out("uname -r"), "patterns": host.pattern_digests()}
    lost = [vm for vm, d in before["patterns"].items() if after["patterns"].get(vm) != d]
    unverified = []
    for vm, rec in (j.get("vms") or {}).items():
        verdict = (rec.get("verify") or {}).get("status")
        if rec.get("state") == "restored" and verdict != "ok":
            unverified.append(vm)
    running = dict((vm, host.active(vm)) for vm in host.vms())
    kexeced = after["boot_id"] != before["boot_id"]
    row = {
        "fault": name,
        "collection": summarize(ctx.get("msgs", [])),
        "play_rc": ctx.get("rc"),
        "phase": j.get("phase"),
        "vm_states": dict((vm, rec.get("state")) for vm, rec in (j.get("vms") or {}).items()),
        "kexec": "%s -> %s" % (before["release"], after["release"]) if kexeced else "no (same boot)",
        "memory_lost": lost,
        "resumed_unverified": unverified,
        "vms_running_after_recovery": running,
        "recovery": recovery,
        "seconds": round(time.time() - t0),
    }
    for k in ("killed_at", "same_update", "saves", "phase_when_reachable_again", "rerun_rc", "rerun_msgs",
              "link_cut_at_phase", "holder_killed", "luo_before_recovery",
              "device_state_lost", "altered", "held_before_recovery", "frozen", "reset_at", "interrupted_save",
              "next_step_after_boot", "runs", "filled", "killed", "phase_after_run", "vms_after_run",
              "still_corrupt", "verify_modes", "proof_after"):
        if k in ctx:
            row[k] = ctx[k]
    problems = list(ctx.get("problems", []))  # the fault's own checks
    said = summarize(ctx.get("msgs", []))
    for text in ctx.get("expect_in_msgs", []):
        if text not in said:
            problems.append("the run's failure did not name %r" % text)
    if lost:
        problems.append("memory lost: %s" % lost)
    if unverified:
        problems.append("resumed on unverified memory: %s" % unverified)
    if not all(running.values()):
        problems.append("VMs not running after the recovery: %s" % [v for v, r in running.items() if not r])
    if ctx.get("expect_same_boot") and kexeced:
        problems.append("the host kexeced although the update had to stop before it")
    if ctx.get("expect_failure") and ctx.get("rc") == 0:
        problems.append("the run reported success although the update could not happen")
    if not ctx.get("expect_failure") and ctx.get("rc") not in (0, None):
        problems.append("the run failed (rc %s)" % ctx.get("rc"))
    if ctx.get("rerun_rc") not in (0, None):
        problems.append("the re-run failed (rc %s)" % ctx["rerun_rc"])
    if ctx.get("saves", 1) != 1:
        problems.append("the VMs were saved %s times in one update" % ctx["saves"])
    if ctx.get("same_update") is False:
        problems.append("the re-run started a new update instead of finishing the interrupted one")
    row["ok"] = not problems
    row["problems"] = problems
    log("%s: %s in %ss" % (name, "ok" if row["ok"] else "PROBLEMS: " + "; ".join(problems), row["seconds"]))
    return row


def render(rows):
    lines = ["| fault | what the collection did | VMs (journal) | kexec | memory lost | resumed on unverified "
             "memory | recovery | result |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %s | %s | %s | %s | %s | `%s` | %s |" % (
            r["fault"], r["collection"][:400].replace("|", "/"),
            ", ".join("%s %s" % kv for kv in sorted(r["vm_states"].items())), r["kexec"],
            ", ".join(r["memory_lost"]) or "none", ", ".join(r["resumed_unverified"]) or "none",
            r["recovery"].replace("|", "/"), "ok" if r["ok"] else "; ".join(r["problems"])))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--name", default="fleet")
    ap.add_argument("--host", default="host1")
    ap.add_argument("--only", nargs="*", choices=[n for n, _f in FAULTS])
    ap.add_argument("--report", default=os.path.join(fleet.cache_dir(), "report"))
    a = ap.parse_args()
    state = fleet.load_state(a.name)
    if not state:
        raise SystemExit("fleet %r is not up: run scripts/demo first" % a.name)
    os.makedirs(a.report, exist_ok=True)
    host = Host(state, a.host, a.report)
    rows = []

    # --only re-runs some faults: keep the earlier results of the others, in the suite's order.
    earlier = {}
    if a.only:
        try:
            with open(os.path.join(a.report, "faults.json")) as fh:
                earlier = dict((r["fault"], r) for r in json.load(fh))
        except (OSError, ValueError, KeyError, TypeError):
            earlier = {}

    def write_report():  # after every fault: a long suite cut short still leaves its results
        merged = dict(earlier, **dict((r["fault"], r) for r in rows))
        ordered = [merged[n] for n, _f in FAULTS if n in merged]
        with open(os.path.join(a.report, "faults.json"), "w") as fh:
            json.dump(ordered, fh, indent=1)
        with open(os.path.join(a.report, "faults.txt"), "w") as fh:
            fh.write(render(ordered))
    luo_host = host.backend() == "luo"
    for name, fn in FAULTS:
        if a.only and name not in a.only:
            continue
        if name in LUO_ONLY and not luo_host:
            log("%s: skipped (a luo backend fault; this host's VMs are not on luo)" % name)
            continue
        try:
            rows.append(run_fault(host, name, fn))
        except Exception as exc:  # one fault's harness error must not hide the others' results
            log("%s: the suite itself failed: %s" % (name, exc))
            rows.append({"fault": name, "collection": "-", "vm_states": {}, "kexec": "-", "memory_lost": [],
                         "resumed_unverified": [], "recovery": "-", "ok": False,
                         "problems": ["suite error: %s" % exc]})
            write_report()
            break
        write_report()
    print(render(rows))
    print("%d faults, %d ok; report: %s/faults.{txt,json}" % (len(rows), sum(r["ok"] for r in rows), a.report))
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
