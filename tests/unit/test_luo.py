"""The pure parts of module_utils/luo.py: ioctl numbers and struct layouts as Linux 7.3's
include/uapi/linux/liveupdate.h defines them, and what the errors tell an operator. The calls
themselves run against a real kernel in tests/integration/test_luo_roundtrip.py."""

import errno
import os

import pytest

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import luo


def test_ioctl_numbers_are_plain_io_of_type_0xba():
    # _IO(0xBA, nr): no direction and no size bits.
    assert luo.CREATE_SESSION == 0xBA00
    assert luo.RETRIEVE_SESSION == 0xBA01
    assert luo.PRESERVE_FD == 0xBA40
    assert luo.RETRIEVE_FD == 0xBA41
    assert luo.FINISH == 0xBA42
    assert luo.GET_NAME == 0xBA43


def test_struct_sizes_match_the_uapi():
    assert luo.SESSION_STRUCT.size == 72
    assert luo.FD_STRUCT.size == 16
    assert luo.FINISH_STRUCT.size == 8
    assert luo.GET_NAME_STRUCT.size == 72


def test_session_struct_layout():
    buf = luo.pack_session("vm-7")
    assert len(buf) == 72
    assert bytes(buf[:4]) == (72).to_bytes(4, "little")
    assert bytes(buf[4:8]) == (-1).to_bytes(4, "little", signed=True)
    assert bytes(buf[8:12]) == b"vm-7" and set(buf[12:]) == {0}
    assert isinstance(buf, bytearray)  # the kernel writes the fd back into it


def test_fd_struct_layout_token_at_offset_8():
    buf = luo.pack_fd(5, 0x1122334455667788)
    assert bytes(buf) == ((16).to_bytes(4, "little") + (5).to_bytes(4, "little")
                          + (0x1122334455667788).to_bytes(8, "little"))
    assert luo.FD_STRUCT.unpack(bytes(luo.pack_fd(-1, 2 ** 64 - 1))) == (16, -1, 2 ** 64 - 1)


def test_finish_and_get_name_layout():
    assert bytes(luo.pack_finish()) == (8).to_bytes(4, "little") + b"\0" * 4
    raw = luo.pack_get_name()
    assert len(raw) == 72 and bytes(raw[:4]) == (72).to_bytes(4, "little") and set(raw[4:]) == {0}
    assert luo.unpack_name(b"abc\0\0\0junk") == "abc"


@pytest.mark.parametrize("name", ["", "x" * 64, "a\0b"])
def test_session_names_the_kernel_would_refuse(name):
    with pytest.raises(luo.LuoError) as exc:
        luo.pack_session(name)
    assert exc.value.errno == errno.EINVAL and "1 to 63 bytes" in str(exc.value)


def test_longest_name_fits_with_its_nul():
    buf = luo.pack_session("n" * 63)
    assert bytes(buf[8:71]) == b"n" * 63 and buf[71] == 0


@pytest.mark.parametrize("token", [-1, 2 ** 64])
def test_token_is_a_u64(token):
    with pytest.raises(luo.LuoError):
        luo.pack_fd(3, token)


def test_missing_device_says_how_to_boot(tmp_path):
    with pytest.raises(luo.LuoError) as exc:
        luo.Device(str(tmp_path / "liveupdate"))
    msg = str(exc.value)
    assert exc.value.errno == errno.ENOENT
    assert "kho=on liveupdate=on" in msg and "CONFIG_LIVEUPDATE" in msg


@pytest.mark.parametrize("op, err, words", [
    ("open", errno.EBUSY, "one opener at a time"),
    ("retrieve_session", errno.ENOENT, "closed before the kexec"),
    ("preserve", errno.ENOENT, "only unlinked shmem files"),
    ("preserve", errno.EINVAL, "created in this boot"),
    ("retrieve", errno.ENOENT, "no file with that token"),
    ("finish", errno.EINVAL, "retrieved in this boot"),
    ("reboot_kexec", errno.EINVAL, "kexec_file_load first"),
])
def test_errors_carry_errno_and_what_to_do(op, err, words):
    e = luo.LuoError(op, err, "session vm1")
    assert e.errno == err and e.op == op
    assert str(e).startswith("%s failed: [Errno %d] %s (session vm1): " % (op, err, os.strerror(err)))
    assert words in str(e)


def test_an_unknown_errno_still_reads():
    assert str(luo.LuoError("finish", errno.ENOMEM)) == "finish failed: [Errno %d] %s" % (
        errno.ENOMEM, os.strerror(errno.ENOMEM))


def test_hugetlb_memfd_is_refused_before_creating_it():
    with pytest.raises(luo.LuoError) as exc:
        luo.create_memfd("vm", 2 << 20, luo.MFD_HUGETLB)
    assert exc.value.errno == errno.EOPNOTSUPP and "hugetlb" in str(exc.value)


def test_memfd_has_the_exact_size():
    fd = luo.create_memfd("unit", 3 * 4096 + 5)
    try:
        assert os.fstat(fd).st_size == 3 * 4096 + 5
    finally:
        os.close(fd)


def test_kho_evidence_from_setup_data_and_debugfs(tmp_path):
    assert luo.kho_boot_evidence(str(tmp_path)) == []
    for entry, kind in (("0", "0x9"), ("1", "0xa")):
        d = tmp_path / "sys/kernel/boot_params/setup_data" / entry
        d.mkdir(parents=True)
        (d / "type").write_text(kind + "\n")
    assert luo.kho_boot_evidence(str(tmp_path)) == ["setup_data 1 type SETUP_KEXEC_KHO"]
    (tmp_path / "sys/kernel/debug/kho/in").mkdir(parents=True)
    assert luo.kho_boot_evidence(str(tmp_path))[-1] == "debugfs kho/in"
