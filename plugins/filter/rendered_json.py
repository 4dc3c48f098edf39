# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data a template lookup rendered as JSON, on every ansible-core the collection supports:
2.19 on hand the lookup's text on as text; 2.17 and 2.18 turn text that looks like JSON into data
first (where ansible.builtin.from_json then fails)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence


def rendered_json(value):
    if isinstance(value, Mapping) or is_sequence(value):
        return value
    if not isinstance(value, str):
        raise AnsibleFilterError("rendered_json: JSON text or data, not %s" % type(value).__name__)
    try:
        return json.loads(value)
    except ValueError as exc:
        raise AnsibleFilterError("rendered_json: not JSON (%s): %s" % (exc, value[:200]))


class FilterModule(object):
    def filters(self):
        return {"rendered_json": rendered_json}
