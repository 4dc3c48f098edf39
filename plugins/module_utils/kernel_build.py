# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel build inputs and checks, pure: config fragments, required options, the input hash, and
why olddefconfig dropped an option (read from the tree's own Kconfig files). The module
kernel_build does the I/O (extract, patch, make)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import hashlib
import json
import os
import re

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends.luo import LuoBackend

# Bump when the build steps change in a way the inputs do not show, so old stamps stop matching.
RECIPE_VERSION = 1

# Any one of each tuple. The KHO symbol was renamed: the guestmemfs RFC's KHO v2 patches add
# KEXEC_KHO, mainline (6.16+) has KEXEC_HANDOVER.
KEXEC_FILE = ("CONFIG_KEXEC_FILE",)
KHO = ("CONFIG_KEXEC_HANDOVER", "CONFIG_KEXEC_KHO")
# The LUO memfd backend's options, owned by the backend.
LUO_OPTIONS = LuoBackend.required_kernel_options
# Built in, never a module: guestmemfs' region is claimed at boot, before any module loads.
BUILTIN_ONLY = frozenset(["CONFIG_GUESTMEMFS_FS", "CONFIG_KEXEC_FILE", "CONFIG_KEXEC_HANDOVER", "CONFIG_KEXEC_KHO"])

_SYM = re.compile(r"^[A-Za-z0-9_]+$")


class KernelBuildError(Exception):
    """Bad input or a config that cannot be built; the message says which and why."""


def normalize_name(name):
    name = name.strip()
    if not name.startswith("CONFIG_"):
        name = "CONFIG_" + name
    if not _SYM.match(name):
        raise KernelBuildError("%r is not a kernel config symbol" % name)
    return name


def parse_option(text):
    """``CONFIG_X=y``, ``X=m``, ``# CONFIG_X is not set`` or a bare ``X`` -> (name, value or None)."""
    text = text.strip()
    m = re.match(r"^#\s*(CONFIG_[A-Za-z0-9_]+) is not set$", text)
    if m:
        return m.group(1), "n"
    if "=" in text:
        name, value = text.split("=", 1)
        return normalize_name(name), value.strip()
    return normalize_name(text), None


def parse_fragment(text, where="fragment"):
    """A .config fragment -> ordered list of (name, value); comments and blank lines skipped.

    A symbol given twice keeps its last value, as merge_config.sh does (it warns; so do we, by
    raising: a fragment that contradicts itself is a mistake).
    """
    out = []
    seen = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or (s.startswith("#") and not re.match(r"^#\s*CONFIG_\S+ is not set$", s)):
            continue
        try:
            name, value = parse_option(s)
        except KernelBuildError as exc:
            raise KernelBuildError("%s line %d: %s" % (where, n, exc))
        if value is None or value == "":
            raise KernelBuildError("%s line %d: %r has no value (write %s=y, =m, or \"# %s is not set\")"
                                   % (where, n, s, name, name))
        if name in seen and seen[name] != value:
            raise KernelBuildError("%s line %d: %s=%s contradicts %s=%s earlier"
                                   % (where, n, name, value, name, seen[name]))
        if name not in seen:
            out.append((name, value))
        seen[name] = value
    return out


def render_fragment(options):
    return "".join("# %s is not set\n" % n if v == "n" else "%s=%s\n" % (n, v) for n, v in options)


def read_config(text):
    """A .config -> {name: value}; ``# CONFIG_X is not set`` is ``n``; quotes are kept."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$", line)
        if m:
            out[m.group(1)] = "n"
    return out


def required_options(backend_options=(), require_kho=False, luo=False, extra=()):
    """The options a build must end with: [(alternatives, accepted values, why)].

    KEXEC_FILE always (kexec_file_load is the only safe load); KHO when asked or implied; the
    backend's options; the user's list (``X`` accepts y or m, ``X=y`` only y).
    """
    req = [(KEXEC_FILE, ("y",), "kexec_file_load")]
    if require_kho or luo:
        req.append((KHO, ("y",), "KHO"))
    for alts, why in [(a, "backend") for a in backend_options] + [(a, "luo") for a in (LUO_OPTIONS if luo else ())]:
        alts = tuple(normalize_name(a) for a in alts)
        if any(a in KHO for a in alts):
            alts = KHO
        accepted = ("y",) if any(a in BUILTIN_ONLY for a in alts) else ("y", "m")
        req.append((alts, accepted, why))
    for item in extra:
        name, value = parse_option(item)
        if value in (None, ""):
            accepted = ("y",) if name in BUILTIN_ONLY else ("y", "m")
        elif value == "n":
            raise KernelBuildError("required option %s cannot be required unset" % name)
        else:
            accepted = (value,)
        req.append(((name,), accepted, "required_options"))
    # One entry per alternatives tuple; the strictest accepted values win.
    merged = []
    for alts, accepted, why in req:
        for i, (a2, acc2, why2) in enumerate(merged):
            if set(alts) & set(a2):
                merged[i] = (a2, tuple(v for v in acc2 if v in accepted) or accepted, why2)
                break
        else:
            merged.append((alts, accepted, why))
    return merged


def resolve_required(required, defined):
    """Pick, for each alternatives tuple, the symbol this tree defines -> [(name, accepted)]."""
    out = []
    missing = []
    for alts, accepted, why in required:
        names = [a for a in alts if a[len("CONFIG_"):] in defined]
        if names:
            out.append((names[0], accepted))
        else:
            missing.append(" or ".join(alts) + " (%s)" % why)
    if missing:
        raise KernelBuildError("this source tree defines no %s in its Kconfig files: it lacks the feature (KHO is "
                               "KEXEC_HANDOVER in mainline >= 6.16 and KEXEC_KHO with the KHO v2 patches the "
                               "guestmemfs RFC is based on; a patch that adds it did not go in)" % "; no ".join(missing))
    return out


def fragment_with_required(fragment, required):
    """The user's fragment plus ``=y`` for each required option it does not set itself."""
    names = dict(fragment)
    out = list(fragment)
    for name, accepted in required:
        if name in names:
            if names[name] not in accepted:
                raise KernelBuildError("the fragment sets %s=%s but it is required as %s"
                                       % (name, names[name], " or ".join(accepted)))
        else:
            out.append((name, accepted[0]))
    return out


def input_hash(inputs):
    """sha256 of the canonical JSON of every input that changes the result."""
    data = dict(inputs, recipe=RECIPE_VERSION)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def srcarch(machine):
    """Kconfig's SRCARCH for ``uname -m``."""
    if machine in ("x86_64", "i386", "i686"):
        return "x86"
    if machine == "aarch64":
        return "arm64"
    if machine.startswith("ppc"):
        return "powerpc"
    if machine.startswith("riscv"):
        return "riscv"
    if machine.startswith("s390"):
        return "s390"
    return machine


# ---------------------------------------------------------------- Kconfig

class Entry(object):
    """One ``config``/``menuconfig`` definition: where, its own and inherited dependencies."""

    def __init__(self, name, path, line, context):
        self.name = name
        self.path = path
        self.line = line
        self.context = list(context)  # (expr, path, line, what) from enclosing if/menu/choice
        self.depends = []  # (expr, path, line)
        self.selects = []  # (target, cond or None)
        self.prompt = False
        self.type = None
        self.defaults = []  # Expr of def_bool/def_tristate/default (its ``if`` folded in)
        self.prompt_ifs = []  # (Expr or None, line): a prompt is visible only when its ``if`` holds


_TOKEN = re.compile(r'\s*(&&|\|\||!=|<=|>=|[!()=<>]|"[^"]*"|\'[^\']*\'|[A-Za-z0-9_.$-]+)')


def tokenize(expr):
    tokens = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise KernelBuildError("cannot read Kconfig expression %r" % expr)
        tokens.append(m.group(1))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return tokens


class Expr(object):
    """A Kconfig dependency expression, evaluated in tristate logic (n=0, m=1, y=2)."""

    def __init__(self, text):
        self.text = text.strip()
        self.pos = 0
        try:
            # Macros ($(success,...)) are the compiler's business; such a condition counts as met.
            if "$(" in self.text:
                raise KernelBuildError("macro")
            self.tokens = tokenize(self.text)
            self.tree = self._or()
            if self.pos != len(self.tokens):
                raise KernelBuildError("trailing tokens")
        except (KernelBuildError, IndexError, TypeError):
            self.tree = ("sym", "y")

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self):
        t = self._peek()
        self.pos += 1
        return t

    def _or(self):
        node = self._and()
        while self._peek() == "||":
            self._take()
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._not()
        while self._peek() == "&&":
            self._take()
            node = ("and", node, self._not())
        return node

    def _not(self):
        if self._peek() == "!":
            self._take()
            return ("not", self._not())
        return self._cmp()

    def _cmp(self):
        if self._peek() == "(":
            self._take()
            node = self._or()
            if self._take() != ")":
                raise KernelBuildError("unbalanced parentheses in %r" % self.text)
            return node
        left = self._take()
        if left is None:
            raise KernelBuildError("incomplete Kconfig expression %r" % self.text)
        if self._peek() in ("=", "!=", "<", ">", "<=", ">="):
            op = self._take()
            return ("cmp", op, left, self._take())
        return ("sym", left)

    def symbols(self):
        out = []

        def walk(n):
            if n[0] == "sym":
                if not _is_const(n[1]):
                    out.append(n[1])
            elif n[0] == "cmp":
                out.extend(s for s in (n[2], n[3]) if s is not None and not _is_const(s))
            else:
                for c in n[1:]:
                    walk(c)
        walk(self.tree)
        return list(dict.fromkeys(out))

    def value(self, config):
        return _eval(self.tree, config)


def _is_const(tok):
    return tok in ("y", "m", "n") or tok[0] in "\"'" or re.match(r"^-?(0x[0-9a-fA-F]+|\d+)$", tok) is not None


def _sym_value(tok, config):
    if tok in ("y", "m", "n"):
        return tok
    if tok[0] in "\"'":
        return tok[1:-1]
    if re.match(r"^-?(0x[0-9a-fA-F]+|\d+)$", tok):
        return tok
    v = config.get("CONFIG_" + tok, "n")
    return v[1:-1] if v.startswith('"') else v


def _tri(v):
    return {"y": 2, "m": 1}.get(v, 0)


def _eval(node, config):
    kind = node[0]
    if kind == "sym":
        return _tri(_sym_value(node[1], config))
    if kind == "not":
        return 2 - _eval(node[1], config)
    if kind == "and":
        return min(_eval(node[1], config), _eval(node[2], config))
    if kind == "or":
        return max(_eval(node[1], config), _eval(node[2], config))
    op, a, b = node[1], _sym_value(node[2], config), _sym_value(node[3], config)
    if op in ("=", "!="):
        return 2 if (a == b) == (op == "=") else 0
    try:
        a, b = int(a, 0), int(b, 0)
    except ValueError:
        return 0
    return 2 if {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op] else 0


class Kconfig(object):
    """The config entries of a source tree, read from its Kconfig files for one architecture,
    following ``source`` lines from the top ``Kconfig`` so that ``if``/``menu`` conditions of the
    sourcing file reach the entries of the sourced one."""

    ENTRY_END = ("config", "menuconfig", "choice", "endchoice", "comment", "menu", "endmenu", "if", "endif",
                 "source", "rsource", "osource", "orsource", "mainmenu")

    def __init__(self, srctree, arch="x86"):
        self.srctree = srctree
        self.arch = arch
        self.entries = {}
        self.selected_by = {}
        self._seen = set()
        self._read(os.path.join(srctree, "Kconfig"), [])

    def defined(self):
        return set(self.entries)

    def _sources(self, arg):
        arg = arg.replace("$(SRCARCH)", self.arch).replace("$(ARCH)", self.arch).replace("$(HEADER_ARCH)", self.arch)
        if "$(" in arg:
            return []
        # ``source`` paths are relative to the top of the tree; a glob may name several files.
        return sorted(glob.glob(os.path.join(self.srctree, arg)))

    def _read(self, path, context):
        real = os.path.realpath(path)
        if real in self._seen or not os.path.isfile(path):
            return
        self._seen.add(real)
        rel = os.path.relpath(path, self.srctree)
        with open(path, errors="replace") as fh:
            raw = fh.read().splitlines()
        # Join continued lines, keeping the first line's number.
        lines = []
        i = 0
        while i < len(raw):
            n, text = i + 1, raw[i]
            while text.endswith("\\") and i + 1 < len(raw):
                i += 1
                text = text[:-1] + " " + raw[i].strip()
            lines.append((n, text))
            i += 1
        stack = []  # [(kind, [conditions])]
        entry = None  # the config/menuconfig/menu/choice whose attributes follow
        help_indent = None
        for n, text in lines:
            if help_indent is not None:
                if not text.strip():
                    continue
                indent = len(text.expandtabs(8)) - len(text.expandtabs(8).lstrip())
                if help_indent == -1:
                    help_indent = indent
                if indent >= help_indent and indent > 0:
                    continue
                help_indent = None
            s = text.split("#", 1)[0].strip() if not text.strip().startswith("#") else ""
            if not s:
                continue
            word, _sp, rest = s.partition(" ")
            rest = rest.strip()
            ctx = [c for _kind, conds in stack for c in conds]
            if word in ("config", "menuconfig"):
                entry = Entry(rest, rel, n, context + ctx)
                self.entries.setdefault(rest, []).append(entry)
            elif word in ("menu", "choice"):
                entry = ("block", [])
                stack.append((word, entry[1]))
            elif word == "comment":
                entry = ("comment", [])
            elif word == "if":
                stack.append(("if", [(Expr(rest), rel, n, "if")]))
                entry = None
            elif word in ("endif", "endmenu", "endchoice"):
                if stack:
                    stack.pop()
                entry = None
            elif word in ("source", "rsource", "osource", "orsource"):
                arg = rest.strip('"')
                if word in ("rsource", "orsource"):
                    arg = os.path.relpath(os.path.join(os.path.dirname(path), arg), self.srctree)
                for sub in self._sources(arg):
                    self._read(sub, context + ctx)
                entry = None
            elif word in ("help", "---help---"):
                help_indent = -1
            elif word == "depends" and rest.startswith("on "):
                expr = Expr(rest[3:])
                if isinstance(entry, Entry):
                    entry.depends.append((expr, rel, n))
                elif isinstance(entry, tuple) and entry[0] == "block":
                    entry[1].append((expr, rel, n, "menu"))
            elif word == "select" and isinstance(entry, Entry):
                target, _if, cond = rest.partition(" if ")
                self.selected_by.setdefault(target.strip(), []).append((entry.name, cond.strip() or None))
            elif word in ("bool", "tristate", "string", "int", "hex", "def_bool", "def_tristate", "prompt"):
                if isinstance(entry, Entry):
                    if word in ("bool", "tristate", "def_bool", "def_tristate"):
                        entry.type = word.replace("def_", "")
                    elif word != "prompt":
                        entry.type = word
                    if word in ("bool", "tristate", "string", "int", "hex", "prompt") and rest.startswith(('"', "'")):
                        entry.prompt = True
                        m = re.match(r"""^("[^"]*"|'[^']*')\s+if\s+(.+)$""", rest)
                        entry.prompt_ifs.append((Expr(m.group(2)) if m else None, n))
                    if word in ("def_bool", "def_tristate"):
                        entry.defaults.append(_default_expr(rest))
            elif word == "default" and isinstance(entry, Entry):
                entry.defaults.append(_default_expr(rest))

    # -------------------------------------------------------- why an option is not what was asked

    def explain(self, name, wanted, config, depth=0, seen=None):
        """Why ``name`` (CONFIG_X) is not one of ``wanted`` in ``config`` -> dict with a ``reason``
        sentence naming the unmet dependencies (each explained in turn, a few levels deep)."""
        seen = set() if seen is None else seen
        sym = name[len("CONFIG_"):]
        seen.add(sym)
        got = config.get(name, "n")
        out = dict(option=name, wanted=list(wanted), got=got, unmet=[], selected_by=[], defaults=[])
        entries = self.entries.get(sym)
        if not entries:
            out["reason"] = "%s is not defined in any Kconfig file of this tree (misspelt, or added by a patch " \
                            "that is not in the series)" % name
            return out
        need = 1 if "m" in wanted else 2
        for e in entries:
            conds = e.context + [(x[0], x[1], x[2], "depends on") for x in e.depends]
            # A prompt hidden by its own ``if`` (``bool "..." if EXPERT``) ignores the fragment.
            if e.prompt_ifs and all(c is not None and c.value(config) == 0 for c, _line in e.prompt_ifs):
                conds += [(c, e.path, line, "prompt") for c, line in e.prompt_ifs]
            for expr, path, line, what in conds:
                if expr.value(config) >= need:
                    continue
                unset = [s for s in expr.symbols() if _tri(_sym_value(s, config)) < need]
                item = dict(expr=expr.text, file=path, line=line, kind=what,
                            unset=["CONFIG_" + s for s in unset], why=[])
                if depth < 3:
                    for s in unset:
                        if s in seen or s not in self.entries:
                            continue
                        sub = self.explain("CONFIG_" + s, ["y", "m"] if need == 1 else ["y"], config, depth + 1, seen)
                        if sub["unmet"] or sub["selected_by"] or sub["defaults"]:
                            item["why"].append(sub)
                out["unmet"].append(item)
        out["prompt"] = any(e.prompt for e in entries)
        out["defaults"] = []
        if not out["unmet"] and not out["prompt"]:
            out["selected_by"] = ["CONFIG_" + s for s, _cond in self.selected_by.get(sym, [])]
            # Without a prompt the value is its default: say which symbols that default lacks.
            for e in entries:
                for expr in e.defaults:
                    if expr.value(config) < need:
                        unset = ["CONFIG_" + s for s in expr.symbols() if _tri(_sym_value(s, config)) < need]
                        out["defaults"].append(dict(expr=expr.text, file=e.path, unset=unset))
        out["reason"] = _reason(out)
        return out


def _default_expr(rest):
    """``default A if B`` / ``def_bool A if B`` -> the Expr ``(A) && (B)``; a prompt string is not a default."""
    value, _if, cond = rest.partition(" if ")
    if value.strip().startswith(('"', "'")) and not cond:
        return Expr(value)
    return Expr("(%s) && (%s)" % (value, cond) if cond else value)


def _fmt_values(values):
    return " or ".join(values)


def _reason(info):
    parts = []
    for u in info["unmet"]:
        if u["kind"] == "depends on":
            s = "%s:%d depends on %s" % (u["file"], u["line"], u["expr"])
        elif u["kind"] == "prompt":
            s = "%s:%d can be set only if %s" % (u["file"], u["line"], u["expr"])
        else:
            s = "%s:%d sits inside `%s %s`" % (u["file"], u["line"], u["kind"], u["expr"])
        if u["unset"]:
            s += " (unset: %s)" % ", ".join(u["unset"])
        for sub in u["why"]:
            s += " [" + sub["reason"] + "]"
        parts.append(s)
    if parts:
        return "%s needs %s" % (info["option"], " and ".join(parts))
    if not info.get("prompt", True):
        said = []
        if info.get("defaults"):
            said.append("its default is %s" % " or ".join(
                "`%s`%s" % (d["expr"], " (unset: %s)" % ", ".join(d["unset"]) if d["unset"] else "")
                for d in info["defaults"]))
        if info["selected_by"]:
            said.append("`select` sets it from %s (none of them set)" % ", ".join(info["selected_by"]))
        return "%s has no prompt: %s" % (info["option"], "; ".join(said) or "nothing sets it")
    return "%s has its dependencies met but olddefconfig set it to %s (a choice, a range, or =m without " \
           "CONFIG_MODULES)" % (info["option"], info["got"])


def check_required(kconfig, config, required):
    """Required options that did not survive -> [explanation dict], empty when all did."""
    dropped = []
    for name, accepted in required:
        if config.get(name, "n") not in accepted:
            dropped.append(kconfig.explain(name, accepted, config))
    return dropped


def dropped_message(dropped):
    return "required kernel option(s) did not survive olddefconfig: " + "; ".join(
        "%s wanted %s, got %s: %s" % (d["option"], _fmt_values(d["wanted"]), d["got"], d["reason"]) for d in dropped)


def check_fragment(config, fragment):
    """Fragment options olddefconfig changed (merge_config.sh -m drops them silently)."""
    return [(n, v, config.get(n, "n")) for n, v in fragment if config.get(n, "n") != v]
