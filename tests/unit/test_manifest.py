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
    e = m["files"]["vm1"]
    assert mf.verify(m) == {"vm1": {"status": "ok", "detail": mf.verify_file(e)["detail"], "mode": mode,
                                    "algo": "crc32", "chunks": {"full": 8, "sampled": 3, "extents": 0}[mode]}}
    assert e["size"] == 8 * MiB
    assert e["extents"] and sum(x[2] for x in e["extents"]) >= 8 * MiB
    assert len(e.get("digests", {})) == {"full": 8, "sampled": 3, "extents": 0}[mode]


def test_manifest_survives_json_roundtrip(ram, tmp_path):
    path = str(tmp_path / "state" / "manifest.json")
    mf.save(mf.record({"vm1": ram}), path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert mf.verify(mf.load(path))["vm1"]["status"] == "ok"


def flip(path, offset, mask):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ mask]))


def test_one_byte_changed_is_found_with_its_offset(ram):
    m = mf.record({"vm1": ram})
    flip(ram, 5 * MiB + 12345, 0xFF)
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


@pytest.mark.parametrize("algo", sorted(mf.ALGOS))
def test_each_checksum_finds_a_changed_byte(ram, algo):
    m = mf.record({"vm1": ram}, algo=algo)
    assert m["files"]["vm1"]["algo"] == algo and mf.verify(m)["vm1"]["status"] == "ok"
    flip(ram, 3 * MiB + 7, 0x01)
    r = mf.verify(m)["vm1"]
    assert (r["status"], r["first_diff_offset"], r["algo"]) == ("content_changed", 3 * MiB, algo)


def test_a_manifest_without_algo_is_verified_with_sha256(ram):
    # manifests recorded before the checksum was recorded hashed with sha256, kept to 128 bits
    m = mf.record({"vm1": ram}, algo="sha256")
    del m["files"]["vm1"]["algo"]
    assert len(m["files"]["vm1"]["digests"]["0"]) == 32
    assert mf.verify(m)["vm1"]["status"] == "ok"


def test_an_unknown_checksum_is_refused():
    with pytest.raises(ValueError, match="crc32"):
        mf.record_file("/nonexistent", algo="md4")
