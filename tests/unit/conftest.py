"""Make the collection importable as ansible_collections.guestmemfs.liveupdate from this checkout,
so plain pytest runs the unit tests without installing the collection."""

import atexit
import contextlib
import os
import shutil
import struct
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

_tree = tempfile.mkdtemp(prefix="glu-collections-")
os.makedirs(os.path.join(_tree, "ansible_collections", "guestmemfs"))
os.symlink(ROOT, os.path.join(_tree, "ansible_collections", "guestmemfs", "liveupdate"))
sys.path.insert(0, _tree)
atexit.register(shutil.rmtree, _tree, True)  # removes the symlink, never what it points at
sys.path.insert(0, os.path.join(ROOT, "tests", "fleet"))


AGENT_TEMPLATE = os.path.join(ROOT, "roles", "qemu_vm", "templates", "agent.j2")


def rendered_agent(path):
    """The agent script as the qemu_vm role installs it (agent.j2), written to ``path``, its
    collection path pointed at this checkout's tree. -> path"""
    with open(AGENT_TEMPLATE) as fh:
        text = fh.read().replace("{{ ansible_managed }}", "rendered for the tests")
    assert '"/usr/lib/guestmemfs-liveupdate"' in text
    with open(path, "w") as fh:
        fh.write(text.replace('"/usr/lib/guestmemfs-liveupdate"', repr(_tree)))
    return str(path)


_AGENT_SCRIPT = rendered_agent(os.path.join(_tree, "agent"))


def installed_agent(argv):
    """Run the installed agent script with ``argv`` in this process (the tests' patches apply):
    what ``python3 /usr/lib/guestmemfs-liveupdate/agent ARGV...`` exits with."""
    import runpy

    old = sys.argv
    sys.argv = [_AGENT_SCRIPT] + list(argv)
    try:
        runpy.run_path(_AGENT_SCRIPT, run_name="__main__")
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = old
    raise AssertionError("the agent script ended without sys.exit")


def bzimage(path, version):
    """The first bytes of a bzImage: the setup header's magic and version pointer (boot protocol)."""
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = struct.pack("<H", 0x300 - 0x200)
    text = version.encode() + b"\0"
    data[0x300:0x300 + len(text)] = text
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def _module_args_before_2_19(args):
    """ansible-core 2.17 and 2.18 (scripts/test runs tests on the lowest claimed) read a module's
    arguments from basic._ANSIBLE_ARGS; 2.19 on give patch_module_args for it."""
    import json

    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    old, basic._ANSIBLE_ARGS = basic._ANSIBLE_ARGS, to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    try:
        yield
    finally:
        basic._ANSIBLE_ARGS = old


def run_main(capsys, module, args):
    """Run a module's main() with ``args``: (exit code, its JSON result)."""
    import json

    import pytest
    try:
        from ansible.module_utils.testing import patch_module_args
    except ImportError:
        patch_module_args = _module_args_before_2_19

    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            module.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "min_core: also run on the lowest ansible-core the collection claims (scripts/test; every "
        "playbook on its main paths there, the rest on the newest; GUESTMEMFS_MIN_CORE_FULL=1 runs all)")


class RealHostTouched(AssertionError):
    """A unit test reached the real kexec, reboot(2) or the running host's kexec state."""


def _no_real_kexec(*args, **kwargs):
    raise RealHostTouched("a unit test reached reboot(2) or kexec_file_load(2) (load or unload) of the machine "
                          "running it")


@pytest.fixture(autouse=True)
def no_real_host_kexec(monkeypatch, tmp_path_factory):
    """Every unit test: the reboot/kexec syscall entry points raise, the host agent reads the
    kernel's kexec state (kexec_loaded, mounts, KHO) under an empty tree unless the test gives one,
    and its update lock, its events and its metrics textfile are files of the test's own."""
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import events, hostupdate, luo, metrics
    monkeypatch.setattr(luo, "reboot", _no_real_kexec)
    monkeypatch.setattr(luo, "kexec_file_load", _no_real_kexec)
    monkeypatch.setattr(luo, "kexec_unload", _no_real_kexec)
    monkeypatch.setattr(hostupdate, "ROOT", str(tmp_path_factory.mktemp("empty-host-root")))
    monkeypatch.setattr(hostupdate, "UPDATE_LOCK", str(tmp_path_factory.mktemp("run") / "update.lock"))
    monkeypatch.setattr(events, "EVENTS", str(tmp_path_factory.mktemp("events") / "events.jsonl"))
    monkeypatch.setattr(metrics, "CONFIG", str(tmp_path_factory.mktemp("etc") / "metrics.json"))
    monkeypatch.setattr(metrics, "DEFAULT_DIR", str(tmp_path_factory.mktemp("textfile_collector")))
