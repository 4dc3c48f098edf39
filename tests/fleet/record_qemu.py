"""Record a real QEMU's answers about preservability as unit-test fixtures.

On the controller:
    python3 tests/fleet/record_qemu.py --fleet NAME --host host1 --dest tests/unit/fixtures/qemu-10.0

copies the collection's module_utils and this script to the fleet host, runs it there with
``--on-host`` (QEMU under TCG, ``-S``: no guest is needed to ask QEMU), and writes one JSON file
per scenario into --dest: the argv, the raw QMP exchanges (``transcript``, replayable), what
``preservability.ask_qemu`` made of them (``answers``), a few extra questions (does the blocker
list depend on the mode, on the capabilities), the result of an actual cpr-reboot ``migrate`` to a
file, and whether ``-only-migratable`` lets the VM start. ``machines.json`` holds
``-machine help`` and QMP ``query-machines`` (on ``-machine none``).
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REMOTE = "/tmp/record-qemu"


def scenarios(wd, qemu):
    """name -> (argv, the machine type it needs when that may be missing, or None)."""
    qmp = os.path.join(wd, "%s.qmp")
    ram = os.path.join(wd, "%s.ram")

    def base(name, machine="pc-q35-10.0,memory-backend=ram0", share="on"):
        argv = [qemu, "-name", name, "-nodefaults", "-display", "none", "-accel", "tcg", "-S",
                "-machine", machine, "-m", "64M",
                "-qmp", "unix:%s,server=on,wait=off" % (qmp % name)]
        if "memory-backend=" in machine:
            argv += ["-object", "memory-backend-file,id=ram0,size=64M,mem-path=%s,share=%s" % (ram % name, share)]
        return argv

    disk = os.path.join(wd, "disk.qcow2")
    vdi = os.path.join(wd, "disk.vdi")
    return {
        # A preservable VM: RAM on a shared file, a qcow2 disk, a user-mode NIC.
        "clean": (base("clean") + ["-drive", "file=%s,if=none,id=d0,format=qcow2" % disk,
                                   "-device", "virtio-blk-pci,drive=d0",
                                   "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"], None),
        "not_shared": (base("not_shared", share="off"), None),
        "plain_m": (base("plain_m", machine="pc-q35-10.0"), None),
        # ivshmem-plain (master=off by default) registers a blocker for every migration mode.
        "blocker_ivshmem": (base("blocker_ivshmem") + [
            "-object", "memory-backend-file,id=shm0,size=1M,mem-path=/dev/shm/record-ivshmem,share=on",
            "-device", "ivshmem-plain,memdev=shm0"], None),
        # A VDI image blocks normal migration only (migrate_add_blocker_normal): cpr-reboot is not
        # blocked by it. The question must be asked in cpr-reboot mode.
        "blocker_vdi_normal_only": (base("blocker_vdi_normal_only") + [
            "-drive", "file=%s,if=none,id=d0,format=vdi" % vdi, "-device", "virtio-blk-pci,drive=d0"], None),
        # A machine type QEMU 10.0 still offers (deprecated) and later versions dropped: a VM started
        # on it cannot be restored by such a QEMU. Recorded only where the binary offers it.
        "old_machine": (base("old_machine", machine="pc-q35-2.12,memory-backend=ram0"), "pc-q35-2.12"),
    }


# -- on the host ----------------------------------------------------------------------------------

class Recorder(object):
    """Wraps the collection's QMP client and keeps every exchange."""

    def __init__(self, qmp):
        self.qmp = qmp
        self.transcript = []

    def cmd(self, execute, **arguments):
        from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMPError
        entry = {"execute": execute}
        if arguments:
            entry["arguments"] = arguments
        try:
            entry["return"] = self.qmp.cmd(execute, **arguments)
        except QMPError as exc:
            entry["error"] = str(exc)
            self.transcript.append(entry)
            raise
        self.transcript.append(entry)
        return entry["return"]


def _connect(path):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMP
    q = QMP(path, timeout=30)
    q.connect(wait=30)
    return q


def _version(qemu):
    return subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[0]


def record_scenario(name, argv, wd):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import preservability
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMPError
    out = {"scenario": name, "argv": argv}
    # Does QEMU even start with -only-migratable? (The quick test for blockers registered at start.)
    om = argv[:1] + ["-only-migratable"] + [a for a in argv[1:] if a != "-qmp" and not a.startswith("unix:")]
    p = subprocess.Popen(om, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _o, err = p.communicate(timeout=5)
        out["only_migratable"] = {"started": False, "rc": p.returncode, "stderr": err.strip()}
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        out["only_migratable"] = {"started": True}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    qmp_path = [a for a in argv if a.startswith("unix:")][0][5:].split(",")[0]
    try:
        q = _connect(qmp_path)
        rec = Recorder(q)
        out["query-version"] = q.cmd("query-version")
        out["answers"] = preservability.ask_qemu(rec)
        out["transcript"] = rec.transcript
        # Extra questions, on the same VM: the blocker list with capabilities only, and with
        # the mode but no capabilities.
        extra = {}
        caps = [{"capability": c, "state": True} for c in preservability.CPR_CAPABILITIES]
        q.cmd("migrate-set-capabilities", capabilities=caps)
        extra["caps_on_mode_normal"] = q.cmd("query-migrate")
        q.cmd("migrate-set-parameters", mode="cpr-reboot")
        extra["caps_on_mode_cpr_reboot"] = q.cmd("query-migrate")
        q.cmd("migrate-set-capabilities", capabilities=[dict(c, state=False) for c in caps])
        extra["caps_off_mode_cpr_reboot"] = q.cmd("query-migrate")
        q.cmd("migrate-set-parameters", mode="normal")
        extra["caps_off_mode_normal"] = q.cmd("query-migrate")
        out["blockers_by_setting"] = extra
        # What the save does: capabilities, mode, migrate to a file.
        q.cmd("migrate-set-capabilities", capabilities=caps)
        q.cmd("migrate-set-parameters", mode="cpr-reboot")
        state = os.path.join(wd, name + ".state")
        try:
            q.cmd("migrate", uri="file:" + state)
            deadline = time.time() + 60
            while True:
                m = q.cmd("query-migrate")
                if m.get("status") in ("completed", "failed", "cancelled") or time.time() > deadline:
                    break
                time.sleep(0.2)
            out["migrate"] = {"query-migrate": m,
                              "state_bytes": os.path.getsize(state) if os.path.exists(state) else None}
        except QMPError as exc:
            out["migrate"] = {"error": str(exc)}
        try:
            q.cmd("quit")
        except QMPError:
            pass
        q.close()
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out["stderr"] = proc.stderr.read().strip()
    return out


def record_machines(qemu, wd):
    out = {"binary": qemu, "version": _version(qemu)}
    helped = subprocess.run([qemu, "-machine", "help"], capture_output=True, text=True, check=False)
    out["machine_help"] = helped.stdout
    sock = os.path.join(wd, "machines.qmp")
    proc = subprocess.Popen([qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                             "-qmp", "unix:%s,server=on,wait=off" % sock])
    try:
        q = _connect(sock)
        out["query-version"] = q.cmd("query-version")
        out["query-machines"] = q.cmd("query-machines")
        q.cmd("quit")
        q.close()
    finally:
        proc.wait(timeout=10)
    return out


def on_host(qemu, only):
    wd = tempfile.mkdtemp(prefix="record-qemu-")
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(wd, "disk.qcow2"), "64M"], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", os.path.join(wd, "disk.vdi"), "64M"], check=True)
        result = {"version": _version(qemu), "machines": record_machines(qemu, wd), "scenarios": {}}
        offered = set(line.split()[0] for line in result["machines"]["machine_help"].splitlines()[1:] if line)
        for name, (argv, needs) in scenarios(wd, qemu).items():
            if (only and name not in only) or (needs and needs not in offered):
                continue
            result["scenarios"][name] = record_scenario(name, argv, wd)
        json.dump(result, sys.stdout)
    finally:
        shutil.rmtree(wd, True)
        if os.path.exists("/dev/shm/record-ivshmem"):
            os.unlink("/dev/shm/record-ivshmem")


# -- on the controller ----------------------------------------------------------------------------

def _bundle():
    """A tar of module_utils laid out as ansible_collections/guestmemfs/liveupdate, and this script."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(os.path.join(ROOT, "plugins", "module_utils"),
                "ansible_collections/guestmemfs/liveupdate/plugins/module_utils",
                filter=lambda ti: None if "__pycache__" in ti.name else ti)
        tar.add(os.path.abspath(__file__), "record_qemu.py")
    return buf.getvalue()


def controller(fleet_name, host_name, dest, qemu, only):
    sys.path.insert(0, HERE)
    import fleet
    state = fleet.load_state(fleet_name)
    host = next((h for h in (state or {}).get("hosts", []) if h["name"] == host_name), None)
    if not host:
        raise SystemExit("no host %s in fleet %s" % (host_name, fleet_name))
    cmd = ("rm -rf {r} && mkdir -p {r} && tar -C {r} -xzf - && cd {r} && PYTHONPATH={r} "
           "python3 record_qemu.py --on-host --qemu {q} {o}").format(
               r=REMOTE, q=qemu, o=" ".join("--only " + o for o in only))
    r = subprocess.run(fleet.ssh_base(state, host) + [cmd], input=_bundle(), capture_output=True, timeout=900,
                       check=False)
    if r.returncode != 0:
        raise SystemExit("recording failed: %s" % r.stderr.decode(errors="replace"))
    result = json.loads(r.stdout)
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "machines.json"), "w") as fh:
        json.dump(result["machines"], fh, indent=1, sort_keys=True)
        fh.write("\n")
    for name, data in result["scenarios"].items():
        data["version"] = result["version"]
        with open(os.path.join(dest, name + ".json"), "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        print("%s: %s" % (name, os.path.join(dest, name + ".json")))
    print("%s: machines.json" % result["version"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleet", default="fleet")
    p.add_argument("--host", default="host1")
    p.add_argument("--dest")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--only", action="append", default=[], help="record only this scenario (repeatable)")
    p.add_argument("--on-host", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.on_host:
        on_host(a.qemu, a.only)
    elif not a.dest:
        p.error("--dest is required")
    else:
        controller(a.fleet, a.host, a.dest, a.qemu, a.only)


if __name__ == "__main__":
    main()
