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

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import replace_file

try:
    from ansible.template import Templar
    from ansible.vars.hostvars import HostVarsVars
except ImportError:  # pragma: no cover - older ansible-core: every look-up goes through hostvars[host]
    Templar = HostVarsVars = None

try:
    from ansible.vars import manager as _manager
except ImportError:  # pragma: no cover
    _manager = None
# The variable manager's cleaning of a host's facts: its own function from 2.19 on, clean_facts before.
_CLEAN_FACTS = next((n for n in ("_clean_and_deprecate_top_level_facts", "clean_facts") if hasattr(_manager, n)), None)


def plain(value):
    """Variables as plain dicts, lists and strings (they come as Ansible's lazy or tagged containers)."""
    if isinstance(value, Mapping):
        return dict((str(k), plain(v)) for k, v in value.items())
    if is_sequence(value):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


_MISSING = object()


class _NoFacts(object):
    """Stands in for Ansible's fact cache while a host's variables are read: no facts. ansible-core
    2.19 on asks get(host) and catches KeyError; 2.17 and 2.18 ask get(host, default)."""

    def get(self, key, default=_MISSING):
        if default is _MISSING:
            raise KeyError(key)
        return default


def _clean_no_facts(clean):
    """Ansible's cleaning of a host's facts, which for no facts at all gives none: it lists every
    connection plugin on disk each time (half the time of a host's variables)."""
    def clean_facts(facts):
        return {} if not facts else clean(facts)
    return clean_facts


# Inventory and connection variables that start with ansible_ but are no facts.
_NOT_FACTS = ("ansible_host", "ansible_port", "ansible_user", "ansible_connection", "ansible_ssh_host")


def _host_vars_vars(data, loader, host):
    """Ansible's templating view of one host's variables (2.19 on name the host; 2.17, 2.18 cannot)."""
    try:
        return HostVarsVars(data, loader=loader, host=host)
    except TypeError:
        return HostVarsVars(data, loader=loader)


class FleetVars(object):
    """Reads ``wanted`` variables of hosts from ``hostvars`` (Ansible's hostvars object).

    Unless one of them may be a fact (ansible_facts or a name that starts with ansible_), the
    host's facts are left out of its variables: Ansible reads and cleans every fact of the host
    for them (half the time of a host's variables, more with full facts). ``facts(host)`` gives the
    facts themselves, as Ansible has them (gathered in this run or in its fact cache)."""

    def __init__(self, hostvars, wanted):
        self.hostvars = hostvars
        self.wanted = tuple(wanted)
        self._raw_get = getattr(hostvars, "raw_get", None)
        self._loader = getattr(hostvars, "_loader", None)
        vm = getattr(hostvars, "_variable_manager", None)
        self._fact_cache = getattr(vm, "_fact_cache", None)
        self._vm = vm if self._fact_cache is not None and not any(
            v == "ansible_facts" or (v.startswith("ansible_") and v not in _NOT_FACTS) for v in self.wanted) else None
        self._fast = self._raw_get is not None and HostVarsVars is not None
        self._clean = getattr(_manager, _CLEAN_FACTS) if self._vm is not None and _CLEAN_FACTS else None
        self._clean_none = _clean_no_facts(self._clean) if self._clean is not None else None
        self._templar = Templar(loader=self._loader) if self._fast else None
        self._shared = {}  # id(raw value) -> (raw value, its plain form or None when it holds a template)

    def raw(self, name):
        """All of the host's variables, untemplated (facts included, as ansible_facts)."""
        if name not in self.hostvars:
            raise AnsibleError("%s is not in the inventory" % name)
        if self._fast:
            if self._vm is not None:
                self._vm._fact_cache = _NoFacts()
                if self._clean is not None:
                    setattr(_manager, _CLEAN_FACTS, self._clean_none)
                try:
                    data = self._raw_get(name)
                finally:
                    self._vm._fact_cache = self._fact_cache
                    if self._clean is not None:
                        setattr(_manager, _CLEAN_FACTS, self._clean)
            else:
                data = self._raw_get(name)
            if isinstance(data, Mapping):
                return data
        return None

    def facts(self, name):
        """The host's facts as Ansible has them ({} when none), or None when they cannot be read
        apart from its variables."""
        if self._fact_cache is None:
            return None
        try:
            return self._fact_cache.get(name) or {}
        except KeyError:
            return {}

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
                    templated = _host_vars_vars(data, self._loader, name)
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


def write_files(directory, texts, mode=0o644):
    """{name: text} -> files in ``directory`` (created when missing), each written atomically and only
    when its content differs; the names written, sorted."""
    if not os.path.isdir(directory):
        os.makedirs(directory)
    written = []
    for name in sorted(texts):
        data = texts[name].encode("utf-8")
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        except OSError:
            pass
        replace_file(path, data, mode)
        written.append(name)
    return written
