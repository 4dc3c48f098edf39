"""The multiboot counting guest, for tests that need a fixed guest-physical address (the live
update's own tests run a real Linux guest: tests/fleet/guest/). A few bytes of code zero a counter at
guest-physical COUNTER_ADDR and then increment it 100 times a second, forever: a VM that resumed
shows a value at or above the saved one, a VM that rebooted starts again from 0.

It counts the PIT's ticks and halts in between, so a running one costs its host next to no CPU. It
used to count in a tight loop: under two levels of TCG every counting VM then took all the CPU its
quota gave it (20 % of a fleet host, for the whole run) from what the tests measure."""

import mmap
import os
import struct

COUNTER_ADDR = 0x200000
_LOAD = 0x100000
_ENTRY = _LOAD + 32
_IDT = 0x180000
TICKS_PER_S = 100


def counter_guest():
    """The test guest as a multiboot (a.out kludge) image: 32-byte header and 143 bytes of 32-bit code
    (multiboot enters in protected mode, flat segments, interrupts off). It takes the PIT's IRQ 0 at
    vector 0x20 through the 8259 (remapped off the exception vectors, every other IRQ masked) and an
    IDT of its own whose only present gate is 0x20; any exception is a triple fault, a reset."""
    magic, flags = 0x1BADB002, 0x00010000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         _LOAD, _LOAD, 0, 0, _ENTRY)
    handler, idtr = _ENTRY + 0x82, _ENTRY + 0x89  # offsets in the code below
    divisor = (1193182 + TICKS_PER_S // 2) // TICKS_PER_S  # the PIT's 1.193182 MHz
    code = (b"\xfa"                                            # cli
            + b"\xbc" + struct.pack("<I", 0x1F0000)            # mov esp, 0x1F0000 (a stack for the IRQ)
            + b"\xbf" + struct.pack("<I", COUNTER_ADDR)        # mov edi, COUNTER_ADDR
            + b"\xc7\x07\x00\x00\x00\x00"                     # mov dword [edi], 0
            + b"\xbf" + struct.pack("<I", _IDT)                # mov edi, _IDT
            + b"\x31\xc0"                                      # xor eax, eax
            + b"\xb9" + struct.pack("<I", 0x21 * 2)            # mov ecx, 0x42: gates 0-0x20 zeroed,
            + b"\xf3\xab"                                      # rep stosd      not present
            + b"\xb8" + struct.pack("<I", handler)             # mov eax, handler
            + b"\xbf" + struct.pack("<I", _IDT + 0x20 * 8)     # mov edi, gate 0x20
            + b"\x66\x89\x07"                                  # mov [edi], ax      offset 15:0
            + b"\x66\x8c\xcb"                                  # mov bx, cs
            + b"\x66\x89\x5f\x02"                              # mov [edi+2], bx   selector
            + b"\x66\xc7\x47\x04\x00\x8e"                      # mov word [edi+4], 0x8E00: present,
            + b"\xc1\xe8\x10"                                  # shr eax, 16        32-bit interrupt gate
            + b"\x66\x89\x47\x06"                              # mov [edi+6], ax   offset 31:16
            + b"\x0f\x01\x1d" + struct.pack("<I", idtr)        # lidt [idtr]
            # 8259s: ICW1 (edge, ICW4), ICW2 bases 0x20/0x28, ICW3 cascade, ICW4 8086; then mask all but IRQ 0
            + b"\xb0\x11\xe6\x20\xe6\xa0"                      # mov al, 0x11; out 0x20, al; out 0xA0, al
            + b"\xb0\x20\xe6\x21\xb0\x28\xe6\xa1"              # out 0x21, 0x20; out 0xA1, 0x28
            + b"\xb0\x04\xe6\x21\xb0\x02\xe6\xa1"              # out 0x21, 0x04; out 0xA1, 0x02
            + b"\xb0\x01\xe6\x21\xe6\xa1"                      # out 0x21, 0x01; out 0xA1, 0x01
            + b"\xb0\xfe\xe6\x21\xb0\xff\xe6\xa1"              # out 0x21, 0xFE; out 0xA1, 0xFF
            # PIT channel 0: mode 2 (rate generator), lobyte/hibyte, TICKS_PER_S a second
            + b"\xb0\x34\xe6\x43"                              # out 0x43, 0x34
            + b"\xb0" + struct.pack("<B", divisor & 0xFF) + b"\xe6\x40"   # out 0x40, low byte
            + b"\xb0" + struct.pack("<B", divisor >> 8) + b"\xe6\x40"     # out 0x40, high byte
            + b"\xbf" + struct.pack("<I", COUNTER_ADDR)        # mov edi, COUNTER_ADDR
            + b"\xfb\xf4"                                      # loop: sti; hlt (until the next tick)
            + b"\xff\x07"                                      # inc dword [edi]
            + b"\xeb\xfa"                                      # jmp loop
            + b"\x50\xb0\x20\xe6\x20\x58\xcf"                  # handler: push eax; EOI; pop eax; iret
            + struct.pack("<HI", 0x21 * 8 - 1, _IDT))           # idtr: limit, base
    assert len(code) == 0x8F and code[0x7C] == 0xFB and code[0x82] == 0x50  # loop, handler where named
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
