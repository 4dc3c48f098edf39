"""Issue 19, security: a role variable that reaches a unit file, an argv or a path is checked before
anything changes - a value with a newline would add directives to a unit, a leading '-' would be
read as an option, '..' or a relative path would leave the tree it is meant for."""

import os

import pytest
import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.guestmemfs.liveupdate.plugins.filter.role_values import FilterModule

from conftest import ROOT

check = FilterModule().filters()["unsafe_values"]


@pytest.mark.parametrize("kind,value", [
    ("path", "/mnt/vmmem\nExecStartPre=/bin/sh -c 'id > /tmp/x'"),
    ("path", "/mnt/vm mem"),
    ("path", "mnt/vmmem"),
    ("path", "/var/tmp/../../etc"),
    ("path", "/mnt/%i"),
    ("path", "/mnt/$HOME"),
    ("token", "-lu1\n"),
    ("token", "7.3 rc"),
    ("word", "--upload-pack=touch /tmp/x"),
    ("word", "https://example.org/linux.git\n"),
    ("cmdline_arg", "memmap=1G!4G quiet"),
    ("cmdline_arg", 'memmap="1G!4G"'),
])
def test_a_value_that_breaks_out_is_named(kind, value):
    [problem] = check({"some_var": [kind, value]})
    assert problem.startswith("some_var")


def test_good_values_and_unset_optionals_pass():
    assert check({"a": ["path", "/var/tmp/guestmemfs-kernel-build"], "b": ["path", None], "c": ["path", ""],
                  "d": ["token", "-lu1"], "e": ["word", "https://git.kernel.org/x/linux.git"],
                  "f": ["cmdline_arg", ["memmap=640M!5504M", "kho=on"]], "g": ["path", ["/a/b.patch"]],
                  "h": ["word", "CONFIG_KEXEC_FILE=y"], "i": ["token", "7.3"]}) == []


def test_a_list_names_the_element():
    [problem] = check({"patches": ["path", ["/ok.patch", "/bad\n.patch"]]})
    assert problem.startswith("patches[1]")


def test_an_unknown_kind_is_an_error():
    with pytest.raises(AnsibleFilterError):
        check({"x": ["shell", "y"]})


ROLES = sorted(os.listdir(os.path.join(ROOT, "roles")))
CHECKED_TYPES = ("str", "path", "list")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_checks_each_string_variable_before_anything(role):
    spec = yaml.safe_load(open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")))
    options = spec["argument_specs"]["main"]["options"]
    tasks = yaml.safe_load(open(os.path.join(ROOT, "roles", role, "tasks", "main.yml")))
    first = tasks[0]
    text = yaml.safe_dump(first)
    assert "unsafe_values" in text, "%s: the first task must check the variables (unsafe_values)" % role
    wanted = [n for n, o in options.items() if o.get("type") in CHECKED_TYPES
              and (o.get("type") != "list" or o.get("elements") in ("str", "path"))]
    missing = [n for n in wanted if "'%s'" % n not in text and '"%s"' % n not in text]
    assert not missing, "%s: not checked: %s" % (role, ", ".join(missing))
