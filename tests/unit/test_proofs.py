"""A kernel pair's proof as each host keeps it (module_utils/proofs.py), the fleet's view of them
(the kernel_proofs filter) and the agent's `proofs` command."""

import json

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.filter.kernel_proofs import kernel_proofs
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import agent, journal, proofs

OLD, NEW = "6.12.117+deb13-amd64", "7.3.4+deb13-amd64"
PAIR = OLD + " -> " + NEW


def ended(verdicts, as_loaded=True, booted=NEW):
    return {"update_id": "u1", "booted_as_loaded": as_loaded, "booted_release": booted,
            "kexec_target": {"release": NEW, "from_release": OLD},
            "vms": dict((n, {"state": "restored", "verify": v}) for n, v in verdicts.items())}


FULL_OK = {"status": "ok", "mode": "full"}


def test_a_full_check_passed_on_every_vm_proves_the_pair():
    key, rec = proofs.of_update(ended({"vm1": FULL_OK, "vm2": FULL_OK}))
    assert (key, rec["result"], rec["vms"], rec["modes"], rec["update_id"]) == (PAIR, "proven", 2, ["full"], "u1")


@pytest.mark.parametrize("verdicts, as_loaded", [
    ({"vm1": FULL_OK, "vm2": {"status": "ok", "mode": "sampled"}}, True),  # one VM only sampled
    ({"vm1": FULL_OK}, False),  # a cold boot into GRUB's default is not the pair's kexec
    ({}, True),
    ({"vm1": FULL_OK, "vm2": {"status": "no_digests", "mode": None}}, True),  # a save cut short: no word on the pair
])
def test_what_proves_nothing(verdicts, as_loaded):
    assert proofs.of_update(ended(verdicts, as_loaded)) is None


@pytest.mark.parametrize("status", ["content_changed", "extents_moved", "size_changed", "missing"])
def test_memory_that_moved_or_changed_fails_the_pair_whatever_the_mode(status):
    key, rec = proofs.of_update(ended({"vm1": {"status": status, "mode": "sampled", "detail": "chunk 7"},
                                       "vm2": FULL_OK}))
    assert (key, rec["result"], rec["detail"], rec["modes"]) == (PAIR, "failed", "vm1 %s: chunk 7" % status,
                                                                 ["full", "sampled"])


def test_the_fleet_trusts_a_proof_only_while_no_host_saw_the_pair_fail():
    proven = {"result": "proven", "update_id": "u1", "ts": 100.0}
    later = {"result": "proven", "update_id": "u2", "ts": 200.0}
    failed = {"result": "failed", "update_id": "u3", "ts": 50.0, "detail": "vm1 content_changed"}
    other = OLD + " -> 7.4.0"
    view = kernel_proofs({"h1": {PAIR: proven}, "h2": {PAIR: later, other: proven}, "h3": {}})
    assert (view[PAIR]["proven"], view[PAIR]["proven_by"], view[PAIR]["last_proof"]["host"]) == (True, ["h1", "h2"], "h2")
    assert view[other]["proven"] is True
    view = kernel_proofs({"h1": {PAIR: proven}, "h2": {PAIR: later}, "h3": {PAIR: failed}, "h4": None})
    assert (view[PAIR]["proven"], view[PAIR]["failed_on"], view[PAIR]["last_failure"]["detail"]) == (
        False, ["h3"], "vm1 content_changed")
    with pytest.raises(Exception, match="kernel_proofs takes"):
        kernel_proofs([])


def test_the_agent_lists_and_forgets_a_pairs_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    monkeypatch.setattr(journal, "boot_id", lambda: "boot-a")
    assert agent.main(["proofs"]) == 0
    assert capsys.readouterr().out == "no kernel pair proven or failed on this host yet\n"
    journal.update_journal(lambda j: j.update(proofs={PAIR: {"result": "failed", "update_id": "u3", "ts": 0,
                                                             "detail": "vm1 content_changed"}}))
    assert agent.main(["proofs"]) == 0
    assert capsys.readouterr().out.split() == [PAIR.split()[0], "->", NEW, "failed", "1970-01-01", "00:00", "UTC",
                                               "update", "u3:", "vm1", "content_changed"]
    assert agent.main(["proofs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[PAIR]["result"] == "failed"
    assert agent.main(["proofs", "--forget", OLD + " -> 9.9"]) == 1
    assert "no record of kernel pair" in capsys.readouterr().err
    assert agent.main(["proofs", "--forget", PAIR]) == 0
    assert capsys.readouterr().out == "kernel pair %s: its failed record (update u3) forgotten\n" % PAIR
    j = journal.load_journal()
    assert j["proofs"] == {} and j["log"][-1]["msg"].endswith("its failed record forgotten (agent proofs --forget)")


def test_a_runs_rows_and_an_earlier_runs_view_merge_with_what_the_hosts_keep():
    rows = [{"host": "h1", "vm": "vm1", "pair": PAIR, "verify": "ok", "verify_mode": "full", "run_id": "r2"},
            {"host": "h1", "vm": "vm2", "pair": PAIR, "verify": "ok", "verify_mode": "full", "run_id": "r2"},
            {"host": "h2", "vm": "vm1", "pair": PAIR, "verify": "ok", "verify_mode": "sampled", "run_id": "r2"},
            {"host": "h3", "vm": "vm1", "pair": OLD + " -> 7.4.0", "verify": "ok", "verify_mode": "full"},
            {"host": "h3", "vm": "vm2", "pair": OLD + " -> 7.4.0", "verify": "content_changed", "verify_mode": "full"}]
    earlier = kernel_proofs({"h0": {PAIR: {"result": "proven", "update_id": "u0", "ts": 1.0}}})
    view = kernel_proofs({"h9": {}}, earlier, rows=rows)
    assert (view[PAIR]["proven"], view[PAIR]["proven_by"]) == (True, ["h0", "h1"])  # h2's sample proves nothing
    assert view[PAIR]["last_proof"]["update_id"] == "r2"
    assert (view[OLD + " -> 7.4.0"]["proven"], view[OLD + " -> 7.4.0"]["failed_on"]) == (False, ["h3"])
    assert view[OLD + " -> 7.4.0"]["last_failure"]["detail"] == "vm2 content_changed"
    with pytest.raises(Exception, match="earlier is a view"):
        kernel_proofs({}, ["not", "a", "view"])
