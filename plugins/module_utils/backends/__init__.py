# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Memory backends: where a VM's RAM lives and how it survives kexec. One file per backend."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.guestmemfs import GuestmemfsBackend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.luo import LuoBackend
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.pmem import PmemBackend

BACKENDS = dict((cls.name, cls) for cls in (PmemBackend, GuestmemfsBackend, LuoBackend))


def get_backend(name):
    """The backend class for ``name``; ValueError naming the known ones otherwise."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError("unknown memory backend %r: use one of %s" % (name, ", ".join(sorted(BACKENDS))))
