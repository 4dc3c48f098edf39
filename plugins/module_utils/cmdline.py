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
    # imported here: every agent start imports this file (with the guestmemfs backend), few evaluate
    import shutil
    import tempfile
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


def _split_raw(rest, where):
    """The right-hand side of an assignment -> (quote, body as written, trailing text)."""
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
    return quote, body, trailing


def split_value(rest, where):
    """The right-hand side of an assignment -> (quote, words, trailing text)."""
    quote, body, trailing = _split_raw(rest, where)
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


def _tokens(body):
    """A value -> ([[separator before, word], ...], whitespace after the last word): the value's
    own spacing is kept when words are replaced, dropped or added."""
    parts = re.split(r"(\s+)", body)
    words, sep = [], ""
    for part in parts:
        if not part:
            continue
        if part.isspace():
            sep = part
        else:
            words.append([sep, part])
            sep = ""
    return words, sep


def _untokens(words, tail):
    return "".join(sep + word for sep, word in words) + tail


class Assignment(object):
    """One ``GRUB_CMDLINE_LINUX(_DEFAULT)=`` line of one default file. ``error`` says why its value
    cannot be edited (it is then left alone unless it holds a managed argument)."""

    def __init__(self, path, index, match, where):
        self.path, self.index, self.match = path, index, match
        self.var = match.group("var")
        rest = match.group("rest")
        # A reference to its own variable appends to what came before; anything else replaces it.
        self.appends = re.search(r"\$\{?%s\}?(?![A-Za-z0-9_])" % self.var, rest) is not None
        self.error = None
        try:
            self.quote, self.body, self.trailing = _split_raw(rest, where)
        except CmdlineError as exc:
            self.error = exc
            self.quote = self.body = self.trailing = None

    def mentions(self, name):
        """Whether the line holds argument ``name`` as far as its text shows, parsed or not."""
        pattern = r"(?<![\w.-])%s(?![\w.-])" % re.escape(name)
        return re.search(pattern, self.match.group("rest")) is not None

    def names(self):
        return set(arg_name(w) for w in self.body.split() if not _is_ref(w))

    def render(self, values, drop, line):
        """The line with ``values`` {name: arg} placed at each name's first occurrence (appended
        when absent) and every other occurrence, and every name in ``drop``, removed."""
        words, tail = _tokens(self.body)
        lead = words[0][0] if words else ""
        out, placed = [], set()
        for sep, word in words:
            name = None if _is_ref(word) else arg_name(word)
            if name in drop or (name in values and name in placed):
                continue
            if name in values:
                placed.add(name)
                word = values[name]
            out.append([sep, word])
        for name, arg in values.items():
            if name not in placed:
                out.append([" " if out else "", arg])
        if out:
            out[0][0] = lead
        if out == words:
            return line
        quote = self.quote
        plain = [w for _s, w in out]
        if not quote and (len(plain) > 1 or not plain):
            quote = '"'
        if quote == "'" and any(_is_ref(w) for w in plain):
            quote = '"'
        m = self.match
        return "%s%s%s=%s%s%s%s%s" % (m.group("indent"), m.group("export") or "", m.group("var"), quote,
                                      _untokens(out, tail), quote, self.trailing.rstrip("\n"),
                                      "\n" if line.endswith("\n") else "")


def scan(files):
    """[(path, text)] in the order GRUB sources them -> every cmdline assignment, in that order."""
    found = []
    for path, text in files:
        for i, line in enumerate((text or "").splitlines(True)):
            m = _ASSIGN.match(line)
            if m:
                found.append(Assignment(path, i, m, "%s line %d" % (path, i + 1)))
    return found


def live(assignments):
    """The assignments whose words reach the cmdline: each variable's last one, and the ones before
    it as long as each later one appends to (references) its variable."""
    out = []
    for var in CMDLINE_VARS:
        for a in reversed([a for a in assignments if a.var == var]):
            out.append(a)
            if not a.appends:
                break
    return set(id(a) for a in out)


def plan_edits(assignments, set_args, remove):
    """Where each managed argument goes: {id(assignment): (values, drop)} and the names of
    ``set_args`` that no live assignment holds. An argument set in several live places keeps its
    value only in the one sourced last (the one that wins), so that it ends up exactly once; a
    removed one goes from every assignment. An assignment whose value cannot be parsed is refused
    only when it holds a managed argument."""
    names = set(set_args) | set(remove)
    alive = live(assignments)
    for a in assignments:
        if a.error is not None and any(a.mentions(n) for n in names):
            raise a.error
    parsed = [a for a in assignments if a.error is None]
    edits = dict((id(a), ({}, set(n for n in remove if n in a.names()))) for a in parsed)
    absent = []
    for name, value in set_args.items():
        holders = [a for a in parsed if id(a) in alive and name in a.names()]
        if not holders:
            absent.append(name)
            continue
        edits[id(holders[-1])][0][name] = format_arg(name, value)
        for a in holders[:-1]:
            edits[id(a)][1].add(name)
    return edits, absent


def edit_files(files, set_args, remove):
    """[(path, text)] in sourcing order -> ({path: new text}, names of ``set_args`` no live
    assignment holds: they go into the collection's drop-in). ``$VAR`` references are kept."""
    assignments = scan(files)
    edits, absent = plan_edits(assignments, set_args, remove)
    lines = dict((path, (text or "").splitlines(True)) for path, text in files)
    for a in assignments:
        values, drop = edits.get(id(a), ({}, set()))
        if values or drop:
            lines[a.path][a.index] = a.render(values, drop, lines[a.path][a.index])
    return dict((path, "".join(lines[path]) if text is not None else None) for path, text in files), absent


def edit_text(text, set_args, remove, path="file"):
    """Replace or remove managed arguments in one file's cmdline assignments.
    Returns (new text, names found: the set ones it holds, the removed ones it had)."""
    assignments = scan([(path, text)])
    new, absent = edit_files([(path, text)], set_args, remove)
    had = set()
    for a in assignments:
        if a.error is None:
            had |= a.names()
    found = (set(set_args) - set(absent)) | (set(remove) & had)
    return new[path], found


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
