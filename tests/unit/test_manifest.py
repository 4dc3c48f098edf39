"""The memory manifest on real files: every fault is found, and a clean file verifies."""

import os
import shutil

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import manifest as mf

MiB = 1024 * 1024


@pytest.fixture
def ram(tmp_path):
    path = tmp_path / "vm1.ram"
    with open(path, "wb") as fh:
        fh.write(os.urandom(8 * MiB))
        fh.flush()
        os.fsync(fh.fileno())
    return str(path)


@pytest.mark.parametrize("mode", ["full", "sampled", "extents"])
def test_clean_file_verifies(ram, mode):
    m = mf.record({"vm1": ram}, mode=mode, samples=3)
    assert mf.verify(m) == {"vm1": {"status": "ok", "detail": mf.verify_file(m["files"]["vm1"])["detail"]}}
    e = m["files"]["vm1"]
    assert e["size"] == 8 * MiB
    assert e["extents"] and sum(x[2] for x in e["extents"]) >= 8 * MiB
    assert len(e.get("digests", {})) == {"full": 8, "sampled": 3, "extents": 0}[mode]


def test_manifest_survives_json_roundtrip(ram, tmp_path):
    path = str(tmp_path / "state" / "manifest.json")
    mf.save(mf.record({"vm1": ram}), path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert mf.verify(mf.load(path))["vm1"]["status"] == "ok"


def test_one_byte_changed_is_found_with_its_offset(ram):
    m = mf.record({"vm1": ram})
    with open(ram, "r+b") as fh:
        fh.seek(5 * MiB + 12345)
        b = fh.read(1)
        fh.seek(5 * MiB + 12345)
        fh.write(bytes([b[0] ^ 0xFF]))
    r = mf.verify(m)["vm1"]
    assert r["status"] == "content_changed" and r["first_diff_offset"] == 5 * MiB


def test_truncated_file(ram):
    m = mf.record({"vm1": ram})
    os.truncate(ram, 4 * MiB)
    assert mf.verify(m)["vm1"]["status"] == "size_changed"


def test_missing_file(ram):
    m = mf.record({"vm1": ram})
    os.unlink(ram)
    assert mf.verify(m)["vm1"]["status"] == "missing"


def test_moved_placement_same_content(ram, tmp_path):
    # Same bytes at the same path, but in other blocks: what a restore onto a re-made file looks like.
    m = mf.record({"vm1": ram})
    hold = str(tmp_path / "hold")
    shutil.copyfile(ram, hold)  # keeps the old blocks allocated, so the copy cannot reuse them
    os.rename(ram, str(tmp_path / "old"))
    shutil.copyfile(hold, ram)
    r = mf.verify(m)["vm1"]
    assert r["status"] == "extents_moved", r


def test_extents_mode_skips_content(ram):
    m = mf.record({"vm1": ram}, mode="extents")
    with open(ram, "r+b") as fh:
        fh.write(b"\0")
    assert mf.verify(m)["vm1"]["status"] == "ok"


def test_add_content_later(ram):
    m = mf.record({"vm1": ram}, content=False)
    assert "digests" not in m["files"]["vm1"]
    mf.add_content(m)
    assert len(m["files"]["vm1"]["digests"]) == 8


def test_bad_mode():
    with pytest.raises(ValueError, match="full, sampled or extents"):
        mf.record_file("/nonexistent", mode="quick")
