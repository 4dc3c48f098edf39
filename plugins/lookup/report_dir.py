# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: report_dir
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
version_added: 0.2.0
short_description: The directory the playbooks write their reports into
description:
  - Returns C($GUESTMEMFS_REPORT_DIR) when it is set, else C(guestmemfs-report) in the directory the
    operator runs C(ansible-playbook) from (the controller's current working directory), as an absolute path.
  - A relative C($GUESTMEMFS_REPORT_DIR) is taken from that directory too, never from the playbook's own
    directory (inside an installed collection).
  - The playbooks' C(guestmemfs_report_dir) variable, given as an extra var, overrides it.
options: {}
"""

EXAMPLES = r"""
- name: Where the reports go
  ansible.builtin.debug:
    msg: "{{ lookup('guestmemfs.liveupdate.report_dir') }}"
"""

RETURN = r"""
_raw:
  description: The report directory, absolute.
  type: list
  elements: path
"""

import os

from ansible.plugins.lookup import LookupBase

ENV = "GUESTMEMFS_REPORT_DIR"
DEFAULT = "guestmemfs-report"


def report_dir(environ=None, cwd=None):
    """$GUESTMEMFS_REPORT_DIR, else ./guestmemfs-report, absolute from the controller's working directory."""
    environ = os.environ if environ is None else environ
    path = os.path.expanduser(environ.get(ENV) or DEFAULT)
    return os.path.normpath(os.path.join(cwd or os.getcwd(), path))


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [report_dir()]
