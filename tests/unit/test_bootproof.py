"""The proof that a host kexeced into the target (module_utils/bootproof.py): the kernel log's KHO
line read as /dev/kmsg gives it (records with their prefix), systemd's kexec count, and the
verdict over every witness."""

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import bootproof

KMSG = ("6,1,0,-;Linux version 7.3.4-lu2 (root@build) #1 SMP\n"
        " SUBSYSTEM=cpu\n"
        "6,812,123456,-;KHO: found kexec handover data.\n"
        "6,813,123470,-;KHO: exec from: 7.3.4-lu1 (count 1)\n"
        "6,900,223470,-;luo: Retrieved live update data\n")


def proc(tmp_path, release="7.3.4-lu2", version="#1 SMP PREEMPT_DYNAMIC"):
    k = tmp_path / "proc" / "sys" / "kernel"
    k.mkdir(parents=True)
    (k / "osrelease").write_text(release + "\n")
    (k / "version").write_text(version + "\n")
    return str(tmp_path / "proc")


def runner(answers):
    calls = []

    def run(argv):
        calls.append(argv)
        return answers.get(argv[0], (1, "", "not here"))
    run.calls = calls
    return run


def test_the_kernel_log_gives_kho_s_exec_line(tmp_path):
    (tmp_path / "kmsg").write_text(KMSG)
    lines = bootproof.kernel_log(str(tmp_path / "kmsg"))
    assert lines[0] == "Linux version 7.3.4-lu2 (root@build) #1 SMP" and "SUBSYSTEM=cpu" not in " ".join(lines)
    assert bootproof.kho_exec(lines) == {"from_release": "7.3.4-lu1", "count": 1}
    assert bootproof.kho_exec(["KHO: found kexec handover data."]) is None
    run = runner({"systemctl": (0, "1\n", "")})
    proof = bootproof.read_proof(run, proc=proc(tmp_path), kmsg=str(tmp_path / "kmsg"))
    assert proof == {"release": "7.3.4-lu2", "version": "#1 SMP PREEMPT_DYNAMIC", "kho_exec_from": "7.3.4-lu1",
                     "kho_exec_count": 1, "systemd_kexecs": 1}
    assert run.calls == [["systemctl", "show", "--property=KexecsCount", "--value"]]


def test_the_journal_when_the_ring_buffer_moved_on_and_no_witness_where_there_is_none(tmp_path):
    (tmp_path / "kmsg").write_text("6,9000,99,-;eth0: link up\n")
    run = runner({"journalctl": (0, "Linux version x\nKHO: exec from: 6.12.0-old (count 3)\n", ""),
                  "systemctl": (0, "\n", "")})  # systemd before 262: an empty property
    proof = bootproof.read_proof(run, proc=proc(tmp_path), kmsg=str(tmp_path / "kmsg"))
    assert (proof["kho_exec_from"], proof["kho_exec_count"], proof["systemd_kexecs"]) == ("6.12.0-old", 3, None)
    nothing = bootproof.read_proof(runner({}), proc=proc(tmp_path / "x"), kmsg=str(tmp_path / "missing"))
    assert nothing["kho_exec_from"] is None and nothing["systemd_kexecs"] is None and nothing["release"] == "7.3.4-lu2"


def test_the_verdict():
    proof = {"release": "7.3.4-lu2", "kho_exec_from": "7.3.4-lu1", "kho_exec_count": 1, "systemd_kexecs": 2}
    assert bootproof.verdict(proof, "7.3.4-lu1", "7.3.4-lu2", True) == ("kexec", [
        "running 7.3.4-lu2", "booted the kernel and command line that were loaded", "KHO: exec from 7.3.4-lu1 (count 1)",
        "systemd: 2 kexec(s) since the last cold boot"])
    bare = {"release": "6.12.117", "kho_exec_from": None, "kho_exec_count": None, "systemd_kexecs": None}
    assert bootproof.verdict(bare, "7.3.4", "6.12.117", True)[0] == "kexec"  # pmem on Debian: the release alone
    assert bootproof.verdict(dict(bare, release="7.3.4"), "7.3.4", "6.12.117", False) == (
        "not the target", ["running 7.3.4, not the target 6.12.117"])
    assert bootproof.verdict(proof, "7.3.4-lu0", "7.3.4-lu2", True)[0] == "unproven"
    assert bootproof.verdict(proof, "7.3.4-lu1", "7.3.4-lu2", False)[0] == "unproven"
    assert bootproof.verdict(dict(proof, systemd_kexecs=0), "7.3.4-lu1", "7.3.4-lu2", True)[1][-1] == (
        "systemd counts no kexec since the last cold boot")
