"""Roles, playbooks and unit templates ask a backend's needs as data (filter backend_spec) and the
backend list and default come from one registry (module_utils/backends)."""

import glob
import importlib
import os

import jinja2
import pytest
import yaml

from ansible_collections.guestmemfs.liveupdate.plugins.filter.backend_spec import backend_spec
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import BACKENDS, DEFAULT_BACKEND
from conftest import ROOT

TEMPLATES = os.path.join(ROOT, "roles", "qemu_vm", "templates")


def render(name, backend):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES))
    env.filters["guestmemfs.liveupdate.backend_spec"] = backend_spec
    return env.get_template(name).render(qemu_vm_backend=backend, qemu_vm_mem_dir="/mnt/vmmem",
                                         ansible_managed="managed")


def directives(text):
    return [line for line in text.splitlines() if line.startswith(("Wants=", "After=", "RequiresMountsFor="))]


ON_MOUNT = ["RequiresMountsFor=/var/lib/guestmemfs-liveupdate /mnt/vmmem"]
NO_MOUNT = ["RequiresMountsFor=/var/lib/guestmemfs-liveupdate"]


@pytest.mark.parametrize("backend, vm, verify", [
    ("pmem", ON_MOUNT, ON_MOUNT),
    ("guestmemfs", ON_MOUNT + ["Wants=guestmemfs-umount-guard.service", "After=guestmemfs-umount-guard.service"],
     ON_MOUNT),
    ("luo", NO_MOUNT + ["Wants=guestmemfs-luo.service", "After=guestmemfs-luo.service"],
     NO_MOUNT + ["Wants=guestmemfs-luo.service", "After=guestmemfs-luo.service"]),
])
def test_unit_templates_get_the_backends_units_as_data(backend, vm, verify):
    # Right after the backend's mount and what the agent writes to, not after basic.target nor after
    # the verify service (issue 20: the agent records the boot in whichever unit comes first).
    # Nor after systemd-tmpfiles-setup (measured: 5.2-5.3 s after the mount, on every boot and so
    # every VM's blackout, for a directory in /run their RuntimeDirectory= makes).
    vm_unit, verify_unit = render("guestmemfs-vm@.service.j2", backend), render("guestmemfs-verify.service.j2", backend)
    assert directives(vm_unit) == ["After=systemd-remount-fs.service", "Wants=guestmemfs-verify.service"] + vm
    assert directives(verify_unit) == ["After=systemd-remount-fs.service"] + verify
    for unit in (vm_unit, verify_unit):
        assert "DefaultDependencies=no" in unit and "Conflicts=shutdown.target" in unit
        assert "Before=shutdown.target" in unit
        assert RUNTIME_DIRECTORY in unit
        # PrivateTmp=yes would order it after systemd-tmpfiles-setup all the same (systemd's unit.c)
        assert not [line for line in unit.splitlines() if line.startswith("PrivateTmp=")]


RUNTIME_DIRECTORY = "RuntimeDirectory=guestmemfs-liveupdate\nRuntimeDirectoryMode=0700\nRuntimeDirectoryPreserve=yes\n"


def test_the_luo_holder_starts_as_early_as_the_vm_units_that_wait_for_it():
    # luo's VM units start after its holder: the holder after basic.target (its default dependencies)
    # or systemd-tmpfiles-setup would hold every luo VM's restore there. It needs a writable root,
    # the journal's directory and its /run directory; its shutdown ordering stays the default's.
    unit = render("guestmemfs-luo.service.j2", "luo")
    assert directives(unit) == ["After=systemd-remount-fs.service", NO_MOUNT[0]]
    assert "DefaultDependencies=no" in unit and "Conflicts=shutdown.target" in unit
    assert "Before=shutdown.target" in unit and "Before=guestmemfs-verify.service" in unit
    assert RUNTIME_DIRECTORY in unit


def test_the_default_backend_comes_from_the_registry():
    assert backend_spec(None)["name"] == backend_spec("")["name"] == DEFAULT_BACKEND
    for name in BACKENDS:
        assert backend_spec(name)["name"] == name
        for unit in backend_spec(name)["units"]:
            assert os.path.exists(os.path.join(TEMPLATES, unit + ".j2"))


def _module_backend_choices():
    out = {}
    for path in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")):
        name = os.path.basename(path)[:-3]
        module = importlib.import_module("ansible_collections.guestmemfs.liveupdate.plugins.modules." + name)
        if "\n  backend:" not in module.DOCUMENTATION:
            continue
        doc = yaml.safe_load(module.DOCUMENTATION)
        if "backend" in (doc.get("options") or {}):
            out[os.path.basename(path)] = doc["options"]["backend"].get("choices")
    return out


def test_every_modules_backend_choices_are_the_registry():
    choices = _module_backend_choices()
    assert choices, "no module documents a backend option"
    for module, c in choices.items():
        assert set(c) - {"none"} == set(BACKENDS), module


def test_every_role_argument_spec_lists_the_registry():
    seen = 0
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        with open(path) as fh:
            spec = yaml.safe_load(fh)
        for entry in spec["argument_specs"].values():
            for name, opt in (entry.get("options") or {}).items():
                if name.endswith("_backend") or name.endswith("_backend_name"):
                    seen += 1
                    assert set(opt["choices"]) - {"none"} == set(BACKENDS), (path, name)
    assert seen >= 3


def test_no_yaml_repeats_the_default_backend():
    for pattern in ("roles/*/defaults/*.yml", "roles/*/tasks/*.yml", "playbooks/*.yml"):
        for path in glob.glob(os.path.join(ROOT, pattern)):
            with open(path) as fh:
                text = fh.read()
            assert "default('%s')" % DEFAULT_BACKEND not in text and 'default("%s")' % DEFAULT_BACKEND not in text, path
