"""The fault suite's own reading of a host (the faults themselves run on the fleet)."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))
faults = pytest.importorskip("faults")


class Answer(object):
    def __init__(self, rc, stdout="", stderr=""):
        self.returncode, self.stdout, self.stderr = rc, stdout, stderr


def host_answering(answers):
    h = faults.Host.__new__(faults.Host)
    h.name, calls = "host1", []

    def ssh(command, timeout=900, check=True):
        calls.append(command)
        r = answers.pop(0)
        if check and r.returncode != 0:
            raise RuntimeError("%s failed (rc %d)" % (command, r.returncode))
        return r
    h.ssh = ssh
    return h, calls


def test_the_journal_is_read_once_a_host_down_for_its_kexec_answers_again(monkeypatch):
    # Seen in a fault run: the controller killed mid-save, SSH answered, then the host kexeced and
    # the next read failed with ssh's own rc 255 (no connection): the suite stopped there.
    monkeypatch.setattr(faults.time, "sleep", lambda s: None)
    h, calls = host_answering([Answer(255, stderr="Connection refused"), Answer(255),
                               Answer(0, json.dumps({"phase": "booted", "update_id": "u1"}))])
    assert h.journal()["update_id"] == "u1"
    assert len(calls) == 3


def test_a_journal_the_agent_cannot_read_is_an_error_at_once():
    h, calls = host_answering([Answer(8, stderr="journal.json is not valid JSON")])
    with pytest.raises(RuntimeError):
        h.journal()
    assert len(calls) == 1


def test_a_host_that_never_answers_ends_the_wait_saying_so(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(faults.time, "time", lambda: clock[0])

    def sleep(s):
        clock[0] += s
    monkeypatch.setattr(faults.time, "sleep", sleep)
    h, calls = host_answering([Answer(255)] * 1000)
    with pytest.raises(RuntimeError, match="no answer over SSH"):
        h.journal(timeout=60)
