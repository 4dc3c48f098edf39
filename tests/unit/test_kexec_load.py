"""Issue 19 item 7: the load never trusts a `kexec` binary to honour `-s` (a kexec-tools that falls
back to the legacy kexec_load, or a wrapper, can place the new kernel inside a pmem region and
always loses a KHO handover). The kexec module loads through one host-side function that calls
kexec_file_load(2) itself and checks the kernel then has an image loaded, before anything pauses."""

import errno
import os
import shutil

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo, journal, kexec_load, luo
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kexec

from conftest import run_main
from test_kexec_luo import LUO_HOST, host as luo_host  # noqa: F401  # pylint: disable=unused-import


@pytest.fixture
def host(luo_host, monkeypatch):
    """The luo host of test_kexec_luo (where running any command fails the test: a kexec-tools that
    ignores -s and uses kexec_load would be one), with a good target, and the syscall stood in for."""
    shutil.copy(os.path.join(LUO_HOST, "boot/config-7.3.4-small1"), str(luo_host / "config-7.3.4-lu2"))
    monkeypatch.setattr(journal, "JOURNAL", str(luo_host / "journal.json"))
    state = {"loaded": False, "calls": [], "dir": luo_host}

    def file_load(kernel, initrd=None, cmdline=""):
        state["calls"].append((kernel, initrd, cmdline))
        state["loaded"] = True
    monkeypatch.setattr(luo, "kexec_file_load", file_load)
    monkeypatch.setattr(hostinfo, "kexec_loaded", lambda root="/": state["loaded"])
    return state


def args(h):
    return {"backend": "luo", "kernel": str(h["dir"] / "vmlinuz-7.3.4-lu2"),
            "initrd": str(h["dir"] / "initrd.img-7.3.4-lu2")}


def test_the_module_loads_with_kexec_file_load_itself_never_the_kexec_binary(host, capsys):
    rc, out = run_main(capsys, kexec, args(host))
    assert rc == 0, out.get("msg")
    assert host["calls"] == [(str(host["dir"] / "vmlinuz-7.3.4-lu2"), str(host["dir"] / "initrd.img-7.3.4-lu2"),
                              out["cmdline"])]
    assert out["load_syscall"] == "kexec_file_load"


def test_a_refused_load_says_why_and_changed_nothing(host, capsys, monkeypatch):
    def refused(kernel, initrd=None, cmdline=""):
        raise luo.LuoError("kexec_file_load", errno.EKEYREJECTED, kernel)
    monkeypatch.setattr(luo, "kexec_file_load", refused)
    rc, out = run_main(capsys, kexec, args(host))
    assert rc == 1 and "signature was rejected" in out["msg"] and "nothing is paused" in out["msg"]


def test_a_load_the_kernel_does_not_show_is_refused(monkeypatch):
    monkeypatch.setattr(luo, "kexec_file_load", lambda kernel, initrd=None, cmdline="": None)
    monkeypatch.setattr(hostinfo, "kexec_loaded", lambda root="/": False)
    with pytest.raises(luo.LuoError, match="kexec_loaded"):
        kexec_load.load_next_kernel("/boot/vmlinuz", "/boot/initrd", "root=/dev/vda1")


def test_a_save_that_begins_as_the_kernel_loads_keeps_its_phase(host, capsys, monkeypatch):
    # Two runs of one host at once: the other run's save began (journal saving) after this load read
    # the journal idle. Noting the loaded kernel must not set the phase back to preflight.
    journal.update_journal(journal.phase_update("saving", update_id="the-other-run"))
    load_journal = kexec.hostupdate.load_journal
    reads = []

    def read_before_the_save_began():
        reads.append(1)
        return {} if len(reads) == 1 else load_journal()
    monkeypatch.setattr(kexec.hostupdate, "load_journal", read_before_the_save_began)
    rc, out = run_main(capsys, kexec, args(host))
    assert rc == 0, out.get("msg")
    j = journal.load_journal()
    assert j["phase"] == "saving" and j["update_id"] == "the-other-run"
    assert j["kexec_target"]["kernel"] == args(host)["kernel"]
