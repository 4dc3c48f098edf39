"""The carve-out planner: every policy mode, every refusal, the reports."""

import csv
import io
import json

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import sizing
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.facts import gather
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import GiB, MiB, parse_size, format_size

from conftest import FIXTURES

# The recorded 4 GiB q35 fleet host: RAM at 0-640K, 1M-2G and 4G-6G.
FLEET = gather(FIXTURES + "/trixie-fleet-host")["memory"]


def host(policy, name="h1", memory=None, ranges=None):
    return {"name": name, "memory_bytes": FLEET["firmware_ram_bytes"] if memory is None else memory,
            "firmware_ram_ranges": FLEET["firmware_ram_ranges"] if ranges is None else ranges,
            "policy": policy}


def test_recorded_firmware_ram():
    assert FLEET["firmware_ram_ranges"][-1] == [4 * GiB, 6 * GiB - 1]
    assert 4 * GiB - 256 * MiB < FLEET["firmware_ram_bytes"] <= 4 * GiB


def test_absolute_pmem_goes_to_top_of_high_ram():
    r = sizing.plan_host(host({"mode": "absolute", "size": "1G", "reserve": "1G"}))
    assert r["ok"], r["reason"]
    assert r["size_bytes"] == GiB and r["cmdline_args"] == ["memmap=1G!5G"]
    assert r["overhead_bytes"] == 16 * MiB


def test_fraction_rounds_down_to_alignment():
    r = sizing.plan_host(host({"mode": "fraction", "fraction": 0.3, "align": "1G", "reserve": "1G"}))
    assert r["ok"], r["reason"]
    assert r["size_bytes"] == GiB  # 0.3 x ~4 GiB = ~1.2 GiB, down to 1 GiB


def test_vms_sum_plus_headroom_rounds_up():
    vms = [{"name": "vm1", "memory": "256M"}, {"name": "vm2", "memory": "300M"}]
    r = sizing.plan_host(host({"backend": "guestmemfs", "mode": "vms", "vms": vms, "headroom": "10%"}))
    assert r["ok"], r["reason"]
    assert r["vms_bytes"] == 256 * MiB + 300 * MiB
    assert r["size_bytes"] == 612 * MiB  # 556 MiB + 10 % = 611.6 MiB, up to 2 MiB
    assert r["cmdline_args"] == ["guestmemfs=612M", "kho_scratch=256M"]
    assert r["scratch_bytes"] == 256 * MiB and r["scratch_source"] == "default"


def test_guestmemfs_rounds_each_vm_to_2m_blocks():
    r = sizing.plan_host(host({"backend": "guestmemfs", "mode": "vms", "vms": [{"memory": 1}] * 3}))
    assert r["vms_bytes"] == 6 * MiB


def test_pmem_aligns_to_sections():
    r = sizing.plan_host(host({"mode": "vms", "vms": [{"name": "a", "memory": "200M"}], "reserve": "1G"}))
    assert r["ok"] and r["size_bytes"] == 256 * MiB


@pytest.mark.parametrize("policy,reason", [
    ({"mode": "absolute", "size": "3G"}, "below the reserve"),
    ({"mode": "absolute", "size": "1G", "reserve": "4G"}, "below the reserve"),
    ({"mode": "fraction", "fraction": 1.5}, "not between 0 and 1"),
    ({"mode": "fraction"}, "needs 'fraction'"),
    ({"mode": "absolute"}, "needs 'size'"),
    ({"mode": "absolute", "size": "ten"}, "not a size"),
    ({"mode": "vms", "vms": "vm1"}, "needs a list 'vms'"),
    ({"mode": "vms", "vms": [{"name": "x"}]}, "needs 'memory'"),
    ({"mode": "guess"}, "use one of fraction, absolute, vms"),
    ({"mode": "absolute", "size": "1G", "align": "4K"}, "use 2M (PMD) or 1G (PUD)"),
    ({"mode": "absolute", "size": "1G", "backend": "nvram"}, "unknown memory backend 'nvram'"),
    ({"mode": "absolute", "size": "1G", "sise": 1}, "unknown policy keys sise"),
    ({"mode": "absolute", "size": "2560M", "reserve": "0"}, "no System RAM range above 4 GiB holds 2.5 GiB"),
    ({"backend": "guestmemfs", "mode": "vms", "vms": [{"name": "big", "memory": "2G"}]},
     "VM big needs 2.0 GiB, above the guestmemfs backend's 1.0 GiB per file"),
    ({"mode": "vms", "vms": [{"memory": 1}], "headroom": "x%"}, "not a percentage"),
])
def test_refusals_name_the_reason(policy, reason):
    r = sizing.plan_host(host(policy))
    assert r["ok"] is False
    assert reason in r["reason"]
    assert r["cmdline_args"] == []


@pytest.mark.parametrize("backend", ["pmem", "guestmemfs", "luo"])
def test_a_host_without_vms_is_planned_with_nothing_to_carve(backend):
    r = sizing.plan_host(host({"backend": backend, "mode": "vms", "vms": [], "headroom": "10%"}))
    assert r["ok"] is True and r["reason"] is None
    assert r["size_bytes"] == 0 and r["size"] == "0" and r["cmdline_args"] == [] and r["vms_bytes"] == 0
    assert r["left_bytes"] == r["memory_bytes"] and r["overhead_bytes"] == 0
    rows = sizing.plan_fleet([host({"backend": backend, "mode": "vms", "vms": []}, name="empty"),
                              host({"mode": "absolute", "size": "1G", "reserve": "1G"}, name="full")])
    assert [r["ok"] for r in rows] == [True, True]
    assert "empty" in sizing.render_table(rows) and sizing.summary(rows)["refused"] == 0


@pytest.mark.parametrize("own,policy,reason", [
    ("luo", {"mode": "absolute", "size": "1G"},
     "guestmemfs_backend is luo but guestmemfs_sizing plans the pmem backend (its default): set backend: luo"),
    ("pmem", {"backend": "guestmemfs", "mode": "absolute", "size": "1G"},
     "guestmemfs_backend is pmem but guestmemfs_sizing plans the guestmemfs backend: set backend: pmem"),
    ("nvram", {"mode": "absolute", "size": "1G"}, "guestmemfs_backend: unknown memory backend 'nvram'"),
])
def test_the_hosts_backend_must_be_the_one_its_policy_plans(own, policy, reason):
    h = dict(host(policy), backend=own)
    r = sizing.plan_host(h)
    assert r["ok"] is False and r["cmdline_args"] == [] and reason in r["reason"]
    assert sizing.plan_host(dict(host(dict(policy, backend="luo")), backend="luo"))["ok"] is True


def test_unreachable_host_is_refused_not_crashed():
    r = sizing.plan_host({"name": "gone", "policy": {"mode": "absolute", "size": "1G"}})
    assert not r["ok"] and "no memory facts" in r["reason"]


def test_pmem_without_firmware_map():
    r = sizing.plan_host(host({"mode": "absolute", "size": "1G", "reserve": "1G"}, ranges=[]))
    assert not r["ok"] and "/sys/firmware/memmap" in r["reason"]


def test_reports():
    rows = sizing.plan_fleet([host({"mode": "absolute", "size": "1G", "reserve": "1G"}, name="a"),
                              host({"mode": "absolute", "size": "9G"}, name="b")])
    table = sizing.render_table(rows)
    assert "memmap=1G!5G" in table and "REFUSED: carve-out 9.0 GiB" in table
    assert table.splitlines()[-1] == "2 hosts: 1 ok, 1 refused; 1.0 GiB carved in all"
    data = json.loads(sizing.render_json(rows))
    assert data["summary"] == {"hosts": 2, "ok": 1, "refused": 1, "carved_bytes": GiB, "held_bytes": 0,
                               "scratch_bytes": 0}
    parsed = list(csv.DictReader(io.StringIO(sizing.render_csv(rows))))
    assert parsed[0]["cmdline_args"] == "memmap=1G!5G" and parsed[1]["ok"] == "False"


# ------------------------------------------------------------------ luo: nothing carved, scratch beside

def luo(policy, **kw):
    return sizing.plan_host(host(dict(policy, backend="luo"), **kw))


def test_luo_plans_vm_memory_and_default_scratch():
    vms = [{"name": "vm1", "memory": "256M"}, {"name": "vm2", "memory": "300M"}]
    r = luo({"mode": "vms", "vms": vms, "reserve": "1G"})
    assert r["ok"], r["reason"]
    assert r["vms_bytes"] == 556 * MiB and r["size_bytes"] == 556 * MiB
    assert r["cmdline_args"] == ["kho=on", "liveupdate=on"]
    # The recorded host's RAM touches 32 sections of 128 MiB: 64 MiB of struct pages + 64 MiB
    # fixed, x2 for lowmem+global and x2 again for node 0's area.
    assert r["scratch_source"] == "estimate"
    assert r["scratch_bytes"] == 4 * (64 * MiB + 64 * MiB)
    assert r["overhead_bytes"] == 556 * MiB // 4096 * 24
    assert r["left_bytes"] == r["memory_bytes"] - r["size_bytes"] - r["overhead_bytes"] - r["scratch_bytes"]


def test_luo_explicit_kho_scratch_is_exact_and_on_the_cmdline():
    r = luo({"mode": "absolute", "size": "1G", "reserve": "1G", "kho_scratch": "16M,100M,30M"})
    assert r["ok"], r["reason"]
    assert r["scratch_source"] == "kho_scratch"
    assert r["scratch_bytes"] == 16 * MiB + 100 * MiB + 32 * MiB  # each area rounded up to 4 MiB
    assert r["cmdline_args"] == ["kho=on", "liveupdate=on", "kho_scratch=16M,100M,30M"]


def test_luo_scale_and_nodes():
    one = luo({"mode": "absolute", "size": "1G", "reserve": "1G", "kho_scratch": "100%"})
    assert one["ok"] and one["scratch_bytes"] == 2 * (64 * MiB + 64 * MiB)
    two = sizing.plan_host(dict(host({"backend": "luo", "mode": "absolute", "size": "1G", "reserve": "1G",
                                      "kho_scratch": "8M,8M,8M"}), numa_nodes=2))
    assert two["scratch_bytes"] == 8 * MiB * 4


def test_luo_uses_the_running_kernels_scratch_when_the_cmdline_agrees():
    measured = dict(host({"backend": "luo", "mode": "absolute", "size": "1G", "reserve": "1G"}),
                    kho_scratch_bytes=312 * MiB, kho_scratch=None)
    r = sizing.plan_host(measured)
    assert r["ok"] and r["scratch_bytes"] == 312 * MiB and r["scratch_source"] == "running kernel"
    # Another kho_scratch= in the policy: the next cold boot changes the areas, the measure is stale.
    measured["policy"] = dict(measured["policy"], kho_scratch="150%")
    assert sizing.plan_host(measured)["scratch_source"] == "estimate"


@pytest.mark.parametrize("policy,reason", [
    ({"mode": "absolute", "size": "2G"}, "+ KHO scratch 512.0 MiB (estimate) leaves"),
    ({"mode": "absolute", "size": "1G", "kho_scratch": "0%"}, "0% scale leaves no scratch"),
    ({"mode": "absolute", "size": "1G", "kho_scratch": "64M,1.5G,0"}, "use N% or three sizes"),
    ({"mode": "absolute", "size": "1G", "kho_scratch": "0,0,0"}, "not all zero"),
    ({"mode": "absolute", "size": "1G", "kho_scratch": "3G,1G,1G", "reserve": "0"},
     "lowmem scratch area (3.0 GiB) does not fit in the 2.0 GiB of RAM below 4 GiB"),
    ({"mode": "absolute", "size": "1G", "kernel_reserved": "lots"}, "not a size"),
])
def test_luo_refusals(policy, reason):
    r = luo(policy)
    assert r["ok"] is False and reason in r["reason"], r["reason"]
    assert r["cmdline_args"] == []


def test_luo_keys_refused_for_carveout_backends():
    r = sizing.plan_host(host({"mode": "absolute", "size": "1G", "kho_scratch": "200%"}))
    assert not r["ok"] and "kho_scratch only applies to the luo backend, not pmem" in r["reason"]


def test_reports_with_a_luo_row():
    rows = sizing.plan_fleet([host({"mode": "absolute", "size": "1G", "reserve": "1G"}, name="a"),
                              host({"backend": "luo", "mode": "absolute", "size": "1G", "reserve": "1G",
                                    "kho_scratch": "16M,96M,16M"}, name="b")])
    table = sizing.render_table(rows)
    assert table.splitlines()[0].split() == list(sizing.COLUMNS)
    assert "kho=on liveupdate=on kho_scratch=16M,96M,16M" in table
    assert table.splitlines()[-1] == ("2 hosts: 2 ok, 0 refused; 1.0 GiB carved in all; 1.0 GiB held in memfds "
                                      "(luo); 128.0 MiB of KHO scratch")
    data = json.loads(sizing.render_json(rows))
    assert data["summary"]["held_bytes"] == GiB and data["summary"]["scratch_bytes"] == 128 * MiB
    parsed = list(csv.DictReader(io.StringIO(sizing.render_csv(rows))))
    assert parsed[1]["scratch_bytes"] == str(128 * MiB) and parsed[1]["scratch_source"] == "kho_scratch"
    assert parsed[0]["scratch_bytes"] == ""


@pytest.mark.parametrize("text,value", [("10G", 10 * GiB), ("512M", 512 * MiB), ("1.5G", 3 * GiB // 2),
                                        ("0x40000000", GiB), (4096, 4096), ("2GiB", 2 * GiB), ("7", 7)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "G", "-1G", "1.3K", True, -5])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_size():
    assert [format_size(v) for v in (GiB, 5 * GiB, 614 * MiB, 1536 * MiB, 1000)] == ["1G", "5G", "614M", "1536M", "1000"]


def test_guestmemfs_counts_its_kho_scratch_area():
    vms = [{"name": "vm1", "memory": "1G"}]
    policy = {"backend": "guestmemfs", "mode": "vms", "vms": vms, "reserve": "1G", "kho_scratch": "64M"}
    r = sizing.plan_host(host(policy, memory=4 * GiB))
    assert r["ok"], r["reason"]
    assert r["cmdline_args"] == ["guestmemfs=1G", "kho_scratch=64M"] and r["scratch_source"] == "kho_scratch"
    assert r["left_bytes"] == 4 * GiB - GiB - 64 * MiB
    # The scratch area comes out of the same RAM: 2.9 GiB of VMs fit without it, not with 256 MiB of it
    # (three VMs: one guestmemfs file holds at most 1 GiB).
    policy = {"backend": "guestmemfs", "mode": "vms", "reserve": "1G",
              "vms": [{"name": "vm%d" % i, "memory": m} for i, m in enumerate(("1G", "1G", "900M"))]}
    r = sizing.plan_host(host(policy, memory=4 * GiB))
    assert not r["ok"] and "+ KHO scratch 256.0 MiB" in r["reason"], r["reason"]
    r = sizing.plan_host(host(dict(policy, kernel_reserved="64M"), memory=4 * GiB))
    assert not r["ok"] and "kernel_reserved only applies to the luo backend" in r["reason"]


def test_guestmemfs_file_limit_is_exactly_one_gib():
    # Measured on the RFC kernel: 512 blocks of 2 MiB survive the handover; the 513th corrupts.
    ok = sizing.plan_host(host({"backend": "guestmemfs", "mode": "vms", "vms": [{"name": "a", "memory": "1G"}]}))
    assert ok["ok"] is True, ok["reason"]
    over = sizing.plan_host(host({"backend": "guestmemfs", "mode": "vms", "vms": [{"name": "b", "memory": "1026M"}]}))
    assert over["ok"] is False and "shares blocks with another or oopses the kernel" in over["reason"]


def test_guestmemfs_rows_count_as_carved_with_their_scratch():
    # Found in the fleet run: the summary called a guestmemfs carve-out "held in memfds (luo)".
    rows = sizing.plan_fleet([host({"backend": "guestmemfs", "mode": "vms", "reserve": "1G",
                                    "vms": [{"name": "vm1", "memory": "256M"}, {"name": "vm2", "memory": "256M"}]},
                                   name=n) for n in ("a", "b")])
    assert all(r["ok"] for r in rows), [r["reason"] for r in rows]
    s = sizing.summary(rows)
    assert s["held_bytes"] == 0 and s["carved_bytes"] == sum(r["size_bytes"] for r in rows) >= 2 * 512 * MiB
    assert sizing.render_table(rows).splitlines()[-1].endswith("carved in all; 512.0 MiB of KHO scratch")
