# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loading the next kernel, with the kernel's own proof that it is loaded. Apart from luo.py, which
must stay free of the collection's other modules: the LUO round-trip VM runs it on its own."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostinfo, luo


def load_next_kernel(kernel, initrd, cmdline, root="/"):
    """The one load of the next kernel for every backend: kexec_file_load(2) from this process, never
    a ``kexec`` binary (a kexec-tools that falls back to the legacy kexec_load, or a wrapper, can put
    the new kernel inside a pmem region and always loses a KHO handover), then proof from the kernel
    that an image is loaded. Returns the seconds the load took; luo.LuoError says why it failed (nothing
    is paused: the load comes before any VM pauses)."""
    t0 = time.monotonic()
    luo.kexec_file_load(kernel, initrd, cmdline)
    took = time.monotonic() - t0
    if hostinfo.kexec_loaded(root) is not True:
        raise luo.LuoError("kexec_file_load", errno.EIO, "it returned 0 but %s does not read 1" % hostinfo.KEXEC_LOADED)
    return took
