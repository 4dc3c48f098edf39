"""One report directory per run (module_utils/report_runs, module report_files with run): a later run
never writes over an earlier run's reports, and the top-level names keep working for readers."""

import errno
import os

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import report_runs
from ansible_collections.guestmemfs.liveupdate.plugins.modules import report_files

import conftest


def write(capsys, base, run, files, **kw):
    code, res = conftest.run_main(capsys, report_files, dict({"path": str(base), "run": run, "files": files}, **kw))
    assert code == 0, res
    return res


def test_a_second_run_leaves_the_first_runs_table_and_the_top_level_shows_the_second(tmp_path, capsys):
    base = tmp_path / "report"
    write(capsys, base, "20250101T000000Z", {"blackout.txt": "2 VMs on 1 host\n"})
    write(capsys, base, "20250101T000000Z", {"wave-001.limit": "h1\n"}, subdir="waves")
    res = write(capsys, base, "20250102T000000Z", {"blackout.txt": "0 VMs on 0 hosts\n"})
    assert res["directory"] == str(base / "20250102T000000Z")
    assert (base / "20250101T000000Z" / "blackout.txt").read_text() == "2 VMs on 1 host\n"
    assert (base / "blackout.txt").read_text() == "0 VMs on 0 hosts\n"
    assert os.readlink(str(base / "latest")) == "20250102T000000Z"
    assert (base / "waves" / "wave-001.limit").read_text() == "h1\n"  # the last run that wrote waves
    # nothing changes on a second write of the same run
    assert write(capsys, base, "20250102T000000Z", {"blackout.txt": "0 VMs on 0 hosts\n"})["changed"] is False


def test_reports_of_the_old_layout_are_kept_aside_not_overwritten(tmp_path, capsys):
    base = tmp_path / "report"
    (base / "waves").mkdir(parents=True)
    (base / "waves" / "wave-001.limit").write_text("old\n")
    (base / "blackout.txt").write_text("the update before runs had directories\n")
    write(capsys, base, "r1", {"blackout.txt": "new\n"})
    write(capsys, base, "r1", {"wave-001.limit": "h1\n"}, subdir="waves")
    assert (base / "before-runs" / "blackout.txt").read_text() == "the update before runs had directories\n"
    assert (base / "before-runs" / "waves" / "wave-001.limit").read_text() == "old\n"
    assert (base / "blackout.txt").read_text() == "new\n" and os.path.islink(str(base / "waves"))


def test_without_symlinks_latest_is_a_file_naming_the_run_and_the_names_are_copies(tmp_path, monkeypatch):
    def no_symlinks(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", dst)
    monkeypatch.setattr(report_runs.os, "symlink", no_symlinks)
    base = tmp_path / "report"
    for run, text in (("r1", "first\n"), ("r2", "second\n")):
        (base / run / "waves").mkdir(parents=True)
        (base / run / "blackout.txt").write_text(text)
        (base / run / "waves" / "wave-001.limit").write_text(text)
        report_runs.publish(str(base), run, ["blackout.txt", "waves"])
    assert (base / "latest").read_text() == "r2\n"
    assert (base / "blackout.txt").read_text() == "second\n" and (base / "waves" / "wave-001.limit").read_text() == "second\n"
    assert (base / "r1" / "blackout.txt").read_text() == "first\n"


@pytest.mark.parametrize("run, name", [("20250101T000000Z", "20250101T000000Z"), ("a/../b c", "a_.._b_c"),
                                       ("job 42", "job_42")])
def test_a_run_id_becomes_one_plain_directory_name(run, name):
    assert report_runs.run_name(run) == name


@pytest.mark.parametrize("run", ["", "..", "latest", "before-runs"])
def test_a_run_id_that_names_no_run_directory_is_refused(run):
    with pytest.raises(ValueError):
        report_runs.run_name(run)


def test_a_new_run_with_the_same_reports_as_the_last_changes_nothing(tmp_path, capsys):
    # molecule's idempotence run (2026-12-05): sizing.yml run twice reported changed because each
    # run writes its own directory; what the operator reads (the top-level names) did not change.
    base = tmp_path / "report"
    assert write(capsys, base, "run1", {"sizing.txt": "2 hosts\n"})["changed"] is True
    assert write(capsys, base, "run1", {"w1": "h1\n"}, subdir="waves")["changed"] is True
    res = write(capsys, base, "run2", {"sizing.txt": "2 hosts\n"})
    assert res["changed"] is False
    assert (base / "run2" / "sizing.txt").read_text() == "2 hosts\n"  # the run keeps its own copy
    assert os.readlink(str(base / "latest")) == "run2"
    assert write(capsys, base, "run2", {"w1": "h1\n"}, subdir="waves")["changed"] is False
    assert write(capsys, base, "run3", {"sizing.txt": "3 hosts\n"})["changed"] is True


def test_differs_from_latest_compares_with_what_the_top_level_names_show(tmp_path):
    base = tmp_path / "report"
    base.mkdir()
    (base / "a.txt").write_text("x")
    assert report_runs.differs_from_latest(str(base), {"a.txt": "x"}) == []
    assert report_runs.differs_from_latest(str(base), {"a.txt": "y", "b.txt": "z"}) == ["a.txt", "b.txt"]
    assert report_runs.differs_from_latest(str(base), {"c": "1"}, subdir="waves") == ["c"]
