# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The persistent kernel command line: pure editing of GRUB's default files and argument lists.

GRUB (Debian, Ubuntu) reads ``GRUB_CMDLINE_LINUX`` (every entry, recovery too) and
``GRUB_CMDLINE_LINUX_DEFAULT`` (normal entries) from /etc/default/grub, then from each
/etc/default/grub.d/*.cfg in order; grub-mkconfig sources them as shell. Arguments are edited where
they are defined; new ones go into the collection's own drop-in, which is sourced last and appends
to what came before. Only plain assignments are edited (double, single or no quotes, with
``$VAR`` references kept as they are): anything else is refused rather than guessed at.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import os
import re
import shutil
import tempfile

CMDLINE_VARS = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")
DROPIN_NAME = "99-guestmemfs-liveupdate.cfg"
DROPIN_HEADER = ("# Managed by guestmemfs.liveupdate (kernel_cmdline): arguments the collection adds.\n"
                 "# Sourced after /etc/default/grub and earlier drop-ins; it appends to their value.\n")

_ASSIGN = re.compile(r"^(?P<indent>\s*)(?P<export>export\s+)?(?P<var>GRUB_CMDLINE_LINUX(?:_DEFAULT)?)="
                     r"(?P<rest>.*)$")


class CmdlineError(Exception):
    """A bootloader config the module will not edit, or a request it cannot honour."""

    def __init__(self, msg, **details):
        super(CmdlineError, self).__init__(msg)
        self.details = details


# Source the default files as grub-mkconfig does (no set -e: it does not stop on a failing
# command substitution either), then print the two variables.
EVAL = ('. "$1/grub"; for x in "$1"/grub.d/*.cfg; do if [ -e "$x" ]; then . "$x"; fi; done; '
        'printf "%s\\n%s\\n" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"')


def grub_files(root="/"):
    """/etc/default/grub, its drop-ins in order, and the collection's drop-in (which may not exist
    yet and sorts last by its name) -> (paths, drop-in path)."""
    files = ["/etc/default/grub"]
    files += sorted("/etc/default/grub.d/" + os.path.basename(p)
                    for p in glob.glob(os.path.join(root, "etc/default/grub.d/*.cfg")))
    dropin = "/etc/default/grub.d/" + DROPIN_NAME
    if dropin not in files:
        files.append(dropin)
    return files, dropin


def evaluate(run, texts):
    """(GRUB_CMDLINE_LINUX, GRUB_CMDLINE_LINUX_DEFAULT) from {path: text} of the default files,
    sourced in a scratch copy. ``run(argv) -> (rc, out, err)``."""
    scratch = tempfile.mkdtemp(prefix="kernel_cmdline-")
    try:
        os.mkdir(os.path.join(scratch, "grub.d"))
        for path, text in texts.items():
            if text is None:
                continue
            name = "grub" if path == "/etc/default/grub" else os.path.join("grub.d", os.path.basename(path))
            with open(os.path.join(scratch, name), "w") as fh:
                fh.write(text)
        cmd = ["/bin/sh", "-c", EVAL, "sh", scratch]
        rc, out, err = run(cmd)
        if rc != 0:
            raise CmdlineError("the GRUB default files do not source cleanly: %s" % err.strip(),
                               rc=rc, stdout=out, stderr=err, cmd=cmd)
        parts = out.split("\n")
        return parts[0], parts[1] if len(parts) > 1 else ""
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def configured(run, root="/"):
    """The configured cmdline of normal GRUB entries as an argument list, None without GRUB."""
    files, _dropin = grub_files(root)
    texts = {}
    for p in files:
        try:
            with open(os.path.join(root, p.lstrip("/"))) as fh:
                texts[p] = fh.read()
        except (IOError, OSError):
            texts[p] = None
    if texts.get("/etc/default/grub") is None:
        return None
    linux, default = evaluate(run, texts)
    return parse_cmdline(linux + " " + default)


def parse_cmdline(text):
    """A kernel command line -> list of arguments, honouring double quotes like the kernel."""
    args, cur, quoted, started = [], "", False, False
    for ch in (text or "").strip():
        if ch == '"':
            quoted = not quoted
            cur += ch
            started = True
        elif ch.isspace() and not quoted:
            if started:
                args.append(cur)
            cur, started = "", False
        else:
            cur += ch
            started = True
    if started:
        args.append(cur)
    return args


def arg_name(arg):
    return arg.split("=", 1)[0]


def format_arg(name, value):
    """(name, value) -> 'name=value', or 'name' for a flag (value None or True)."""
    if value is None or value is True:
        return name
    if value is False:
        raise CmdlineError("argument %s: use remove to drop it, not false" % name)
    return "%s=%s" % (name, value)


def apply_args(args, set_args, remove):
    """Edit an argument list: each name in ``set_args`` ends up exactly once with its value (at
    the place of its first occurrence, else appended), each name in ``remove`` not at all."""
    out, placed = [], set()
    for arg in args:
        name = arg_name(arg)
        if name in remove:
            continue
        if name in set_args:
            if name in placed:
                continue
            placed.add(name)
            out.append(format_arg(name, set_args[name]))
            continue
        out.append(arg)
    for name, value in set_args.items():
        if name not in placed:
            out.append(format_arg(name, value))
    return out


def kstrtobool(value):
    """The kernel's reading of a boolean parameter: True, False, or None when it would refuse the
    value (and keep its default)."""
    if not isinstance(value, str) or not value:
        return None
    c = value[0].lower()
    if c in "eyt1":
        return True
    if c in "dnf0":
        return False
    if c == "o" and len(value) > 1:
        return {"n": True, "f": False}.get(value[1].lower())
    return None


def flag(args, name, default=False):
    """Whether boolean early parameter ``name`` ends up on: each valid occurrence overrides the
    previous one; a bare ``name`` or a value the kernel refuses leaves it as it was."""
    state = default
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == name and sep:
            b = kstrtobool(value)
            if b is not None:
                state = b
    return state


def split_value(rest, where):
    """The right-hand side of an assignment -> (quote, words, trailing text)."""
    rest = rest.rstrip("\n")
    if rest.endswith("\\"):
        raise CmdlineError("%s: a value continued on the next line is not edited; join it first" % where)
    if rest[:1] in ('"', "'"):
        quote = rest[0]
        end = rest.find(quote, 1)
        if end < 0:
            raise CmdlineError("%s: the quoted value does not end on this line" % where)
        body, trailing = rest[1:end], rest[end + 1:]
    else:
        quote = ""
        m = re.match(r"^(\S*)(.*)$", rest)
        body, trailing = m.group(1), m.group(2)
    if trailing.strip() and not trailing.strip().startswith("#"):
        raise CmdlineError("%s: text after the value (%r) is not edited" % (where, trailing.strip()))
    if quote != "'" and re.search(r"[`\\]|\$\(", body):
        raise CmdlineError("%s: command substitution or escapes in the value are not edited" % where)
    if quote == '"' and '"' in body:
        raise CmdlineError("%s: nested quotes are not edited" % where)
    return quote, body.split(), trailing


def find_assignments(text, path="file"):
    """Every GRUB_CMDLINE_LINUX(_DEFAULT)= line: [(index, var, quote, words)]."""
    found = []
    for i, line in enumerate(text.splitlines(True)):
        m = _ASSIGN.match(line)
        if m:
            quote, words, _trailing = split_value(m.group("rest"), "%s line %d" % (path, i + 1))
            found.append((i, m.group("var"), quote, words))
    return found


def _is_ref(word):
    return word.startswith("$")


def _render(m, quote, words, trailing):
    body = " ".join(words)
    if not quote and (len(words) > 1 or not words):
        quote = '"'
    if quote == "'" and any(_is_ref(w) for w in words):
        quote = '"'
    return "%s%s%s=%s%s%s%s\n" % (m.group("indent"), m.group("export") or "", m.group("var"),
                                  quote, body, quote, trailing.rstrip("\n"))


def edit_text(text, set_args, remove, path="file"):
    """Replace or remove managed arguments wherever a cmdline variable defines them.
    Returns (new text, names found); ``$VAR`` references are kept."""
    lines = text.splitlines(True)
    names = set(set_args) | set(remove)
    found = set()
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if not m:
            continue
        quote, words, trailing = split_value(m.group("rest"), "%s line %d" % (path, i + 1))
        plain = [w for w in words if not _is_ref(w)]
        hit = set(arg_name(w) for w in plain) & names
        if not hit:
            continue
        found |= hit
        keep = dict((n, v) for n, v in set_args.items() if n in hit)
        new_words = []
        placed = set()
        for w in words:
            n = arg_name(w)
            if _is_ref(w) or n not in names:
                new_words.append(w)
            elif n in keep and n not in placed:
                placed.add(n)
                new_words.append(format_arg(n, keep[n]))
        if not line.endswith("\n"):
            trailing = trailing.rstrip("\n")
        lines[i] = _render(m, quote, new_words, trailing)
    return "".join(lines), found


def dropin_text(existing, add_args):
    """The collection's drop-in with ``add_args`` appended to GRUB_CMDLINE_LINUX (every entry, so
    a recovery boot keeps the carve-out reserved too)."""
    words = []
    for _i, var, _q, w in find_assignments(existing or "", DROPIN_NAME):
        if var == "GRUB_CMDLINE_LINUX":
            words = [x for x in w if not _is_ref(x)]
    for arg in add_args:
        if arg not in words:
            words.append(arg)
    if not words:
        return None
    return DROPIN_HEADER + 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX %s"\n' % " ".join(words)


def missing_and_unwanted(effective_args, set_args, remove):
    """What ``effective_args`` still lacks of ``set_args`` and still has of ``remove``."""
    have = {}
    for a in effective_args:
        have.setdefault(arg_name(a), []).append(a)
    missing = [format_arg(n, v) for n, v in set_args.items() if have.get(n) != [format_arg(n, v)]]
    unwanted = [a for n in remove for a in have.get(n, [])]
    return missing, unwanted


def linux_lines(grub_cfg):
    """The ``linux`` lines of a generated grub.cfg as argument lists, recovery entries left out."""
    out = []
    entry_is_recovery = False
    for line in grub_cfg.splitlines():
        s = line.strip()
        if s.startswith("menuentry ") or s.startswith("submenu "):
            entry_is_recovery = "recovery mode" in s
        m = re.match(r"^linux(?:16|efi)?\s+(\S+)\s*(.*)$", s)
        if m and not entry_is_recovery:
            out.append(parse_cmdline(m.group(2)))
    return out


def parse_grubby_info(text):
    """``grubby --info=...`` output -> [{index, kernel, args}] per entry."""
    entries, cur = [], None
    for line in text.splitlines():
        m = re.match(r'^(\w+)=(?:"(.*)"|(.*))$', line.strip())
        if not m:
            continue
        key, value = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
        if key == "index":
            cur = {"index": int(value)}
            entries.append(cur)
        elif cur is not None:
            cur[key] = value
    return entries


# ---------------------------------------------------------------- the default boot entry

DEFAULT_DROPIN_NAME = "98-guestmemfs-default.cfg"
_ENTRY = re.compile(r"^\s*(menuentry|submenu)\s+(?:'([^']*)'|\"([^\"]*)\")(.*)$")
_ENTRY_ID = re.compile(r"\$menuentry_id_option\s+'([^']*)'|--id[= ]'?([^'\s]+)'?")


def grub_menu_entries(grub_cfg):
    """The boot entries of a generated grub.cfg -> [{path, title, release, recovery}], ``path``
    being what GRUB_DEFAULT takes (``submenu-id>entry-id``, by ids, which stay when kernels are
    added; titles and positions do not)."""
    out = []
    stack = []  # (kind, id, depth at which it closes)
    depth = 0
    current = None
    for line in grub_cfg.splitlines():
        s = line.strip()
        m = _ENTRY.match(line)
        if m:
            kind, title = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
            idm = _ENTRY_ID.search(m.group(4))
            ident = (idm.group(1) or idm.group(2)) if idm else title
            if kind == "submenu":
                stack.append((ident, depth))
            else:
                path = ">".join([i for i, _depth in stack] + [ident])
                current = dict(path=path, title=title, release=None,
                               recovery="recovery" in title or "-recovery-" in ident)
                out.append(current)
            depth += s.count("{") - s.count("}")
            continue
        if current is not None:
            k = re.match(r"^linux(?:16|efi)?\s+\S*/vmlinuz-(\S+)", s)
            if k:
                current["release"] = k.group(1)
        depth += s.count("{") - s.count("}")
        while stack and depth <= stack[-1][1]:
            stack.pop()
        if depth <= len(stack):
            current = None
    return out


def grub_default_path(entries, release):
    """The GRUB_DEFAULT value booting ``release`` normally. The top entry (``gnulinux-simple-*``)
    boots whichever kernel is newest, so an entry whose own id names the release comes first, then
    one in a submenu, then any."""
    normal = [e for e in entries if e["release"] == release and not e["recovery"]]
    if not normal:
        return None
    best = max(normal, key=lambda e: ("-%s-" % release in e["path"].rsplit(">", 1)[-1], ">" in e["path"]))
    return best["path"]


def grub_cfg_generated(grub_cfg):
    """Whether grub-mkconfig wrote this grub.cfg (a hand-written one has no stable entry ids)."""
    return "### BEGIN /etc/grub.d/10_linux ###" in grub_cfg


def grub_set_default(grub_cfg):
    """The ``set default=`` value a generated grub.cfg starts with (None when absent)."""
    for line in grub_cfg.splitlines():
        m = re.match(r'^\s*set default="?([^"]*)"?\s*$', line)
        if m and "${" not in m.group(1):
            return m.group(1)
    return None


def default_dropin_text(path):
    return ("# Managed by guestmemfs.liveupdate (kernel_default): the kernel a cold boot starts, by\n"
            "# GRUB entry id, so that installing a newer kernel does not change it.\n"
            'GRUB_DEFAULT="%s"\n' % path)
