# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operator's value may hold before it reaches a unit file, an argv or a path: the roles
check each of their variables with these rules (filter ``unsafe_values``) before anything changes.
A newline would add directives to a unit, ``%`` is a systemd specifier, a leading ``-`` is read as
an option, whitespace splits a unit's path list or an fstab line, ``..`` leaves the tree meant."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RULES = {
    # An absolute path: letters, digits and . _ @ + , : = ~ - between slashes; no '..' component.
    "path": (re.compile(r"^/[A-Za-z0-9._@+,:=~/-]*$"),
             "an absolute path of letters, digits and . _ @ + , : = ~ - (no whitespace, quotes, $, %, '..')"),
    # One token: a release, a version, a package or backend name, a localversion.
    "token": (re.compile(r"^[A-Za-z0-9._+:~-]+$"), "one token of letters, digits and . _ + : ~ -"),
    # One argv element (a URL, a git ref, a regex, CONFIG_X=y): no control characters, not an option.
    "word": (re.compile(r"^[^-\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"),
             "one argument without control characters (newlines) that does not start with '-'"),
    # One kernel command-line argument as kernel_cmdline writes it.
    "cmdline_arg": (re.compile(r"^[A-Za-z0-9_.-]+(=[^\s\"'$`\\\x00-\x1f\x7f]+)?$"),
                    "NAME or NAME=VALUE without whitespace, quotes, $, ` or backslashes"),
}


def problem(kind, name, value):
    """Why ``value`` of variable ``name`` breaks rule ``kind``, or None (None and '' are unset
    optionals: the role's own checks say whether it needs them). ValueError for an unknown kind."""
    if kind not in RULES:
        raise ValueError("unknown value kind %r: use one of %s" % (kind, ", ".join(sorted(RULES))))
    if value is None or value == "":
        return None
    regex, rule = RULES[kind]
    text = str(value)
    if not regex.fullmatch(text) or (kind == "path" and "/../" in text + "/"):
        shown = CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), text)
        return "%s = '%s': must be %s" % (name, shown if len(shown) <= 80 else shown[:77] + "...", rule)
    return None


def problems(values):
    """[text] for every value of ``{variable: [kind, value or [values]]}`` that breaks its rule."""
    out = []
    for name in sorted(values):
        kind, value = values[name]
        if isinstance(value, (list, tuple)):
            out += [p for p in (problem(kind, "%s[%d]" % (name, i), v) for i, v in enumerate(value)) if p]
        else:
            p = problem(kind, name, value)
            if p:
                out.append(p)
    return out
