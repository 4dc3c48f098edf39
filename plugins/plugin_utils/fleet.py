# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few variables and facts the planners need from every host of a large inventory, read once.

``hostvars[host]`` builds and templates all of a host's variables (2 to 5 ms a host, most of the
time of a 10,000-host plan). The planners need a handful of them: each host's variables are read
raw, once, and only the wanted ones are templated; a value that several hosts share (a group
variable: the same object for each of its hosts) is converted once when it holds no template.
Facts come from Ansible (gathered in this run or read from its fact cache) or from a facts file
gathered earlier, so a plan can be made without contacting any host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
from collections.abc import Mapping

from ansible.errors import AnsibleError
from ansible.module_utils.common.collections import is_sequence

try:
    from ansible.template import Templar
    from ansible.vars.hostvars import HostVarsVars
except ImportError:  # pragma: no cover - older ansible-core: every look-up goes through hostvars[host]
    Templar = HostVarsVars = None


def plain(value):
    """Variables as plain dicts, lists and strings (they come as Ansible's lazy or tagged containers)."""
    if isinstance(value, Mapping):
        return dict((str(k), plain(v)) for k, v in value.items())
    if is_sequence(value):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


class FleetVars(object):
    """Reads ``wanted`` variables of hosts from ``hostvars`` (Ansible's hostvars object)."""

    def __init__(self, hostvars, wanted):
        self.hostvars = hostvars
        self.wanted = tuple(wanted)
        self._raw_get = getattr(hostvars, "raw_get", None)
        self._loader = getattr(hostvars, "_loader", None)
        self._fast = self._raw_get is not None and HostVarsVars is not None
        self._templar = Templar(loader=self._loader) if self._fast else None
        self._shared = {}  # id(raw value) -> (raw value, its plain form or None when it holds a template)

    def raw(self, name):
        """All of the host's variables, untemplated (facts included, as ansible_facts)."""
        if name not in self.hostvars:
            raise AnsibleError("%s is not in the inventory" % name)
        if self._fast:
            data = self._raw_get(name)
            if isinstance(data, Mapping):
                return data
        return None

    def get(self, name, data=None):
        """{variable: plain value} of the wanted variables the host has."""
        if not self._fast:
            hv = self.hostvars[name]
            return dict((v, plain(hv[v])) for v in self.wanted if v in hv)
        if data is None:
            data = self.raw(name)
        out, templated = {}, None
        for v in self.wanted:
            if v not in data:
                continue
            raw = data[v]
            seen = self._shared.get(id(raw))
            if seen is None or seen[0] is not raw:
                seen = (raw, None if self._templar.is_template(raw) else plain(raw))
                self._shared[id(raw)] = seen  # holds the value, so that its id stays its own
            if seen[1] is not None:
                out[v] = seen[1]
            else:
                if templated is None:
                    templated = HostVarsVars(data, loader=self._loader, host=name)
                out[v] = plain(templated[v])
        return out


def read_facts_file(path):
    """A facts file -> {host: facts}: JSON or YAML, {host: ansible_facts} (the facts as a module
    returned them, e.g. {guestmemfs: {...}}), or an export of hostvars ({host: {ansible_facts: ...}})."""
    if not os.path.isfile(path):
        raise AnsibleError("facts file %s: no such file" % path)
    with open(path, "rb") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError:
        import yaml
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise AnsibleError("facts file %s is neither JSON nor YAML: %s" % (path, exc))
    if not isinstance(data, dict):
        raise AnsibleError("facts file %s: expected a mapping of host names to their facts" % path)
    return dict((str(h), (f.get("ansible_facts") if isinstance(f, dict) and "ansible_facts" in f else f) or {})
                for h, f in data.items())


def host_facts(data, key):
    """One fact (e.g. guestmemfs) from a host's raw variables: ansible_facts, then the injected name."""
    facts = data.get("ansible_facts") if data is not None else None
    if isinstance(facts, Mapping) and key in facts:
        return facts[key]
    return (data or {}).get("ansible_" + key)
