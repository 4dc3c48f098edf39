# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the planners' bulk work over a whole fleet."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import gc


@contextlib.contextmanager
def no_cyclic_gc():
    """Pause Python's cyclic garbage collector while a planner builds its rows.

    A plan of 100,000 hosts makes millions of small dicts and lists and no reference cycles; the
    collector would walk all of them again and again as they pile up (about half the planners'
    time at that size). Reference counting still frees everything; the collector runs again after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
