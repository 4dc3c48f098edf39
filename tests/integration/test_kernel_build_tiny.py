"""A real kernel build by the kernel_build module: Debian's linux-source-7.3 as the small LUO kernel
(tinyconfig + kvm_guest.config + liveupdate-small.config), packaged with bindeb-pkg. Checks the package, the required options in
the built config, that the same inputs do not build again, and that a required option that cannot
survive olddefconfig is reported with the dependency that dropped it.

The first build takes minutes; the tree is kept in the build
directory, so later runs rebuild incrementally. scripts/test runs this with
GUESTMEMFS_KERNEL_BUILD_DIR in its per-checkout cache and under nice/ionice.
Environment: GUESTMEMFS_KERNEL_TARBALL (else scripts/kernel-source fetches linux-source-7.3),
GUESTMEMFS_KERNEL_BUILD_DIR (else a temporary directory).
"""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
from _collection import importable_collection  # noqa: E402

importable_collection()

from ansible.module_utils.testing import patch_module_args  # noqa: E402
from ansible_collections.guestmemfs.liveupdate.plugins.modules import kernel_build  # noqa: E402

# The small LUO kernel: tinyconfig + kvm_guest.config + roles/kernel_build/files/liveupdate-small.config
# and fleet-small.config,
# with the kernel_build role's defaults for the luo backend. These are exactly the inputs molecule's
# luo scenario gives playbooks/kernel.yml for its first build (-small1), so with scripts/test's
# build directory one build serves this test, the LUO round trip (test_luo_roundtrip.py: memfds,
# a Python init, KHO's debugfs) and the scenario's fleet hosts; the others hash-skip.
SMALL = []
for _name in ("liveupdate-small.config", "fleet-small.config"):
    with open(os.path.join(ROOT, "roles", "kernel_build", "files", _name)) as _fh:
        SMALL += _fh.read().splitlines()
RELEASE_SUFFIX = "-small1"


@pytest.fixture(scope="module")
def tarball():
    path = os.environ.get("GUESTMEMFS_KERNEL_TARBALL")
    if not path:
        out = subprocess.run([os.path.join(ROOT, "scripts", "kernel-source")], check=True,
                             stdout=subprocess.PIPE, universal_newlines=True).stdout
        path = out.strip().splitlines()[-1]
    assert os.path.isfile(path), path
    return path


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return os.environ.get("GUESTMEMFS_KERNEL_BUILD_DIR") or str(tmp_path_factory.mktemp("kernel-tiny"))


def run(capsys, **args):
    t0 = time.time()
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            kernel_build.main()
    out = json.loads(capsys.readouterr().out)
    out["_seconds"] = time.time() - t0
    return exc.value.code, out


def tiny(build_dir, tarball, **more):
    args = dict(build_dir=build_dir, tarball=tarball, base_config="tinyconfig", config_targets=["kvm_guest.config"],
                config_options=SMALL, require_kho=True, backend="luo",
                required_options=["CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD", "CONFIG_KEXEC_HANDOVER_DEBUGFS"],
                package="bindeb-pkg", localversion=RELEASE_SUFFIX)
    args.update(more)
    return args


def test_tiny_build_packages_skips_and_explains(capsys, tarball, build_dir):
    # force: the tree may be kept from an earlier run, but the config, build and packaging run for real.
    rc, out = run(capsys, force=True, **tiny(build_dir, tarball))
    assert rc == 0, out.get("msg")
    with capsys.disabled():
        print("\ntiny build: %.0f s %s" % (out["_seconds"], out["timings"]))
    assert out["changed"] and out["built"]
    assert out["kernel_release"].endswith(RELEASE_SUFFIX) and out["kernel_release"].startswith("7.3.")
    image = os.path.basename(out["image_package"])
    assert image.startswith("linux-image-%s_" % out["kernel_release"]) and image.endswith(".deb")
    assert out["image_package"] in out["packages"] and all(os.path.isfile(p) for p in out["packages"])
    with open(out["config"]) as fh:
        config = fh.read().splitlines()
    for line in ("CONFIG_KEXEC_FILE=y", "CONFIG_KEXEC_HANDOVER=y", "CONFIG_LIVEUPDATE=y", "CONFIG_RELOCATABLE=y",
                 "CONFIG_LIVEUPDATE_MEMFD=y", "CONFIG_KEXEC_HANDOVER_DEBUGFS=y"):
        assert line in config
    for name in ("CONFIG_KEXEC_FILE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD"):
        assert out["required"][name] == "y", out["required"]
    contents = subprocess.run(["dpkg-deb", "-c", out["image_package"]], check=True, stdout=subprocess.PIPE,
                              universal_newlines=True).stdout
    assert "./boot/vmlinuz-%s" % out["kernel_release"] in contents
    assert os.path.getsize(out["vmlinuz"]) > 100000 and os.path.isfile(out["build_log"])

    # The same inputs: nothing is built, the earlier result comes back.
    rc, again = run(capsys, **tiny(build_dir, tarball))
    assert rc == 0 and again["changed"] is False and again["built"] is False
    assert again["packages"] == out["packages"] and again["kernel_release"] == out["kernel_release"]
    # What the skip cost is reported (hashing the inputs), not bounded here: speed is the benchmarks'.
    assert again["skipped_in_s"] >= 0
    with capsys.disabled():
        print("skipped rebuild: %.1f s" % again["_seconds"])
    rc, check = run(capsys, _ansible_check_mode=True, **tiny(build_dir, tarball))
    assert rc == 0 and check["changed"] is False

    # FS_DAX cannot survive on tinyconfig: the failure names what it depends on.
    rc, bad = run(capsys, **tiny(build_dir, tarball, required_options=["CONFIG_LIVEUPDATE", "CONFIG_FS_DAX=y"]))
    assert rc == 1 and bad["failed"]
    assert "CONFIG_FS_DAX wanted y, got n" in bad["msg"] and "depends on ZONE_DEVICE" in bad["msg"]
    assert "CONFIG_ZONE_DEVICE" in bad["dropped"][0]["unmet"][0]["unset"]
    assert "CONFIG_MEMORY_HOTREMOVE" in bad["msg"]
    # The failed attempt did not spoil the earlier result.
    rc, again = run(capsys, _ansible_check_mode=True, **tiny(build_dir, tarball))
    assert rc == 0 and again["changed"] is False
