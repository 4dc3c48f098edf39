"""One contract for every registered backend: each hook behaves as its callers (modules, roles,
templates, the host agent) assume, on the recorded hosts in fixtures/. A new backend fails here
until it has a recorded host and keeps the contract."""

import json
import os

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, facts, journal, memfd_holder
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import BACKENDS, get_backend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.base import Backend, BackendError
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.units import GiB
from conftest import FIXTURES, ROOT, RealHostTouched

# Each backend's recorded host ready for a kexec (its memory where the backend keeps it, the
# handover prepared), and, where the backend has something to prepare, the same host before that.
HOSTS = {
    "pmem": {"ready": "trixie-fleet-host"},
    "guestmemfs": {"ready": "guestmemfs-fleet-host-active", "unprepared": "guestmemfs-fleet-host"},
    "luo": {"ready": "luo-host-kexec"},
}
MEM_DIR = "/mnt/vmmem"
RAM_4G_6G = [(0x100000000, 0x17FFFFFFF)]
SPEC_KEYS = {"name", "has_filesystem", "carves_out", "fstype", "requires_mount", "units", "vm_unit_wants",
             "verify_unit_wants", "memory_from_service", "prepares_handover", "handover_region_arg",
             "build_extra_options", "required_kernel_options", "vm_mem_path", "boot_units",
             "block_devices"}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    assert request.param in HOSTS, "backend %s: record a host for it in tests/unit/fixtures" % request.param
    return get_backend(request.param)


def ready(backend):
    return os.path.join(FIXTURES, HOSTS[backend.name]["ready"])


def vm(backend, tmp_path, name="vm1"):
    conf = {"name": name, "memory_bytes": backend.file_size(4 << 20), "backend": backend.name,
            "mem_path": backend.vm_mem_path(name, MEM_DIR), "state": str(tmp_path / (name + ".state")),
            "qmp": str(tmp_path / (name + ".qmp"))}
    return cpr.VM(conf)


@pytest.fixture
def quiet_holder(monkeypatch, tmp_path):
    """The journal under tmp_path; every memfd holder request recorded, none sent."""
    monkeypatch.setattr(journal, "JOURNAL", str(tmp_path / "journal.json"))
    calls = []

    def request(op, **fields):
        calls.append((op, fields))
        return {"tokens": dict((n, i + 1) for i, n in enumerate(fields.get("names") or [])), "vms": {}}
    monkeypatch.setattr(memfd_holder, "request", request)
    return calls


def test_registered_under_its_name_with_its_data(backend):
    assert type(backend).name == backend.name and isinstance(backend, Backend)
    spec = backend.spec()
    assert set(spec) == SPEC_KEYS and spec["name"] == backend.name
    assert spec["requires_mount"] == backend.has_filesystem
    # The template, filled in, is where the backend puts a VM's RAM.
    filled = spec["vm_mem_path"].replace("{mem_dir}", "/srv/mem").replace("{name}", "vm7")
    assert filled == backend.vm_mem_path("vm7", "/srv/mem")
    for unit in spec["units"] + spec["vm_unit_wants"] + spec["verify_unit_wants"] + spec["boot_units"]:
        assert os.path.exists(os.path.join(ROOT, "roles", "qemu_vm", "templates", unit + ".j2")), unit
    assert set(spec["vm_unit_wants"]) | set(spec["verify_unit_wants"]) <= set(spec["units"])
    # a boot-only unit is never started by the role, so nothing may wait for it
    assert not set(spec["boot_units"]) & (set(spec["units"]) | set(spec["vm_unit_wants"]) | set(spec["verify_unit_wants"]))
    # What facts reads covers what the backend asks of a kernel.
    assert all(set(alts) <= set(facts.KERNEL_OPTIONS) for alts in backend.required_kernel_options)
    # A backend whose memory its service makes implements that; one with a handover has a filesystem to hand over.
    assert (type(backend).service_memory is not Backend.service_memory) == backend.memory_from_service
    assert not backend.prepares_handover or backend.fstype
    assert not backend.takes_kho_scratch or "kho_scratch" in backend.cmdline_names


def test_boot_arguments_are_its_own_and_the_next_kernel_keeps_the_rest(backend):
    size = backend.file_size(GiB) if backend.size_align < GiB else backend.size_align
    args = backend.cmdline_args(size, RAM_4G_6G)
    assert args and all(backend.owns_arg(a) for a in args)
    running = ["root=/dev/vda1", "ro", "console=ttyS0"] + args
    nxt = backend.next_kernel_args(running)
    assert set(nxt) <= set(running) and running[:3] == [a for a in nxt if not backend.owns_arg(a)]


def test_recorded_host_has_its_kernel_options(backend):
    config = facts.gather(ready(backend))["kernel_config"]
    lacking = [alts for alts in backend.required_kernel_options if not any(config.get(a) in ("y", "m") for a in alts)]
    assert lacking == []


def test_mount_or_none(backend):
    if backend.has_filesystem:
        source, fstype, options = backend.mount_spec(MEM_DIR, "/dev/pmem0")
        assert fstype == backend.fstype and source and options
        assert backend.vm_mem_path("vm1", MEM_DIR).startswith(MEM_DIR + "/")
    else:
        with pytest.raises(BackendError):
            backend.mount_spec(MEM_DIR)
        assert not backend.vm_mem_path("vm1", MEM_DIR).startswith(MEM_DIR + "/")
    assert backend.vm_mem_path("vm1", MEM_DIR) == backend.vm_mem_path("vm1", MEM_DIR)


def test_preflight_passes_on_its_ready_host_and_refuses_before_it_is_prepared(backend):
    f = facts.gather(ready(backend), mount_point=MEM_DIR if backend.has_filesystem else None)
    assert backend.load_problems(f) == []
    assert backend.mount_problems({"mounted": True, "fstype": backend.fstype, "dax": True,
                                   "options": ["rw", "dax"]}, MEM_DIR) == []
    unprepared = HOSTS[backend.name].get("unprepared")
    if unprepared:
        assert backend.load_problems(facts.gather(os.path.join(FIXTURES, unprepared)))


def test_before_pause_and_abort_with_nothing_to_carry_touch_nothing(backend, quiet_holder):
    assert backend.before_pause([], "u1") == {}
    backend.abort({})
    backend.after_update({})
    assert quiet_holder == []


def test_the_guard_passes_a_prepared_host_and_refuses_an_unprepared_one(backend, tmp_path, quiet_holder):
    vms = [vm(backend, tmp_path)]
    tokens = backend.before_pause(vms, "u1")
    assert set(tokens) <= {"vm1"}
    j = {"vms": {"vm1": {"state": "saved"}}, "luo": {"boot_id": journal.boot_id(), "tokens": tokens or None}}
    assert backend.kexec_problems(vms, j, ready(backend)) == []
    unprepared = HOSTS[backend.name].get("unprepared")
    if unprepared:
        assert backend.kexec_problems(vms, j, os.path.join(FIXTURES, unprepared))
    if tokens:  # what it prepared, it must have to kexec
        assert backend.kexec_problems(vms, dict(j, luo={}), ready(backend))


def test_the_kexec_is_journaled_and_goes_one_way_without_the_shutdown_never_to_the_real_host(backend, tmp_path, quiet_holder):
    runs = []
    j = {"vms": {"vm1": {"state": "saved"}}}
    try:
        err = backend.kexec([vm(backend, tmp_path)], j, lambda argv: runs.append(argv) or 0, ready(backend))
        rebooted = False
    except RealHostTouched:  # reboot(2) itself: the tests' guard stopped it
        err, rebooted = None, True
    assert err is None
    assert journal.load_journal()["phase"] == "kexec"
    # Every backend skips systemd's orderly shutdown (issue 20): reboot(2) here, or from the holder.
    assert runs == []
    ways = [quiet_holder == [("kexec", {})], rebooted]
    assert ways.count(True) == 1 and quiet_holder in ([], [("kexec", {})])


def test_a_vm_off_its_backends_mount_is_not_refused_a_start(backend, tmp_path):
    conf = {"name": "vm1", "memory_bytes": 4 << 20, "backend": backend.name, "mem_path": str(tmp_path / "vm1.ram")}
    assert backend.start_refusal(cpr.VM(conf), ready(backend)) is None


def test_a_vm_configuration_names_its_backend(backend, tmp_path):
    conf = vm(backend, tmp_path).conf
    (tmp_path / "vm1.json").write_text(json.dumps(conf))
    loaded = cpr.VM.load("vm1", str(tmp_path))
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import backend_of
    assert backend_of(loaded).name == backend.name


def test_sizing_asks_its_scratch_rule_on_its_recorded_host(backend):
    f = facts.gather(ready(backend))
    host = {"memory_bytes": f["memory"]["firmware_ram_bytes"], "firmware_ram_ranges": f["memory"]["firmware_ram_ranges"],
            "numa_nodes": len(f["memory"]["numa_nodes"]) or 1}
    scratch, source = backend.plan_scratch(host, {})
    assert isinstance(scratch, int) and scratch >= 0
    assert (source is not None) == backend.takes_kho_scratch == (scratch > 0)
