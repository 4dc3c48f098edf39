"""A VM's CPU quota, set at run time (module_utils/cpu_quota): the exact systemctl argv, and `agent
cpu-quota`'s comparison with what the VM's cgroup enforces (a cgroup tree under tmp_path)."""

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpu_quota

CG = "/system.slice/system-guestmemfs\\x2dvm.slice/guestmemfs-vm@%s.service"


def test_the_quota_is_set_and_lifted_until_the_next_boot_only():
    assert cpu_quota.set_property_argv("web1", "20%") == [
        "systemctl", "set-property", "--runtime", "guestmemfs-vm@web1.service", "CPUQuota=20%"]
    assert cpu_quota.set_property_argv("web1", None) == [
        "systemctl", "set-property", "--runtime", "guestmemfs-vm@web1.service", "CPUQuota="]


def test_a_vm_without_a_quota_is_never_touched():
    calls = []
    assert cpu_quota.apply(calls.append, {"name": "web1", "cpu_quota": None}) is None
    assert cpu_quota.lift(calls.append, {"name": "web1"}) is None
    assert calls == []


def test_a_quota_that_cannot_be_set_is_said_not_raised():
    assert cpu_quota.apply(lambda argv: 1, {"name": "web1", "cpu_quota": "20%"}) == (
        "systemctl set-property --runtime guestmemfs-vm@web1.service CPUQuota=20%: rc 1")

    def missing(argv):
        raise OSError("No such file or directory: 'systemctl'")
    assert "No such file" in cpu_quota.lift(missing, {"name": "web1", "cpu_quota": "20%"})


@pytest.fixture
def cgroups(tmp_path):
    """VM cgroups with the given cpu.max; run_out answers systemctl show ControlGroup like systemd."""
    calls = []

    def make(**cpu_max):
        for name, text in cpu_max.items():
            d = tmp_path / CG.lstrip("/").replace("%s", name)
            d.mkdir(parents=True)
            (d / "cpu.max").write_text(text + "\n")

        def run_out(argv):
            name = argv[-1][len("guestmemfs-vm@"):-len(".service")]
            assert argv == ["systemctl", "show", "--value", "--property=ControlGroup", "guestmemfs-vm@%s.service" % name]
            return (0, CG % name + "\n", "") if name in cpu_max else (1, "", "Unit not loaded.")

        def run(argv):
            calls.append(argv)
            return 0
        return run, run_out
    make.calls, make.root = calls, str(tmp_path)
    return make


def conf(name, quota):
    return {"name": name, "cpu_quota": quota}


def test_only_running_vms_whose_cgroup_does_not_enforce_their_quota_get_it(cgroups):
    run, run_out = cgroups(lost="max 100000", kept="20000 100000", changed="50000 100000", stopped="max 100000")
    out = cpu_quota.keep(run, run_out, [conf("lost", "20%"), conf("kept", "20%"), conf("changed", "20%"),
                                        conf("stopped", "20%"), conf("free", None)],
                         running={"lost", "kept", "changed", "free"}, cgroup_root=cgroups.root)
    assert out == {
        "lost": (True, "lost: CPUQuota=20% set (was no limit)"),
        "kept": (False, "kept: CPUQuota=20% (enforced)"),
        "changed": (True, "changed: CPUQuota=20% set (was 50%)"),
    }
    assert cgroups.calls == [cpu_quota.set_property_argv("lost", "20%"), cpu_quota.set_property_argv("changed", "20%")]


def test_a_quota_above_one_cpu_is_read_as_systemd_writes_it(cgroups):
    run, run_out = cgroups(big="150000 100000")
    assert cpu_quota.keep(run, run_out, [conf("big", "150%")], {"big"}, cgroup_root=cgroups.root) == {
        "big": (False, "big: CPUQuota=150% (enforced)")}


def test_an_unreadable_cgroup_is_set_again_and_said(cgroups):
    run, run_out = cgroups()
    out = cpu_quota.keep(run, run_out, [conf("ghost", "20%")], {"ghost"}, cgroup_root=cgroups.root)
    assert out["ghost"][0] is True
    assert out["ghost"][1].startswith("ghost: CPUQuota=20% set (was unknown: systemctl show") and "Unit not loaded" in out["ghost"][1]


def test_a_quota_not_set_is_reported(cgroups):
    _run, run_out = cgroups(lost="max 100000")
    out = cpu_quota.keep(lambda argv: 1, run_out, [conf("lost", "20%")], {"lost"}, cgroup_root=cgroups.root)
    assert out == {"lost": (False, "lost: CPUQuota=20% NOT set (was no limit): systemctl set-property --runtime "
                                   "guestmemfs-vm@lost.service CPUQuota=20%: rc 1")}
