"""The blackout benchmark's plan of a round and its ratios (the figures come from the fleet)."""

import json
import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
sys.path.insert(0, os.path.join(HERE, "..", "fleet"))
bench = pytest.importorskip("bench_blackout")


def test_a_round_runs_floor_and_collection_per_vm_count_and_the_wave_at_the_smallest():
    assert bench.plan([1, 8], 2, 1) == [
        ("floor 1vm", "floor", 1, 1), ("collection 1host f1 1vm", "collection", 1, 1),
        ("floor 2hosts 1vm", "floor", 1, 2), ("collection 2hosts f1 1vm", "collection", 1, 2),
        ("floor 8vm", "floor", 8, 1), ("collection 1host f1 8vm", "collection", 8, 1)]
    assert [c[0] for c in bench.plan([1, 8], 2, 1, [1])] == [
        "floor 1vm", "collection 1host f1 1vm", "floor 2hosts 1vm", "collection 2hosts f1 1vm",
        "collection 1host f1 8vm"]
    # no floor at the wave's count: no floor wave either
    assert [c[0] for c in bench.plan([1, 8], 2, 1, [8])] == [
        "collection 1host f1 1vm", "collection 2hosts f1 1vm", "floor 8vm", "collection 1host f1 8vm"]


def run(case, kind, vms, hosts, blackouts):
    label = bench.case_label(kind, vms, hosts, 1)
    assert label == case
    return {"case": label, "vms": vms, "hosts": hosts, "forks": 1, "load": 1.0,
            "blackout": dict(("host%d" % (i + 1), b) for i, b in enumerate(blackouts))}


def test_ratios_compare_like_with_like_and_carry_their_targets():
    runs = [run("floor 1vm", "floor", 1, 1, [10.0]), run("floor 1vm", "floor", 1, 1, [12.0]),
            run("collection 1host f1 1vm", "collection", 1, 1, [11.0]),
            run("collection 1host f1 1vm", "collection", 1, 1, [13.0]),
            run("collection 2hosts f1 1vm", "collection", 1, 2, [11.5, 12.5]),
            run("floor 8vm", "floor", 8, 1, [20.0]),
            run("collection 1host f1 8vm", "collection", 8, 1, [22.0])]
    s = bench.summary(runs)
    assert s["cases"]["collection 2hosts f1 1vm"] == {"n": 2, "min": 11.5, "median": 12.0}
    ratios = dict((r["ratio"] + " " + r["case"], r) for r in s["ratios"])
    assert ratios["collection / floor collection 1host f1 1vm"] == {
        "ratio": "collection / floor", "case": "collection 1host f1 1vm", "against": "floor 1vm",
        "target": 1.10, "min": 1.1, "median": 1.091}
    assert ratios["collection / floor collection 1host f1 8vm"]["against"] == "floor 8vm"
    assert ratios["8 VMs / 1 VM collection 1host f1 8vm"]["min"] == 2.0
    assert ratios["8 VMs / 1 VM collection 1host f1 8vm"]["target"] == 1.2
    wave = ratios["2-host wave / 1 host collection 2hosts f1 1vm"]
    assert (wave["against"], wave["min"], wave["median"], wave["target"]) == ("collection 1host f1 1vm", 1.045, 1.0, 1.05)
    # the wave is not compared with the floor (the floor runs on one host)
    assert not [r for r in s["ratios"] if r["case"].startswith("collection 2hosts") and r["against"].startswith("floor")]


def test_a_wave_is_compared_with_the_floors_own_wave_which_is_compared_with_one_host_without_a_target(tmp_path):
    runs = [run("floor 1vm", "floor", 1, 1, [10.0]),
            run("floor 2hosts 1vm", "floor", 1, 2, [14.0, 16.0]),
            run("collection 1host f1 1vm", "collection", 1, 1, [11.0]),
            run("collection 2hosts f1 1vm", "collection", 1, 2, [15.4, 17.0])]
    s = bench.summary(runs)
    ratios = dict((r["ratio"] + " " + r["case"], r) for r in s["ratios"])
    coll = ratios["collection / floor collection 2hosts f1 1vm"]
    assert (coll["against"], coll["min"], coll["median"], coll["target"]) == ("floor 2hosts 1vm", 1.1, 1.08, 1.10)
    machine = ratios["2-host wave / 1 host floor 2hosts 1vm"]
    assert (machine["against"], machine["min"], machine["median"], machine["target"]) == ("floor 1vm", 1.4, 1.5, None)
    text = bench.write(str(tmp_path), type("A", (), {})(), runs)
    assert [line.split()[-1] for line in text.splitlines() if line.startswith("2-host wave / 1 host") and "floor 2hosts" in line] == ["-"]


def test_the_floors_own_8_vms_against_1_vm_is_shown_beside_the_collections_without_a_target(tmp_path):
    # What 8 QEMUs starting on one host cost with no agent at all: the bound for the 8/1 target.
    runs = [run("floor 1vm", "floor", 1, 1, [10.0]), run("floor 8vm", "floor", 8, 1, [18.0]),
            run("collection 1host f1 1vm", "collection", 1, 1, [11.0]),
            run("collection 1host f1 8vm", "collection", 8, 1, [22.0])]
    ratios = dict((r["ratio"] + " " + r["case"], r) for r in bench.summary(runs)["ratios"])
    machine = ratios["8 VMs / 1 VM floor 8vm"]
    assert (machine["against"], machine["min"], machine["median"], machine["target"]) == ("floor 1vm", 1.8, 1.8, None)
    assert ratios["8 VMs / 1 VM collection 1host f1 8vm"]["target"] == 1.2


def test_the_floors_wave_starts_every_hosts_save_together_and_none_once_a_host_failed_before():
    hosts = [{"name": "host1"}, {"name": "host2"}]
    saves = []

    def run(state, h, vms, before_save):
        before_save()
        saves.append((h["name"], time.time()))
        return {h["name"]: 10.0}
    assert bench.floor_wave({}, hosts, ["vm1"], run=run) == {"host1": 10.0, "host2": 10.0}
    assert sorted(n for n, _t in saves) == ["host1", "host2"]

    saves[:] = []

    def failing(state, h, vms, before_save):
        if h["name"] == "host1":
            raise RuntimeError("kexec -l failed")
        time.sleep(0.2)  # host1 fails first; host2 would otherwise save alone
        before_save()
        saves.append(h["name"])
        return {h["name"]: 10.0}
    with pytest.raises(RuntimeError) as err:
        bench.floor_wave({}, hosts, ["vm1"], run=failing, timeout=30)
    assert saves == []
    assert "host1: kexec -l failed" in str(err.value) and "host2" in str(err.value)


def test_a_run_that_proved_its_kernel_pair_is_listed_apart_and_left_out_of_the_ratios():
    canary = dict(run("collection 1host f1 1vm", "collection", 1, 1, [90.0]),
                  case="collection 1host f1 1vm full-check", memory_check={"host1": "full"})
    runs = [run("floor 1vm", "floor", 1, 1, [10.0]), canary, run("collection 1host f1 1vm", "collection", 1, 1, [11.0])]
    s = bench.summary(runs)
    assert s["cases"]["collection 1host f1 1vm full-check"] == {"n": 1, "min": 90.0, "median": 90.0}
    assert [(r["case"], r["min"]) for r in s["ratios"]] == [("collection 1host f1 1vm", 1.1)]


def test_a_failed_run_leaves_the_others_figures(tmp_path):
    runs = [run("floor 1vm", "floor", 1, 1, [10.0]),
            {"case": "collection 1host f1 1vm", "round": 1, "vms": 1, "hosts": 1, "forks": 1, "load": 2.0,
             "error": "host1: not every VM restored"}]
    text = bench.write(str(tmp_path), type("A", (), {})(), runs)
    assert "floor 1vm" in text and "FAILED: collection 1host f1 1vm round 1: host1: not every VM restored" in text
    assert (tmp_path / "bench-blackout.json").exists()


def test_a_long_step_says_every_interval_that_it_still_runs(tmp_path, capsys):
    log = tmp_path / "step.log"
    log.write_text("TASK [first]\nTASK [Wait for the host]\n")
    proc = bench.subprocess.Popen(["sleep", "1.5"])
    bench.finish(proc, "a step", log_path=str(log), every=0.1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2 and proc.returncode == 0, lines
    assert all(" a step: " in ln and ln.endswith("; log: TASK [Wait for the host]") for ln in lines), lines


def test_a_step_past_its_timeout_is_killed_and_raises():
    proc = bench.subprocess.Popen(["sleep", "30"])
    with pytest.raises(bench.subprocess.TimeoutExpired):
        bench.finish(proc, "a step", timeout=0.2, every=0.1)
    assert proc.returncode is not None and proc.returncode < 0


def test_a_failed_playbook_raises_with_its_log_kept(tmp_path):
    log = tmp_path / "pb.log"
    with pytest.raises(bench.subprocess.CalledProcessError):
        bench.playbook(["sh", "-c", "echo no such play; exit 4"], str(log), "a play")
    assert log.read_text() == "no such play\n"


def test_a_kernel_panic_during_a_run_resets_that_host_once_as_a_bmc_would(tmp_path):
    hosts = [{"name": "host1", "console": str(tmp_path / "host1.console.log")},
             {"name": "host2", "console": str(tmp_path / "host2.console.log")}]
    # host1's console holds an earlier boot's panic (the fleet keeps the log): not this run's
    (tmp_path / "host1.console.log").write_text("[ 21.1] Kernel panic - not syncing: Fatal exception in interrupt\n")
    (tmp_path / "host2.console.log").write_text("[ 0.0] Linux version 7.3.4\n")
    reset = []
    with bench.PanicReset(hosts, reset=lambda h: reset.append(h["name"]), every=0.02) as watch:
        with open(hosts[1]["console"], "a") as fh:
            fh.write("[ 21.4] int3: 0000 [#1] SMP NOPTI\n[ 21.5] Kernel panic - not syncing: Fatal exception\n")
        for _attempt in range(200):
            if reset:
                break
            bench.time.sleep(0.02)
        bench.time.sleep(0.1)
    assert reset == ["host2"]
    assert watch.resets == {"host2": "Kernel panic - not syncing: Fatal exception"}


def case(label, kind="collection", vms=1, hosts=1):
    return (label, kind, vms, hosts)


def test_a_failed_run_is_recorded_and_the_rounds_go_on_once_its_hosts_recovered():
    cases = [case("floor 1vm", "floor"), case("collection 1host f1 1vm")]
    seen, rows = [], []

    def run_case(i, c):
        seen.append((i, c[0]))
        if len(seen) == 2:
            return {"case": c[0], "round": i + 1, "error": "host1 came back by a cold boot"}
        return {"case": c[0], "round": i + 1, "blackout": {"host1": 10.0}}
    runs = bench.run_rounds(cases, 2, run_case, recovered=lambda c: None, on_row=lambda r: rows.append(len(r)))
    assert seen == [(0, "floor 1vm"), (0, "collection 1host f1 1vm"), (1, "collection 1host f1 1vm"), (1, "floor 1vm")]
    assert [r.get("error") for r in runs] == [None, "host1 came back by a cold boot", None, None]
    assert rows == [1, 2, 3, 4]  # the file is written after every run


def test_the_rounds_stop_when_a_failed_runs_host_did_not_recover_saying_why():
    cases = [case("floor 1vm", "floor"), case("collection 1host f1 1vm")]
    rows = []

    def run_case(i, c):
        return {"case": c[0], "round": i + 1, "error": "host1 did not come back within 900s"}
    with pytest.raises(bench.RoundsStopped) as exc:
        bench.run_rounds(cases, 3, run_case, recovered=lambda c: "host1: no SSH for 900 s",
                         on_row=lambda r: rows.append(list(r)))
    assert "host1: no SSH for 900 s" in str(exc.value)
    assert len(rows) == 1 and rows[0][0]["stopped"] == "host1: no SSH for 900 s"


BOOT = {
    "unit": "guestmemfs-vm@vm1.service",
    "time": "Startup finished in 11.612s (kernel) + 2.100s (initrd) + 1min 2.5s (userspace) = 1min 16.212s\n"
            "multi-user.target reached after 1min 2.4s in userspace.",
    "chain": "The time when unit became active or started is printed after the \"@\" character.\n"
             "The time the unit took to start is printed after the \"+\" character.\n\n"
             "guestmemfs-vm@vm1.service @24.100s +11.100s\n"
             "\u2514\u2500mnt-vmmem.mount @23.900s +180ms\n"
             "  \u2514\u2500dev-disk-by\\x2duuid-1234.device @20.6s",
    "device": "[    0.000000] kernel: user-defined physical RAM map:\n"
              "[   25.417001] kernel: pmem0: detected capacity change from 0 to 1342177280\n"
              "systemd-modules-load.service active at 25.600\n"
              "systemd-udev-trigger.service active at 22.100\n"
              "dev-pmem0.device active at 33.412\n"
              "mnt-vmmem.mount active at 37.600\n"
              "udev initialised pmem0 at 33.301\n"}


def test_a_runs_boot_is_read_as_seconds_since_its_kernel_started():
    assert bench.boot_figures(BOOT) == {"kernel": 11.612, "initrd": 2.1, "modules": 25.6, "udev": 33.301,
                                        "device": 33.412, "mount": 37.6, "bridge": None, "unit_start": 37.812,
                                        "unit_took": 11.1}
    # what systemd could not say is left out, never guessed
    unknown = dict(BOOT, time="Bootup is not yet finished.", device="dev-pmem0.device active at 0.000\n")
    assert bench.boot_figures(unknown) == dict.fromkeys(
        ("kernel", "initrd", "modules", "udev", "device", "mount", "bridge", "unit_start", "unit_took"))
    assert bench.boot_figures({"unit": "x", "error": "host1: ssh failed"})["kernel"] is None


def test_the_restoring_units_own_start_and_end_come_from_systemd_when_kept():
    boot = dict(BOOT, unit_times="InactiveExitTimestampMonotonic=45912345\nActiveEnterTimestampMonotonic=59812345\n")
    f = bench.boot_figures(boot)
    assert (f["unit_start"], f["unit_took"]) == (45.912, 13.9)
    # a run from before they were kept: the critical chain's first line, when it has them
    assert bench.boot_figures(BOOT)["unit_start"] == 37.812


def test_the_table_shows_each_runs_boot_beside_its_blackout(tmp_path):
    row = dict(run("collection 1host f1 1vm", "collection", 1, 1, [89.0]), round=1, boot=BOOT,
               kernel="6.12.117+deb13-amd64 -> 7.3.4+deb13-amd64")
    text = bench.write(str(tmp_path), type("A", (), {"host": "host1"})(), [row])
    line = [ln for ln in text.splitlines() if ln.startswith("collection 1host f1 1vm") and "->" in ln]
    assert line and line[0].split()[5:] == ["6.12.117", "->", "7.3.4", "89.0", "11.6", "2.1", "25.6", "33.3",
                                            "33.4", "37.6", "-", "37.8", "11.1"]


def test_the_first_bridge_is_read_with_the_boot_a_bridged_vm_waits_for_it():
    boot = dict(BOOT, device=BOOT["device"] + "bridge br0 at 61.250\nbridge br1 at 70.000\n")
    assert bench.boot_figures(boot)["bridge"] == 61.25


def test_each_runs_vms_are_listed_with_their_own_blackout_the_last_to_resume_first(tmp_path):
    # Which VM made the host's blackout (seen: the one bridged VM resumed 27 s after seven others).
    stops = {"vm1": 100.0, "vm2": 100.5, "vm3": 101.0}
    resumes = {"vm1": 213.6, "vm2": 174.0, "vm3": 181.7}
    assert bench.vm_blackouts(stops, resumes) == {"vm1": 113.6, "vm2": 73.5, "vm3": 80.7}
    assert bench.host_blackout(list(stops.values()), list(resumes.values())) == 113.6
    row = dict(run("collection 1host f1 8vm", "collection", 8, 1, [113.6]), round=2,
               per_vm={"host1": bench.vm_blackouts(stops, resumes)})
    text = bench.write(str(tmp_path), type("A", (), {"host": "host1"})(), [row])
    assert "collection 1host f1 8vm              2 host1  vm1 113.6  vm3 80.7  vm2 73.5" in text
    assert json.load(open(str(tmp_path / "bench-blackout.json")))["runs"][0]["per_vm"]["host1"]["vm1"] == 113.6


def test_each_collection_runs_vms_say_where_their_units_start_went(tmp_path):
    # The journal's phases per VM (hostupdate._phases): the slowest VM's row says whether its agent
    # started late, waited for its bridge, or its QEMU was slow to come up.
    phases = {"host1": {
        "vm1": {"agent_started_at_s": 41.2, "imports_s": 0.4, "verify_s": 2.1, "nic_wait_s": 30.5,
                "qemu_up_s": 12.3, "load_s": 0.8, "resume_s": 0.06},
        "vm2": {"agent_started_at_s": 40.9, "imports_s": 0.5, "verify_s": 3.0, "nic_wait_s": 0.0,
                "qemu_up_s": 9.5, "load_s": 0.3, "resume_s": 0.04},
        "vm3": None}}  # restored by hand (agent vm-restore): no phases
    row = dict(run("collection 1host f1 8vm", "collection", 8, 1, [113.6]), round=2,
               per_vm={"host1": {"vm1": 113.6, "vm2": 73.5, "vm3": 80.7}}, phases=phases)
    text = bench.write(str(tmp_path), type("A", (), {"host": "host1"})(), [row])
    lines = text[text.index("each VM's unit start"):].splitlines()
    assert lines[1].split() == ["case", "round", "host", "vm", "blackout", "agent@", "imports", "verify", "nics",
                                "qemu_up", "load", "resume"]
    assert lines[2].split() == ["collection", "1host", "f1", "8vm", "2", "host1", "vm1", "113.6", "41.2", "0.4",
                                "2.1", "30.5", "12.3", "0.8", "0.1"]
    assert lines[3].split()[-9:] == ["vm3", "80.7", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[4].split()[-9:] == ["vm2", "73.5", "40.9", "0.5", "3.0", "0.0", "9.5", "0.3", "0.0"]
    assert json.load(open(str(tmp_path / "bench-blackout.json")))["runs"][0]["phases"] == phases


def test_the_floors_restore_waits_for_the_bridges_its_vms_argv_names():
    code = bench.FLOOR_RESTORE
    ns = {}
    exec(code[code.index("def bridges"):code.index("def restore")], ns)  # pylint: disable=exec-used
    argv = ["qemu-system-x86_64", "-netdev", "bridge,id=net0,br=br0", "-device", "virtio-net-pci,netdev=net0",
            "-netdev", "user,id=net1", "-netdev", "bridge,id=net2,br=br-storage"]
    assert ns["bridges"](argv) == ["br0", "br-storage"]
    assert "/sys/class/net/" in code[code.index("def restore"):]
