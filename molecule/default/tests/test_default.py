"""What the default (pmem), luo and guestmemfs scenarios leave on each fleet hypervisor (testinfra,
over Ansible). The backend comes from GUESTMEMFS_MOLECULE_BACKEND (the luo and guestmemfs scenarios
set it); a test for another backend is skipped, saying so."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

BACKEND = os.environ.get("GUESTMEMFS_MOLECULE_BACKEND", "pmem")
pmem_only = pytest.mark.skipif(BACKEND != "pmem", reason="pmem backend only (this run: %s)" % BACKEND)
luo_only = pytest.mark.skipif(BACKEND != "luo", reason="luo backend only (this run: %s)" % BACKEND)
guestmemfs_only = pytest.mark.skipif(BACKEND != "guestmemfs", reason="guestmemfs backend only (this run: %s)" % BACKEND)
GUEST = os.environ.get("GUESTMEMFS_FLEET_GUEST", "linux")
files_only = pytest.mark.skipif(BACKEND == "luo", reason="backends with a filesystem only (this run: %s)" % BACKEND)


def ram(name):
    """Where a VM's RAM is: a file on the pmem DAX mount, or the luo holder's memfd (a link)."""
    return f"/run/guestmemfs-liveupdate/luo/{name}" if BACKEND == "luo" else f"/mnt/vmmem/{name}.ram"


def test_kernel_has_kexec_file(host):
    release = host.check_output("uname -r")
    config = host.file(f"/boot/config-{release}").content_string
    assert "CONFIG_KEXEC_FILE=y" in config


def test_qemu_is_new_enough_for_cpr_reboot(host):
    out = host.check_output("qemu-system-x86_64 --version")
    major, minor = map(int, re.search(r"version (\d+)\.(\d+)", out).groups())
    assert (major, minor) >= (10, 0)


def test_packages_installed(host):
    for name in ("kexec-tools", "qemu-system-x86") + (("ndctl",) if BACKEND == "pmem" else ()):
        assert host.package(name).is_installed


AGENT_BYTECODE_CHECK = r"""
import importlib.util, os, struct
stale = []
for d, _, files in os.walk("/usr/lib/guestmemfs-liveupdate/ansible_collections"):
    for f in sorted(files):
        if f.endswith(".py"):
            src = os.path.join(d, f)
            st = os.stat(src)
            try:
                with open(importlib.util.cache_from_source(src), "rb") as fh:
                    head = fh.read(16)
            except OSError:
                stale.append(src + ": no bytecode")
                continue
            if head[:4] != importlib.util.MAGIC_NUMBER or struct.unpack("<III", head[4:]) != (
                    0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF):
                stale.append(src + ": bytecode of another source or Python")
print("\n".join(stale) or "all current")
"""


def test_the_agents_code_is_compiled_for_the_units_python(host):
    # The units' /usr is read-only: Python would compile every module again at each agent start
    # inside the blackout. Bytecode that Python takes must match its source's mtime and size.
    out = host.check_output("/usr/bin/python3 -c %s" % shlex.quote(AGENT_BYTECODE_CHECK))
    assert out == "all current"


def test_came_back_from_kexec_into_another_kernel(host):
    before = host.file("/var/lib/molecule-boot-before").content_string.strip()
    now = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    assert before and now and before != now
    assert host.check_output("uname -r") != host.file("/var/lib/molecule-kernel-before").content_string.strip()
    # kexec skips firmware and GRUB: the kernel came up with the command line kexec passed on.
    assert "BOOT_IMAGE=" not in host.file("/proc/cmdline").content_string


def test_facts_module_reports_this_host(host):
    result = host.ansible("guestmemfs.liveupdate.guestmemfs_facts", "mount_point=/", check=False)
    facts = result["ansible_facts"]["guestmemfs"]
    assert facts["kexec_file"] is True
    assert facts["boot_id"] == host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    if BACKEND == "pmem":
        # MemTotal lacks the 640 MiB carve-out; the firmware map still counts it.
        assert facts["memory"]["total_bytes"] < facts["memory"]["firmware_ram_bytes"] - 600 * 2**20
        assert facts["backend_mount"]["mounted"] is True
    elif BACKEND == "luo":
        # This boot came from a KHO kexec, and says so in the boot parameters.
        assert facts["kho"]["incoming"] is True, facts["kho"]
        assert facts["kho"]["liveupdate_device"] is True
    else:
        # The RFC's KHO v2 handed over the device tree guestmemfs serialised: its region, its files.
        kho = facts["kho"]
        assert kho["interface"] == "rfc" and kho["incoming"] is True, kho
        handed = kho["incoming_handover"]["guestmemfs"]
        assert handed["num_inodes"] >= 2 and len(handed["regions"]) == 1, handed
        assert handed["regions"][0]["bytes"] >= 2 * 256 * 2**20
        assert facts["backend_mount"]["mounted"] is True
    assert json.dumps(facts)


def test_hostname_from_inventory(host):
    assert host.check_output("hostname") == host.backend.get_hostname()


@pmem_only
def test_pmem_carveout_on_running_and_configured_cmdline(host):
    running = host.file("/proc/cmdline").content_string.split()
    memmap = [a for a in running if a.startswith("memmap=")]
    assert memmap and "!" in memmap[0]
    dropin = host.file("/etc/default/grub.d/99-guestmemfs-liveupdate.cfg").content_string
    assert memmap[0] in dropin
    assert memmap[0] in host.file("/boot/grub/grub.cfg").content_string


@pmem_only
def test_pmem_mounted_with_dax_from_fstab(host):
    mounts = [line.split() for line in host.file("/proc/mounts").content_string.splitlines()]
    entry = next(m for m in mounts if m[1] == "/mnt/vmmem")
    assert entry[0].startswith("/dev/pmem") and entry[2] == "ext4" and "dax=always" in entry[3].split(",")
    assert "/mnt/vmmem ext4 dax" in host.file("/etc/fstab").content_string
    assert "nd_pmem" in host.file("/etc/modules-load.d/guestmemfs-liveupdate-pmem.conf").content_string


@pmem_only
def test_this_boot_ran_the_early_mount_before_anything_waited_for_udev(host):
    # After the kexec: pmem's boot-time unit ran on this boot (the mount was not there yet) and
    # succeeded; the role enabled it but never started it.
    out = host.check_output("systemctl show -p ConditionResult -p Result -p ExecMainStatus -p UnitFileState "
                            "guestmemfs-pmem-mount.service")
    props = dict(line.split("=", 1) for line in out.splitlines())
    assert props == {"ConditionResult": "yes", "Result": "success", "ExecMainStatus": "0", "UnitFileState": "enabled"}
    assert host.check_output("systemctl show -P ActiveState mnt-vmmem.mount") == "active"


@files_only
def test_vm_memory_files(host):
    for name in ("vm1", "vm2"):
        f = host.file(ram(name))
        # Given to QEMU's user by the agent at each start (docs/confinement.md): the guestmemfs RFC
        # hands over size and blocks, not owner or mode (its files come back root's, 0000), so the
        # restore after the kexec gave it again.
        assert f.exists and f.size == 256 * 2**20 and f.mode == 0o600 and f.user == "guestmemfs-qemu"


def test_each_qemu_runs_unprivileged_sandboxed_in_its_hardened_unit(host):
    """After the live update: every restored QEMU is the unit's main process, as guestmemfs-qemu, under
    QEMU's seccomp filter, without new privileges or capabilities; its argv (recorded, restored) has
    the sandbox, and its QMP socket stays root's."""
    uid = host.user("guestmemfs-qemu").uid
    for name in ("vm1", "vm2"):
        unit = f"guestmemfs-vm@{name}.service"
        pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
        status = dict(line.split(":", 1) for line in host.file(f"/proc/{pid}/status").content_string.splitlines())
        assert [int(u) for u in status["Uid"].split()] == [uid] * 4, (name, status["Uid"])
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", name
        # Seccomp 2 holds for the unit's own filters too: QEMU's sandbox is in the running argv.
        assert b"\0-sandbox\0on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny\0" in \
            host.file(f"/proc/{pid}/cmdline").content, name
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, name
        rec = json.loads(host.file(f"/var/lib/guestmemfs-liveupdate/argv/{name}.json").content_string)
        assert rec["launch"]["user"] == "guestmemfs-qemu" and "-sandbox" in rec["argv"], rec
        assert host.file(f"/run/guestmemfs-liveupdate/{name}.qmp").user == "root"
        show = host.check_output(f"systemctl show -p ProtectSystem -p NoNewPrivileges -p DevicePolicy {unit}")
        assert "ProtectSystem=strict" in show and "NoNewPrivileges=yes" in show and "DevicePolicy=closed" in show
    assert host.file("/var/lib/guestmemfs-liveupdate").mode == 0o711


JOURNAL = "/var/lib/guestmemfs-liveupdate/journal.json"
# The default scenario's side effect keeps the kernel update's journal here before its QEMU update.
KERNEL_JOURNAL = "/var/lib/molecule-journal-kernel.json"


def journal(host):
    """The kernel update's journal."""
    kept = host.file(KERNEL_JOURNAL)
    return json.loads((kept if kept.exists else host.file(JOURNAL)).content_string)


def last_journal(host):
    """The journal of the host's last update (the QEMU update where the scenario ran one)."""
    return json.loads(host.file(JOURNAL).content_string)


def recorded_argv(host, name):
    """The argv the collection recorded when it started VM ``name`` (what every restore runs)."""
    return json.loads(host.file(f"/var/lib/guestmemfs-liveupdate/argv/{name}.json").content_string)["argv"]


def arg(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else ""


def guest_address(argv):
    """A real guest's address (gmfs.ip= on its cmdline), or None for the counting guest."""
    m = re.search(r"gmfs[.]ip=([0-9.]+)", arg(argv, "-append"))
    return m.group(1) if m else None


def real_guests(host):
    """{vm: address} of the real Linux guests on this host, from their recorded argv."""
    out = dict((vm, guest_address(recorded_argv(host, vm))) for vm in ("vm1", "vm2"))
    vms = dict((vm, a) for vm, a in out.items() if a)
    if not vms:
        pytest.skip("no real Linux guest on this host: counting guests only (GUESTMEMFS_FLEET_GUEST=%s; luo and "
                    "guestmemfs hosts run counting guests, fleet.py up says why)" % GUEST)
    return vms


def counting_guests(host):
    vms = [vm for vm in ("vm1", "vm2") if arg(recorded_argv(host, vm), "-kernel").endswith("counter-guest.mb")]
    if not vms:
        pytest.skip("no counting guest on this host")
    return vms


def test_the_kernel_update_proved_its_pair_in_the_hosts_journal(host):
    # Its one wave checked every VM in full (no earlier proof): the host keeps the pair proven, for the
    # next run's waves to sample (docs/liveupdate.md, Verification).
    j = journal(host)
    proofs = j.get("proofs") or {}
    running = host.check_output("uname -r")
    mine = dict((k, v) for k, v in proofs.items() if k.endswith(" -> " + running))
    assert len(mine) == 1, proofs
    (pair, rec), = mine.items()
    assert (rec["result"], rec["modes"], rec["vms"], rec["update_id"]) == (
        "proven", ["full"], len(j["vms"]), j["update_id"]), (pair, rec)


def test_every_vm_resumed_where_it_stopped(host):
    j = journal(host)
    assert set(j["vms"]) == {"vm1", "vm2"}
    moved = (qemu_updated(host) or {}).get("vms", {})
    for name, vm in j["vms"].items():
        assert vm["state"] == "restored", (name, vm)
        assert vm["verify"]["status"] == "ok"
        assert 0 < vm["blackout_s"] < 600
        assert vm["state_bytes"] < 4 * 2**20  # device state only, not the 256 MiB of RAM
        # The restore started the argv the VM was started with, recorded at its start.
        assert vm["argv_source"] == "recorded" and "-incoming" not in vm["argv"]
        if name in moved:
            # A QEMU update moved it since: the same argv on the new binary, recorded for the next
            # update (what runs now: test_the_qemu_update_moved_its_vms_onto_the_new_qemu).
            assert recorded_argv(host, name) == [moved[name]["qemu_to"]] + vm["argv"][1:]
            continue
        assert recorded_argv(host, name) == vm["argv"]
        assert host.service(f"guestmemfs-vm@{name}").is_running
        pid = host.check_output(f"systemctl show -P MainPID guestmemfs-vm@{name}")
        running = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()
        assert running == vm["argv"] + ["-incoming", "defer"]


def test_each_vm_runs_with_its_cpu_quota_set_at_run_time_not_by_its_unit_file(host):
    """A quota in the unit file would hold the restore inside the blackout (module_utils/cpu_quota.py);
    after every update and restart of this scenario, each guest runs with its own, enforced."""
    for name in ("vm1", "vm2"):
        conf = json.loads(host.check_output(f"cat /etc/guestmemfs-liveupdate/vms/{name}.json"))
        dropin = host.check_output(f"cat /etc/systemd/system/guestmemfs-vm@{name}.service.d/10-definition.conf")
        assert "CPUQuota" not in dropin, dropin
        cgroup = host.check_output(f"systemctl show --value --property=ControlGroup guestmemfs-vm@{name}")
        cpu_max = host.file(f"/sys/fs/cgroup{cgroup}/cpu.max")
        if conf.get("cpu_quota") and not host.file("/sys/fs/cgroup/system.slice/cpu.max").exists:
            continue  # luo's small kernel has no CFS bandwidth control: no quota is enforced there at all
        if conf.get("cpu_quota"):
            quota, period = cpu_max.content_string.split()
            assert int(quota) * 100.0 / int(period) == float(conf["cpu_quota"].rstrip("%")), (name, quota, period)
        elif cpu_max.exists:  # no cpu.max: the cpu controller is not on for it (luo's hosts): no limit either
            assert cpu_max.content_string.split()[0] == "max", (name, cpu_max.content_string)


# ---- the real guest, seen from outside its host (the probe) and from inside (its workload)

FLEET = os.environ.get("GUESTMEMFS_MOLECULE_FLEET", "molecule")
CACHE = os.environ.get("GUESTMEMFS_CACHE") or os.path.expanduser("~/.cache/guestmemfs-liveupdate")
PROBE_LOG = os.path.join(CACHE, "fleets", FLEET, "probe.jsonl")
# The probe lives beside the fleet it watches (tests/fleet).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests", "fleet"))
import guest_probe  # noqa: E402  pylint: disable=wrong-import-position


def probe_rows(host):
    name = host.backend.get_hostname()
    rows = guest_probe.analyse(guest_probe.load_records(PROBE_LOG))
    return dict((t.split("/", 1)[1], r) for t, r in rows.items() if t.startswith(name + "/"))


def probe_replies(host, vm):
    target = f"{host.backend.get_hostname()}/{vm}"
    return [r for r in guest_probe.load_records(PROBE_LOG) if r["target"] == target and r.get("ok") and "reply" in r]


def test_guest_did_not_notice_more_than_a_pause(host):
    guests = real_guests(host)
    rows = probe_rows(host)
    assert set(rows) == set(guests), rows
    j = journal(host)
    kexec_ts = j["phases"]["kexec"]["ts"]
    for vm, row in rows.items():
        # One TCP connection, opened before the update, never closed, still answering after it.
        assert row["connection_kept"] and len(row["local_ports"]) == 1 and row["conn_constant"], row
        replies = probe_replies(host, vm)
        assert replies[0]["ts"] < kexec_ts < replies[-1]["ts"], (vm, replies[0]["ts"], kexec_ts, replies[-1]["ts"])
        assert row["replies_after_gap"] >= 3, row
        # Same boot of the guest, its uptime went on (no reboot), same workload process, its counter
        # and disk sequence continued, its own memory pattern intact.
        assert row["boot_id_constant"] and row["pid_constant"], row
        uptimes = [r["reply"]["uptime_s"] for r in replies]
        assert all(b >= a for a, b in zip(uptimes, uptimes[1:])), uptimes
        assert row["counter_continued"] and row["seq_continued"] and row["pattern_ok_always"], row
        # The guest was silent for about its blackout, as the host's journal measured it.
        assert row["longest_gap_s"] >= j["vms"][vm]["blackout_s"] * 0.5, (row, j["vms"][vm]["blackout_s"])


def ask(host, vm, command):
    addr = guest_address(recorded_argv(host, vm))
    out = subprocess.run([sys.executable, guest_probe.__file__, "ask", "--fleet", FLEET,
                          f"{host.backend.get_hostname()}/{vm}={addr}", command],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)["reply"]


def data_disk(argv):
    """(path, format) of a guest's first -drive."""
    opts = dict(o.split("=", 1) for o in arg(argv, "-drive").split(",") if "=" in o)
    return opts["file"], opts["format"]


def test_guest_disk_sequence_has_no_gap_and_fsck_is_clean(host):
    for vm in real_guests(host):
        path, fmt = data_disk(recorded_argv(host, vm))
        disk = ask(host, vm, "check-disk")
        assert disk["lines"] > 0 and disk["first"] == 1 and disk["last"] == disk["lines"], disk
        assert disk["gaps"] == 0 and disk["bad"] == 0, disk
        # The guest stops writing and remounts read-only; then the host checks the filesystem on the
        # image (a raw copy of a qcow2 one; -U: QEMU still holds its lock).
        assert ask(host, vm, "sync-ro")["ok"] is True
        raw = path if fmt == "raw" else f"/var/tmp/molecule-{vm}.raw"
        if fmt != "raw":
            host.run_expect([0], f"qemu-img convert -U -f qcow2 -O raw {path} {raw}")
        fsck = host.run(f"e2fsck -fn {raw}")
        if fmt != "raw":
            host.run(f"rm -f {raw}")
        assert fsck.rc == 0, fsck.stdout + fsck.stderr


# Through a read-only mapping from offset 0: a guestmemfs file has no read(), only mmap, and the
# RFC's mmap ignores the offset (it maps the first block whatever is asked).
MAPPED = ("python3 -c 'import hashlib, mmap, os, struct, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
          "at, n = int(sys.argv[2]), int(sys.argv[3]); m = mmap.mmap(fd, at + n, mmap.MAP_SHARED, mmap.PROT_READ); "
          "print(struct.unpack_from(\"<I\", m, at)[0] if sys.argv[4] == \"u32\" else hashlib.sha256(m[at:]).hexdigest())' ")


def test_counting_guest_counts_on(host):
    # Its counter is a 32-bit word at guest-physical 2 MiB that TCG wraps every few minutes: it moves.
    for name in counting_guests(host):
        first = int(host.check_output(MAPPED + f"{ram(name)} {0x200000} 4096 u32"))
        assert int(host.check_output(MAPPED + f"{ram(name)} {0x200000} 4096 u32")) != first


def test_memory_pattern_intact(host):
    for name in ("vm1", "vm2"):
        want = host.file(f"/var/lib/molecule-pattern-{name}").content_string.strip()
        got = host.check_output(MAPPED + f"{ram(name)} {32 << 20} {4 << 20} sha256")
        assert len(want) == 64 and got == want


def test_state_files_consumed(host):
    for name in ("vm1", "vm2"):
        assert not host.file(f"/var/lib/guestmemfs-liveupdate/state/{name}.state").exists


def test_journal_records_every_phase_of_the_update(host):
    j = journal(host)
    assert j["phase"] == "restored"
    assert {"preflight", "saving", "saved", "kexec", "booted", "verified", "restored"} <= set(j["phases"])
    # Saved and kexeced on the old boot; booted, verified and restored on the new one.
    old, new = j["from_boot_id"], j["to_boot_id"]
    assert old != new
    assert j["phases"]["saved"]["boot_id"] == j["phases"]["kexec"]["boot_id"] == old
    assert j["phases"]["booted"]["boot_id"] == j["phases"]["restored"]["boot_id"] == new


TEXTFILE = "/var/lib/node_exporter/textfile_collector/guestmemfs_liveupdate.prom"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def textfile_series(text):
    """{(name, ((label, value), ...)): value} of a textfile, each family's HELP and TYPE checked
    before its samples (tests/unit/test_metrics_events.py parses it strictly)."""
    out, typed = {}, set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        name, labels, value = SAMPLE.match(line).groups()
        assert name in typed, line
        out[(name, tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels or ""))))] = float(value)
    return out


def test_the_metrics_textfile_shows_the_update_done(host):
    j = last_journal(host)
    f = host.file(TEXTFILE)
    assert f.exists and f.mode == 0o644, TEXTFILE
    got = textfile_series(f.content_string)
    phases = dict((dict(labels)["phase"], v) for (name, labels), v in got.items() if name == "guestmemfs_liveupdate_phase")
    assert phases["restored"] == 1 and sum(phases.values()) == 1, phases
    for vm in ("vm1", "vm2"):
        blackout = got[("guestmemfs_liveupdate_vm_blackout_seconds", (("update_id", j["update_id"]), ("vm", vm)))]
        assert blackout == j["vms"][vm]["blackout_s"] and 0 < blackout < 600
        assert got[("guestmemfs_liveupdate_vm_verification_ok", (("verdict", "ok"), ("vm", vm)))] == 1
        assert got[("guestmemfs_liveupdate_vm_state", (("state", "restored"), ("vm", vm)))] == 1
    assert got[("guestmemfs_liveupdate_kexecs_total", ())] >= 1
    assert got[("guestmemfs_liveupdate_updates_total", (("ending", "restored"),))] >= 1
    assert got[("guestmemfs_liveupdate_last_success_timestamp_seconds", ())] >= j["phases"]["restored"]["ts"] - 1
    assert got[("guestmemfs_liveupdate_updates_total", (("ending", "restored"),))] >= (2 if qemu_updated(host) else 1)
    info = [dict(labels) for (name, labels), _v in got.items() if name == "guestmemfs_liveupdate_update_info"]
    assert info == [{"update_id": j["update_id"], "kernel_release": host.check_output("uname -r"),
                     "target_release": (j.get("kexec_target") or {}).get("release") or ""}], info


def test_the_events_name_every_step_of_the_update(host):
    j = journal(host)
    lines = host.file("/var/lib/guestmemfs-liveupdate/events.jsonl").content_string.splitlines()
    evs = [json.loads(line) for line in lines]
    fields = {"time", "ts", "monotonic", "boot_id", "host", "update_id", "vm", "step", "outcome", "detail", "data"}
    assert all(set(e) == fields for e in evs), [e for e in evs if set(e) != fields][:1]
    mine = [e for e in evs if e["update_id"] == j["update_id"]]
    assert all(e["outcome"] == "ok" for e in mine), [e for e in mine if e["outcome"] != "ok"]
    assert [e["step"] for e in mine if e["vm"] is None] == ["record", "sync", "kexec-requested", "boot"], mine
    for vm in ("vm1", "vm2"):
        steps = [e for e in mine if e["vm"] == vm]
        assert [e["step"] for e in steps] == ["pause", "save", "verify", "restore", "resume"], steps
        assert [e["boot_id"] for e in steps] == [j["from_boot_id"]] * 2 + [j["to_boot_id"]] * 3
        assert steps[2]["data"]["verdict"] == "ok"
        assert steps[4]["data"]["blackout_s"] == j["vms"][vm]["blackout_s"]
    # The side effect's fault before the update (a byte of vm2 changed) left a failed verify of vm2.
    if BACKEND == "pmem":
        assert any(e["step"] == "verify" and e["vm"] == "vm2" and e["outcome"] == "failed"
                   and e["data"]["verdict"] == "content_changed" for e in evs), evs


# The controller's report directory: molecule runs ansible-playbook in the scenario's directory.
REPORT = os.environ.get("GUESTMEMFS_REPORT_DIR") or os.path.join(
    os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "."), "guestmemfs-report")


def test_the_updates_blackout_report_survives_the_rerun_in_its_own_run_directory(host):
    """update.yml runs liveupdate.yml twice: the update, then a re-run with nothing to do. The
    update's blackout rows stay in the update's run directory; latest is the re-run's."""
    j = journal(host)
    name = host.backend.get_hostname()
    want = dict((vm, j["vms"][vm]["blackout_s"]) for vm in ("vm1", "vm2"))
    found = {}
    for run in sorted(os.listdir(REPORT)):
        path = os.path.join(REPORT, run, "blackout.json")
        if run != "latest" and not os.path.islink(os.path.join(REPORT, run)) and os.path.isfile(path):
            with open(path) as fh:
                found[run] = dict((r["vm"], r["blackout_s"]) for r in json.load(fh) if r["host"] == name)
    update_runs = [run for run, rows in found.items() if rows == want]
    assert update_runs, "no run directory of %s holds %s's blackout rows %s: %s" % (REPORT, name, want, found)
    latest = os.readlink(os.path.join(REPORT, "latest"))
    assert latest in found and latest > update_runs[-1] and found[latest] == {}, (latest, update_runs, found)
    assert os.readlink(os.path.join(REPORT, "blackout.json")) == os.path.join(latest, "blackout.json")


# ---- the QEMU update (docs/qemu-update.md): the default scenario's side effect runs it after the kernel's

def qemu_updated(host):
    """The QEMU update's journal, or None where the scenario ran none."""
    if not host.file(KERNEL_JOURNAL).exists:
        return None
    j = last_journal(host)
    assert "qemu-update" in j["phases"], j["phases"]
    return j


def qemu_version(host, binary):
    m = re.search(r"QEMU emulator version (\d+)\.(\d+)", host.check_output(f"{binary} --version"))
    return int(m.group(1)), int(m.group(2))


# With GUESTMEMFS_FLEET_GUEST=linux-novirtio the real guest has no virtio device: both VMs move.
NOVIRTIO = os.environ.get("GUESTMEMFS_FLEET_GUEST") == "linux-novirtio"
QEMU_MOVED = ["vm1", "vm2"] if NOVIRTIO else ["vm2"]


def test_the_qemu_update_moved_its_vms_onto_the_new_qemu(host):
    j = qemu_updated(host)
    if not j:
        pytest.skip("no QEMU update in this scenario (GUESTMEMFS_QEMU_UPDATE=1 runs it)")
    assert j["phase"] == "restored" and j["from_boot_id"] == journal(host)["to_boot_id"]  # no kexec: one boot
    assert host.file("/proc/sys/kernel/random/boot_id").content_string.strip() == j["from_boot_id"]
    new = qemu_version(host, "/usr/bin/qemu-system-x86_64")
    assert new >= (11, 0), new
    assert sorted(j["vms"]) == QEMU_MOVED, sorted(j["vms"])
    for name in QEMU_MOVED:
        vm = j["vms"][name]
        assert vm["state"] == "restored" and vm["verify"]["status"] == "ok", vm
        assert 0 < vm["blackout_s"] < 600 and vm["state_bytes"] < 4 * 2**20
        assert vm["qemu_to"] == "/usr/bin/qemu-system-x86_64" and not vm.get("rolled_back"), vm
        # The QEMU it ran before: trixie's, kept for a rollback with its modules and firmware.
        assert qemu_version(host, vm["qemu_kept"])[0] == 10, vm["qemu_kept"]
        # Its unit's QEMU now is the installed file, not the one the package replaced (deleted).
        pid = host.check_output(f"systemctl show -P MainPID guestmemfs-vm@{name}")
        assert host.check_output(f"readlink /proc/{pid}/exe") == "/usr/bin/qemu-system-x86_64"
        running = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()
        assert running == vm["argv"] + ["-incoming", "defer"] and "-sandbox" in running


def test_the_qemu_update_refused_vm1_before_its_pause(host):
    """Debian's 10.0.13 saves every virtio ring at 1024 entries, 11.1.3 refuses them (docs/qemu-update.md):
    the update of every VM is refused before anything pauses, naming vm1's devices; vm1 runs on."""
    if not qemu_updated(host):
        pytest.skip("no QEMU update in this scenario (GUESTMEMFS_QEMU_UPDATE=1 runs it)")
    if NOVIRTIO:
        pytest.skip("vm1 has no virtio device (GUESTMEMFS_FLEET_GUEST=linux-novirtio): it moved")
    msg = host.file("/var/lib/molecule-qemu-refusal.txt").content_string
    assert msg.startswith("vm1: the new QEMU would refuse its device state: disk0-dev (virtio-blk): "), msg
    assert "net0-dev (virtio-net)" in msg and "vser0 (virtio-serial)" in msg and "Nothing was paused" in msg, msg
    # vm1 runs the QEMU it ran before the package replaced it, since its kernel update's resume.
    pid = host.check_output("systemctl show -P MainPID guestmemfs-vm@vm1")
    assert host.check_output(f"readlink /proc/{pid}/exe") == "/usr/bin/qemu-system-x86_64 (deleted)"
    assert host.run("systemctl is-active guestmemfs-vm@vm1").stdout.strip() == "active"


def test_the_real_guest_was_not_paused_by_the_refused_qemu_update(host):
    if not qemu_updated(host):
        pytest.skip("no QEMU update in this scenario (GUESTMEMFS_QEMU_UPDATE=1 runs it)")
    if NOVIRTIO:
        pytest.skip("vm1 has no virtio device (GUESTMEMFS_FLEET_GUEST=linux-novirtio): it moved")
    kernel = journal(host)
    for vm in real_guests(host):
        # Its last pause is the kernel update's: the same TCP connection answered on after it.
        replies = probe_replies(host, vm)
        after = [r for r in replies if r["ts"] > kernel["vms"][vm]["resume_ts"]]
        assert len(after) >= 3 and after[-1]["reply"]["boot_id"] == replies[0]["reply"]["boot_id"], vm
        gaps = [b["ts"] - a["ts"] for a, b in zip(after, after[1:])]
        assert max(gaps) < 60, (vm, max(gaps))


def test_the_real_guest_kept_its_tcp_connection_through_the_qemu_update(host):
    """The real guest without virtio devices moved onto the new QEMU: the probe's one TCP connection,
    opened before the kernel update, answered before the QEMU update's pause and after its resume,
    from the same boot and process, with its counter, disk sequence and memory pattern going on."""
    j = qemu_updated(host)
    if not j:
        pytest.skip("no QEMU update in this scenario (GUESTMEMFS_QEMU_UPDATE=1 runs it)")
    if not NOVIRTIO:
        pytest.skip("the real guest has virtio devices: its QEMU update is refused (GUESTMEMFS_FLEET_GUEST=linux-novirtio moves it)")
    rows = probe_rows(host)
    for vm in real_guests(host):
        row, rec = rows[vm], j["vms"][vm]
        assert row["connection_kept"] and len(row["local_ports"]) == 1 and row["conn_constant"], row
        assert row["boot_id_constant"] and row["pid_constant"], row
        assert row["counter_continued"] and row["seq_continued"] and row["pattern_ok_always"], row
        replies = probe_replies(host, vm)
        before = [r for r in replies if r["ts"] < rec["stop_ts"]]
        after = [r for r in replies if r["ts"] > rec["resume_ts"]]
        assert before and len(after) >= 3, (vm, len(before), len(after))
        # Silent for about the QEMU update's blackout, as the host's journal measured it.
        gap = min(r["ts"] for r in after) - max(r["ts"] for r in before)
        assert gap >= rec["blackout_s"] * 0.5, (vm, gap, rec["blackout_s"])


def test_the_qemu_updates_blackout_report(host):
    j = qemu_updated(host)
    if not j:
        pytest.skip("no QEMU update in this scenario (GUESTMEMFS_QEMU_UPDATE=1 runs it)")
    name = host.backend.get_hostname()
    want = dict((vm, j["vms"][vm]["blackout_s"]) for vm in QEMU_MOVED)
    rows = {}
    for run in sorted(os.listdir(REPORT)):
        path = os.path.join(REPORT, run, "blackout.json")
        if run != "latest" and not os.path.islink(os.path.join(REPORT, run)) and os.path.isfile(path):
            with open(path) as fh:
                mine = [r for r in json.load(fh) if r["host"] == name]
            if dict((r["vm"], r["blackout_s"]) for r in mine) == want:
                rows[run] = mine
    assert rows, "no run directory of %s holds the QEMU update's blackout rows %s" % (REPORT, want)
    for r in list(rows.values())[-1]:
        assert r["to_kernel"] == "/usr/bin/qemu-system-x86_64" and r["verify"] == "ok" and not r["rolled_back"], r


@luo_only
def test_luo_flags_on_running_and_configured_cmdline(host):
    running = host.file("/proc/cmdline").content_string.split()
    assert "kho=on" in running and "liveupdate=on" in running
    dropin = host.file("/etc/default/grub.d/99-guestmemfs-liveupdate.cfg").content_string
    assert "kho=on" in dropin and "liveupdate=on" in dropin


@luo_only
def test_luo_memfds_retrieved_held_and_session_finished(host):
    status = json.loads(host.check_output("python3 /usr/lib/guestmemfs-liveupdate/agent luo status"))
    assert set(status["vms"]) == {"vm1", "vm2"}
    for name, vm in status["vms"].items():
        assert vm["size"] == 256 * 2**20, (name, vm)
        # QEMU maps the holder's memfd: the link resolves into the holder's fd table.
        target = host.check_output(f"readlink {ram(name)}")
        assert target == f"/proc/{status['pid']}/fd/{vm['fd']}"
    j = journal(host)
    assert sorted(j["luo"]["retrieved"]) == ["vm1", "vm2"] and not j["luo"]["retrieve_errors"]
    assert j["luo"]["retrieved_boot_id"] == j["to_boot_id"]
    assert j["luo"]["finished_ts"] >= j["phases"]["restored"]["ts"] - 60
    assert status["finished"] is True and not status["retrieve_errors"]


@guestmemfs_only
def test_guestmemfs_region_only_on_the_cold_boot_cmdline(host):
    # The handover carries the region: guestmemfs= on the kexec's cmdline would carve a second one.
    running = host.file("/proc/cmdline").content_string.split()
    assert not [a for a in running if a.startswith(("guestmemfs=", "kho_scratch="))], running
    dropin = host.file("/etc/default/grub.d/99-guestmemfs-liveupdate.cfg").content_string
    assert "guestmemfs=" in dropin and "kho_scratch=" in dropin


@guestmemfs_only
def test_guestmemfs_mount_restored_from_the_handover(host):
    mounts = [line.split() for line in host.file("/proc/mounts").content_string.splitlines()]
    entry = next(m for m in mounts if m[1] == "/mnt/vmmem")
    assert entry[2] == "guestmemfs"
    log = host.check_output("dmesg")
    assert "Restored super block from KHO" in log and "Did not restore from KHO" not in log
    # Nothing is active on the new kernel until the next update activates it.
    assert host.file("/sys/kernel/kho/active").content_string.strip() == "0"
