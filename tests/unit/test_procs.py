"""procs.users on real processes: a memfd reached through a /proc/<pid>/fd link (the luo
backend's path) is found in the process that maps it, by identity, whatever its name."""

import mmap
import os
import subprocess
import sys

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")

MAPPER = "import mmap,os,sys; f=open(sys.argv[1],'r+b'); m=mmap.mmap(f.fileno(),0); f.close(); " \
         "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"


@pytest.fixture
def memfd_link(tmp_path):
    fd = os.memfd_create("", 0)  # empty name, like a memfd retrieved after a live update
    os.ftruncate(fd, 1 << 20)
    link = tmp_path / "vm1"
    os.symlink("/proc/%d/fd/%d" % (os.getpid(), fd), str(link))
    yield str(link)
    os.close(fd)


def test_mapper_found_by_identity_holder_only_when_asked(memfd_link):
    p = subprocess.Popen([sys.executable, "-c", MAPPER, memfd_link], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        mapped = [pid for pid, _c, _p in users(memfd_link, mapped_only=True)]
        assert mapped == [p.pid]
        holding = [pid for pid, _c, _p in users(memfd_link)]
        assert os.getpid() in holding and p.pid in holding
    finally:
        p.stdin.close()
        p.wait()
    assert [pid for pid, _c, _p in users(memfd_link, mapped_only=True)] == []


def test_another_memfd_of_the_same_name_is_not_a_user(memfd_link):
    other = os.memfd_create("", 0)
    os.ftruncate(other, 4096)
    m = mmap.mmap(other, 4096)
    try:
        assert users(memfd_link, mapped_only=True) == []
    finally:
        m.close()
        os.close(other)
