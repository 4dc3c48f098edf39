"""The QEMU update modes benchmark's summary (the figures come from a fleet host)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
sys.path.insert(0, os.path.join(HERE, "..", "fleet"))
bench = pytest.importorskip("bench_qemu_update_modes")


def row(mode, blackout, counting_on=True, error=None):
    r = {"mode": mode, "round": 1, "load": 1.0, "blackout_s": blackout, "counting_on": counting_on}
    if error:
        r = {"mode": mode, "round": 1, "load": 1.0, "error": error}
    return r


def test_a_run_counts_only_when_it_completed_with_the_guest_counting_on():
    rows = [row("cpr-reboot", 1.0), row("cpr-reboot", 1.4), row("cpr-reboot", 0.2, counting_on=False),
            row("cpr-transfer", 0.1), row("cpr-transfer", 0.2), row("cpr-transfer", None, error="refused")]
    s = bench.summary(rows)
    assert s["modes"]["cpr-reboot"] == {"n": 2, "failed": 1, "min": 1.0, "median": 1.2}
    assert s["modes"]["cpr-transfer"] == {"n": 2, "failed": 1, "min": 0.1, "median": 0.15}
    assert s["cpr-transfer / cpr-reboot"] == {"min": 0.1, "median": 0.125}


def test_no_ratio_when_a_mode_never_completed_and_the_failure_is_in_the_table(tmp_path):
    rows = [row("cpr-reboot", 1.0), row("cpr-transfer", None, error="Memory region is not compatible with CPR")]
    text = bench.write(str(tmp_path), {"host": "host1", "old": "10.0", "new": "11.1"}, rows)
    assert bench.summary(rows)["cpr-transfer / cpr-reboot"] is None
    assert "cpr-transfer     0      1" in text and "FAILED cpr-transfer round 1: Memory region" in text
    assert (tmp_path / "bench-qemu-update-modes.json").exists()
