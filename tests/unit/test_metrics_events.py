"""The host's metrics textfile and update events (docs/metrics.md), written by the real host-side
update (real QEMUs, the counting guest, the kexec the only stand-in: see test_host_update.py), read
back with a strict parser of the Prometheus text exposition format and line by line against the
documented event schema. Writing either never fails the update: a full disk (the kernel's own
ENOSPC, from /dev/full) is said once on stderr and the update goes on."""

import datetime
import json
import math
import os
import re
import tempfile
import time

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import (
    agent, events, hostupdate, journal, metrics)

from test_host_update import Kexec, counting, read_counter
# the fixture
from test_host_update import host  # noqa: F401  pylint: disable=unused-import

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")

# ---- a strict reader of the text exposition format (version 0.0.4), as node_exporter parses it

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?Inf|NaN)"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r"^(%s)(?:\{((?:%s=%s)(?:,%s=%s)*)?\})? (%s)$" % (NAME, LABEL, LABEL_VALUE, LABEL, LABEL_VALUE, VALUE))
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _unescape(text):
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_exposition(text):
    """{family: {"type", "help", "samples": [(labels dict, value)]}}; AssertionError on anything a
    strict parser refuses: a line that is no comment or sample, a HELP or TYPE repeated or after
    the family's samples, a family split, a sample without TYPE, a counter not ending _total,
    a series given twice, a label given twice, a missing final newline."""
    assert text.endswith("\n") and "\r" not in text, "the file must end with a newline, no CR"
    families, order, current = {}, [], None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d %r" % (n, line)
        assert line.strip(), "%s: empty line" % where
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (%s) (.*)$" % NAME, line)
            assert m, "%s: a comment that is not HELP or TYPE" % where
            kind, name, rest = m.groups()
            fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
            assert not fam["samples"], "%s: %s after the family's samples" % (where, kind)
            key = kind.lower()
            assert fam[key] is None, "%s: a second %s" % (where, kind)
            if kind == "TYPE":
                assert rest in TYPES, where
                assert rest != "counter" or name.endswith("_total"), "%s: a counter's name ends _total" % where
            else:
                assert not re.search(r"\\[^\\n]", rest), "%s: HELP escapes only \\\\ and \\n" % where
            fam[key] = _unescape(rest) if kind == "HELP" else rest
            if name not in order:
                order.append(name)
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, "%s: not a sample" % where
        name, labels_text, value = m.groups()
        assert name == current and name in families, "%s: a sample outside its family (after %s)" % (where, current)
        fam = families[name]
        assert fam["type"] and fam["help"], "%s: a sample before its HELP and TYPE" % where
        labels = {}
        for lm in re.finditer(r"(%s)=(%s)" % (LABEL, LABEL_VALUE), labels_text or ""):
            assert lm.group(1) not in labels and not lm.group(1).startswith("__"), "%s: label %s" % (where, lm.group(1))
            labels[lm.group(1)] = _unescape(lm.group(2)[1:-1])
        assert all(labels != other for other, _v in fam["samples"]), "%s: a series given twice" % where
        fam["samples"].append((labels, float(value)))
    return families


def series(fams, name):
    return dict((tuple(sorted(labels.items())), value) for labels, value in fams[name]["samples"])


# ---- the events file against its schema

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def read_events(path=None):
    """Every event in the file, each checked against the schema; AssertionError names the line."""
    out = []
    with open(path or events.EVENTS) as fh:
        text = fh.read()
    assert text.endswith("\n")
    for n, line in enumerate(text.splitlines(), 1):
        e = json.loads(line)
        where = "event line %d: %s" % (n, line)
        assert tuple(sorted(e)) == tuple(sorted(events.FIELDS)), where
        assert ISO.match(e["time"]), where
        assert isinstance(e["ts"], float) and abs(datetime.datetime.strptime(
            e["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp() - e["ts"]) < 1e-5, where
        assert isinstance(e["monotonic"], float) and e["monotonic"] > 0, where
        assert isinstance(e["host"], str) and e["host"], where
        assert e["step"] in events.STEPS and e["outcome"] in events.OUTCOMES, where
        assert all(e[k] is None or isinstance(e[k], str) for k in ("boot_id", "update_id", "vm")), where
        assert isinstance(e["detail"], str) and isinstance(e["data"], dict), where
        out.append(e)
    return out


def textfile():
    with open(os.path.join(metrics.DEFAULT_DIR, metrics.FILE)) as fh:
        return parse_exposition(fh.read())


def test_the_documentation_names_every_metric_step_and_field():
    with open(DOCS) as fh:
        doc = fh.read()
    fams = parse_exposition(metrics.render({"update_id": "u", "phase": "restored", "vms": {"vm1": {
        "state": "restored", "blackout_s": 1.5, "verify": {"status": "ok"}}}, "totals": {"last_success_ts": 1.0}}))
    missing = [n for n in fams if "`%s`" % n not in doc]
    missing += ["`%s`" % s for s in events.STEPS if "`%s`" % s not in doc]
    missing += ["`%s`" % f for f in events.FIELDS if "`%s`" % f not in doc]
    missing += ["`%s`" % p for p in metrics.PHASES if "`%s`" % p not in doc]
    assert not missing, "docs/metrics.md does not name %s" % ", ".join(missing)


def test_a_host_without_an_update_exports_phase_none_and_zero_counts():
    fams = parse_exposition(metrics.render({}, release="6.1.0"))
    phase = series(fams, "guestmemfs_liveupdate_phase")
    assert phase[(("phase", "none"),)] == 1 and sum(phase.values()) == 1
    assert set(dict(k)["phase"] for k in phase) == set(metrics.PHASES)
    assert series(fams, "guestmemfs_liveupdate_kexecs_total") == {(): 0}
    assert "guestmemfs_liveupdate_last_success_timestamp_seconds" not in fams  # never succeeded
    assert fams["guestmemfs_liveupdate_kexecs_total"]["type"] == "counter"


def test_label_values_are_escaped_and_an_unknown_phase_still_shows():
    j = {"update_id": 'a"b\\c\nd', "phase": "some_new_phase"}
    fams = parse_exposition(metrics.render(j, release="6.1.0"))
    info = fams["guestmemfs_liveupdate_update_info"]["samples"]
    assert info[0][0]["update_id"] == 'a"b\\c\nd'
    assert series(fams, "guestmemfs_liveupdate_phase")[(("phase", "some_new_phase"),)] == 1


def test_an_empty_directory_turns_the_textfile_off_and_the_role_config_moves_it(tmp_path):
    with open(metrics.CONFIG, "w") as fh:
        json.dump({"textfile_dir": ""}, fh)
    journal.update_journal(lambda j: j.update(phase="preflight"), path=str(tmp_path / "journal.json"))
    assert not os.listdir(metrics.DEFAULT_DIR)
    with open(metrics.CONFIG, "w") as fh:
        json.dump({"textfile_dir": str(tmp_path)}, fh)
    journal.update_journal(lambda j: j.update(phase="preflight"), path=str(tmp_path / "journal.json"))
    assert series(parse_exposition((tmp_path / metrics.FILE).read_text()), "guestmemfs_liveupdate_phase")[
        (("phase", "preflight"),)] == 1
    assert [n for n in os.listdir(str(tmp_path)) if n.endswith(".prom")] == [metrics.FILE]  # no temporary left
    assert oct(os.stat(str(tmp_path / metrics.FILE)).st_mode & 0o777) == "0o644"  # node_exporter reads it


def test_a_live_update_exports_its_phase_blackouts_verdicts_and_counts_and_every_step(host):
    # The kexec module records the kernel it loaded; the new boot compares itself with it.
    journal.update_journal(lambda j: j.update(kexec_target={"release": os.uname()[2], "cmdline": ""}))
    start = time.time()
    with pytest.raises(Kexec):
        hostupdate.update_host(host.run, conf_dir=host.conf, mode="sampled", update_id="u1")
    fams = textfile()
    assert series(fams, "guestmemfs_liveupdate_phase")[(("phase", "kexec"),)] == 1
    assert series(fams, "guestmemfs_liveupdate_vm_state") == {(("state", "saved"), ("vm", "vm1")): 1,
                                                              (("state", "saved"), ("vm", "vm2")): 1}
    saved = dict((vm.name, read_counter(vm.mem_path)) for vm in host.vms)
    host.boot["id"] = "boot-b"
    assert agent.main(["verify", "--boot"]) == 0
    for vm in host.vms:
        assert host.run(["systemctl", "start", "guestmemfs-vm@%s.service" % vm.name]) == 0
    for vm in host.vms:
        assert counting(vm, saved[vm.name])
    j = journal.load_journal()
    fams = textfile()
    assert series(fams, "guestmemfs_liveupdate_phase")[(("phase", "restored"),)] == 1
    assert sum(series(fams, "guestmemfs_liveupdate_phase").values()) == 1
    blackout = series(fams, "guestmemfs_liveupdate_vm_blackout_seconds")
    assert blackout == dict(((("update_id", "u1"), ("vm", n)), j["vms"][n]["blackout_s"]) for n in ("vm1", "vm2"))
    assert all(0 < b < 60 for b in blackout.values())
    assert series(fams, "guestmemfs_liveupdate_vm_verification_ok") == {
        (("verdict", "ok"), ("vm", "vm1")): 1, (("verdict", "ok"), ("vm", "vm2")): 1}
    assert series(fams, "guestmemfs_liveupdate_kexecs_total") == {(): 1}
    assert series(fams, "guestmemfs_liveupdate_updates_total")[(("ending", "restored"),)] == 1
    last = series(fams, "guestmemfs_liveupdate_last_success_timestamp_seconds")[()]
    assert start < last <= time.time()
    info = fams["guestmemfs_liveupdate_update_info"]["samples"][0][0]
    assert info == {"update_id": "u1", "kernel_release": os.uname()[2], "target_release": os.uname()[2]}

    evs = read_events()
    assert all(e["update_id"] == "u1" and e["outcome"] == "ok" for e in evs), evs
    host_steps = [e["step"] for e in evs if e["vm"] is None]
    assert host_steps == ["record", "sync", "kexec-requested", "boot"], host_steps
    for name in ("vm1", "vm2"):
        mine = [e for e in evs if e["vm"] == name]
        assert [e["step"] for e in mine] == ["pause", "save", "verify", "restore", "resume"], mine
        assert mine[2]["data"]["verdict"] == "ok" and mine[4]["data"]["blackout_s"] == j["vms"][name]["blackout_s"]
        # the pause and the resume are QEMU's own times: their difference is the blackout
        assert abs(mine[4]["ts"] - mine[0]["ts"] - j["vms"][name]["blackout_s"]) < 0.01
        assert [e["boot_id"] for e in mine] == ["boot-a", "boot-a", "boot-b", "boot-b", "boot-b"]
    order = [e["step"] for e in evs]
    assert order.index("sync") > max(i for i, s in enumerate(order) if s == "save")
    assert order.index("kexec-requested") == order.index("sync") + 1


def test_a_refused_kexec_leaves_a_failure_and_a_rollback_event_and_no_success(host):
    (host.root / "sys" / "kernel" / "kexec_loaded").write_text("0\n")
    with pytest.raises(hostupdate.UpdateError):
        hostupdate.update_host(host.run, conf_dir=host.conf, update_id="u2")
    evs = read_events()
    steps = [(e["step"], e["outcome"]) for e in evs if e["vm"] is None]
    assert steps == [("record", "ok"), ("sync", "ok"), ("kexec-requested", "failed"), ("failure", "failed"),
                     ("rollback", "ok")], steps
    assert "no kernel is loaded for kexec" in [e for e in evs if e["step"] == "failure"][0]["detail"]
    for name in ("vm1", "vm2"):  # restored on this kernel, each with its blackout
        assert [e["step"] for e in evs if e["vm"] == name] == ["pause", "save", "verify", "restore", "resume"]
    fams = textfile()
    assert series(fams, "guestmemfs_liveupdate_phase")[(("phase", "rolled_back"),)] == 1
    assert series(fams, "guestmemfs_liveupdate_updates_total")[(("ending", "rolled_back"),)] == 1
    assert series(fams, "guestmemfs_liveupdate_kexecs_total") == {(): 0}
    assert "guestmemfs_liveupdate_last_success_timestamp_seconds" not in fams


def test_a_full_disk_under_the_events_and_the_textfile_does_not_stop_the_update(host, monkeypatch, capsys):
    # Both writes meet the kernel's own ENOSPC: /dev/full takes the events and the textfile's temporary.
    monkeypatch.setattr(events, "EVENTS", "/dev/full")
    monkeypatch.setattr(events, "_complained", [])
    real_mkstemp = tempfile.mkstemp

    def full_mkstemp(dir=None, prefix=None, **kw):
        if dir == metrics.DEFAULT_DIR:
            return os.open("/dev/full", os.O_WRONLY), os.path.join(dir, prefix + "full")
        return real_mkstemp(dir=dir, prefix=prefix, **kw)
    monkeypatch.setattr(tempfile, "mkstemp", full_mkstemp)
    with pytest.raises(Kexec):  # the update went all the way to its kexec
        hostupdate.update_host(host.run, conf_dir=host.conf, update_id="u3")
    assert journal.load_journal()["phase"] == "kexec"
    err = capsys.readouterr().err
    assert err.count("was not written") == 2, err  # once for the events, once for the textfile
    assert "No space left on device" in err and "the update carries on" in err
    assert not os.listdir(metrics.DEFAULT_DIR)


def test_a_missing_textfile_directory_is_said_and_the_journal_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(events, "_complained", [])
    with open(metrics.CONFIG, "w") as fh:
        json.dump({"textfile_dir": str(tmp_path / "no-such-dir")}, fh)
    j = journal.update_journal(lambda j: j.update(phase="preflight"), path=str(tmp_path / "journal.json"))
    assert j["phase"] == "preflight" and journal.load_journal(str(tmp_path / "journal.json"))["phase"] == "preflight"
    assert "no-such-dir" in capsys.readouterr().err


def test_events_and_values_are_finite_numbers():
    e = events.event("resume", "u", "vm1", ts=1700000000.5, blackout_s=0.25)
    assert e["time"] == "2023-11-14T22:13:20.500000Z" and e["data"] == {"blackout_s": 0.25}
    with pytest.raises(ValueError):
        events.event("no-such-step")
    fams = parse_exposition(metrics.render({"vms": {"vm1": {"blackout_s": 2}}}, release="r"))
    assert all(math.isfinite(v) for f in fams.values() for _l, v in f["samples"])


def test_the_agent_writes_the_textfile_from_the_journal_and_says_when_it_cannot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    journal.update_journal(lambda j: j.update(update_id="u9", phase="held", vms={"vm1": {
        "state": "held", "verify": {"status": "content_changed"}}}))
    os.unlink(os.path.join(metrics.DEFAULT_DIR, metrics.FILE))
    assert agent.main(["metrics"]) == 0
    fams = textfile()
    assert series(fams, "guestmemfs_liveupdate_vm_verification_ok") == {(("verdict", "content_changed"), ("vm", "vm1")): 0}
    with open(metrics.CONFIG, "w") as fh:
        json.dump({"textfile_dir": str(tmp_path / "gone")}, fh)
    monkeypatch.setattr(events, "_complained", [])
    assert agent.main(["metrics"]) == 5
    assert "was not written" in capsys.readouterr().err


def test_while_vms_save_only_the_phases_change_renders_the_textfile(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    journal.update_journal(journal.phase_update("saving", update_id="u5", vms={"vm1": {"state": "saving"}}))
    assert series(textfile(), "guestmemfs_liveupdate_vm_state") == {(("state", "saving"), ("vm", "vm1")): 1}
    journal.update_journal(journal.set_vm("vm1", state="saved"))  # a VM saved: every VM is paused now
    assert series(textfile(), "guestmemfs_liveupdate_vm_state") == {(("state", "saving"), ("vm", "vm1")): 1}
    journal.update_journal(journal.phase_update("saved"))
    fams = textfile()
    assert series(fams, "guestmemfs_liveupdate_vm_state") == {(("state", "saved"), ("vm", "vm1")): 1}
    assert series(fams, "guestmemfs_liveupdate_phase")[(("phase", "saved"),)] == 1


def test_the_role_rotates_the_events_file_by_rename_and_the_next_event_starts_a_new_one(tmp_path, monkeypatch):
    conf = open(os.path.join(os.path.dirname(__file__), "..", "..", "roles", "qemu_vm", "files",
                             "logrotate-events")).read()
    assert "/var/lib/guestmemfs-liveupdate/events.jsonl {" in conf  # events.EVENTS, unpatched
    directives = [l.split()[0] for l in conf.splitlines() if l.startswith("    ")]
    assert "copytruncate" not in directives and "nocreate" in directives  # a rename; the writer creates it
    path = str(tmp_path / "events.jsonl")
    monkeypatch.setattr(events, "EVENTS", path)
    events.emit("record", update_id="u1")
    os.rename(path, path + ".1")  # what logrotate does
    events.emit("sync", update_id="u1")
    with open(path + ".1") as old, open(path) as new:
        assert [json.loads(l)["step"] for l in old] == ["record"]
        assert [json.loads(l)["step"] for l in new] == ["sync"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_an_events_time_is_what_datetime_writes_for_its_timestamp():
    # events.iso_utc formats without datetime (one import less per VM unit start): the same text
    # as datetime for whole seconds, half microseconds (rounded half to even), a carry into the
    # next second, and a spread of times from 1970 to 2100
    stamps = [0.0, 1.0, 1733500000.0, 1733500000.0000005, 1733500000.0000015, 1733500000.9999996,
              1733500000.9999994, 4102444799.999999, 86399.5000005]
    stamps += [i * 4102444800.0 / 997 + (i % 10) * 0.1234567 for i in range(997)]
    for ts in stamps:
        expect = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert events.iso_utc(ts) == expect, ts
