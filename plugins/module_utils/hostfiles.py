# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module's view of the host's files under ``root`` (``/``, or a recorded tree in tests), with
its commands and failures going through the module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os


class HostFiles(object):
    def __init__(self, module):
        self.module = module
        self.root = module.params["root"]

    def path(self, p):
        return os.path.join(self.root, p.lstrip("/"))

    def read(self, p):
        try:
            with open(self.path(p)) as fh:
                return fh.read()
        except (IOError, OSError):
            return None

    def write(self, p, text):
        """Replace a file atomically, or remove it when ``text`` is None."""
        real = self.path(p)
        if text is None:
            if os.path.exists(real):
                os.unlink(real)
            return
        if not os.path.isdir(os.path.dirname(real)):
            os.makedirs(os.path.dirname(real), 0o755)
        tmp = real + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        self.module.atomic_move(tmp, real)

    def run(self, cmd, **kw):
        rc, out, err = self.module.run_command(cmd, **kw)
        return rc, out, err

    def fail(self, msg, **kw):
        self.module.fail_json(msg=msg, **kw)
