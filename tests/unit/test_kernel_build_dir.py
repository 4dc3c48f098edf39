"""Issue 19, security: the kernel build directory is a predictable path in /var/tmp. It is created
root-only by the module itself (never through a symlink) and one that another user owns, that is a
symlink, or that others may write is refused before anything is written into it."""

import os
import stat

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import kernel_builder

from conftest import ROOT
from test_kernel_build import fake_tarball, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")


def build_args(tmp_path, build, **kw):
    args = dict(build_dir=str(build), tarball=fake_tarball(tmp_path), base_config="tinyconfig",
                _ansible_check_mode=True)
    args.update(kw)
    return args


def test_a_build_dir_owned_by_another_user_is_refused(tmp_path, capsys):
    build = tmp_path / "b"
    build.mkdir(mode=0o755)
    os.chown(str(build), 65534, 65534)
    for check in (True, False):
        rc, out = run(capsys, **build_args(tmp_path, build, _ansible_check_mode=check))
        assert rc == 1 and "owned by uid 65534" in out["msg"], out.get("msg")
    assert os.listdir(str(build)) == []


def test_a_build_dir_that_is_a_symlink_is_refused(tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "b").symlink_to(target)
    rc, out = run(capsys, **build_args(tmp_path, tmp_path / "b", _ansible_check_mode=False))
    assert rc == 1 and "symlink" in out["msg"]
    assert os.listdir(str(target)) == []


def test_a_build_dir_others_may_write_is_refused(tmp_path, capsys):
    build = tmp_path / "b"
    build.mkdir()
    os.chmod(str(build), 0o777)
    rc, out = run(capsys, **build_args(tmp_path, build))
    assert rc == 1 and "writable by others" in out["msg"]


def test_a_new_build_dir_is_created_owner_only(tmp_path):
    build = tmp_path / "new" / "b"
    assert kernel_builder.safe_build_dir(str(build), create=True) is None
    st = os.lstat(str(build))
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_the_role_leaves_creating_it_to_the_module():
    text = open(os.path.join(ROOT, "roles", "kernel_build", "tasks", "main.yml")).read()
    assert "Create the build directory" not in text
