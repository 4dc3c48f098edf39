"""The multiboot counting guest, for tests that need a fixed guest-physical address (the live
update's own tests run a real Linux guest: tests/fleet/guest/). A few bytes of code zero a counter at
guest-physical COUNTER_ADDR and then increment it forever: a VM that resumed shows a value at or
above the saved one, a VM that rebooted starts again from 0."""

import mmap
import os
import struct

COUNTER_ADDR = 0x200000
_LOAD = 0x100000


def counter_guest():
    """The test guest as a multiboot (a.out kludge) image: 32-byte header and 15 bytes of code."""
    magic, flags = 0x1BADB002, 0x00010000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         _LOAD, _LOAD, 0, 0, _LOAD + 32)
    code = (b"\xbf" + struct.pack("<I", COUNTER_ADDR)  # mov edi, COUNTER_ADDR
            + b"\xc7\x07\x00\x00\x00\x00"              # mov dword [edi], 0
            + b"\xff\x07"                              # loop: inc dword [edi]
            + b"\xeb\xfc")                             # jmp loop
    return header + code


def read_counter(mem_path):
    # Through a mapping from offset 0: a guestmemfs file has no read(), only mmap, and the RFC's mmap
    # ignores the offset asked for.
    fd = os.open(mem_path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, COUNTER_ADDR + mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            return struct.unpack_from("<I", m, COUNTER_ADDR)[0]
        finally:
            m.close()
    finally:
        os.close(fd)
