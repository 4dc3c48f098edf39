# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a VM, and its host, can be live-updated, decided before anything pauses.

A VM is preservable when its RAM is all on the backend and shared (cpr-reboot with x-ignore-shared
writes only device state; private or anonymous RAM would be lost at kexec), when QEMU reports no
migration blocker in cpr-reboot mode, when nothing in it is a device cpr-reboot cannot carry
(passthrough, vhost), when the restoring QEMU offers its machine type, and when the restoring QEMU
can reopen its disks, NICs and kernel files.

The deciding functions (``vm_problems``, ``argv_problems``, ``reopen_problems``,
``host_problems``) are pure: they take what was gathered and return problems, each
``{"vm", "check", "detail"}`` saying plainly why. The gatherers (``ask_qemu``,
``target_machines``, ``reopen_env``, ``host_facts``) do the I/O, with injectable paths and QMP.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import posixpath

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import confine, hostinfo, procs
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import preserves_through_luo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.hostinfo import parse_meminfo
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qemuopts import split_opts
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.qmp import QMPError

# What the save sets before it migrates (cpr.CAPABILITIES / cpr._prepare_migration). QEMU keeps one
# blocker list per migration mode and query-migrate reports the current mode's list: a blocker
# registered for normal migration only (vhost logging, VDI/VHDX/VPC images...) is not one for
# cpr-reboot, so the question must be asked in the mode the save uses.
CPR_CAPABILITIES = ("events", "x-ignore-shared")
CPR_MODE = "cpr-reboot"

# Run states in which a VM cannot be saved now (a save stops a running or paused VM).
BAD_STATES = ("inmigrate", "postmigrate", "finish-migrate", "internal-error", "io-error",
              "guest-panicked", "shutdown", "restore-vm", "save-vm", "watchdog", "colo")

# Device drivers whose state cpr-reboot cannot carry across a kexec: the state lives in host
# hardware or in another process, not in QEMU's device state.
PASSTHROUGH = ("vfio-", "usb-host", "u2f-passthru", "xen-pci-passthrough", "pci-assign", "kvm-pci-assign")
VHOST_USER = ("vhost-user-",)
VHOST = ("vhost-",)

QCOW2_MAGIC = b"QFI\xfb"
HUGETLB_DIRS = ("/dev/hugepages", "/hugepages", "/mnt/huge")
SYS_NET = "/sys/class/net"
BRIDGE_CONF = "/etc/qemu/bridge.conf"
COLLECTION_HOLDER = "luo-hold"  # the collection's memfd holder: `agent luo-hold`


def problem(vm, check, detail):
    return {"vm": vm, "check": check, "detail": detail}


def _dedup(problems):
    seen, out = set(), []
    for p in problems:
        key = (p["vm"], p["check"], p["detail"])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# -- argv -----------------------------------------------------------------------------------------

def _on(value):
    return str(value).lower() in ("on", "yes", "true", "1", "y")


def parse_argv(argv):
    """The options that matter here, from a QEMU argv: [(option, value)], options without
    their leading dashes (``--device`` and ``-device`` alike)."""
    out, i = [], 1
    flags = ("S", "nodefaults", "only-migratable", "snapshot", "daemonize", "no-reboot",
             "no-shutdown", "enable-kvm", "mem-prealloc", "no-user-config", "nographic")
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            name = a.lstrip("-")
            if name in flags or i + 1 >= len(argv):
                out.append((name, None))
                i += 1
            else:
                out.append((name, argv[i + 1]))
                i += 2
        else:
            i += 1  # a stray word (a disk image given without -hda)
    return out


def _is_hugetlb_path(path):
    path = posixpath.normpath(path or "")
    return any(path == d or path.startswith(d + "/") for d in HUGETLB_DIRS)


def device_problem(driver, backend):
    """Why a device of this driver (QOM type) cannot be carried, or None."""
    if not driver:
        return None
    if driver.startswith(PASSTHROUGH):
        return ("device %s is passthrough: its state is in host hardware, which cpr-reboot does not "
                "save and the new kernel resets" % driver)
    if driver.startswith(VHOST_USER):
        return ("device %s is served by a vhost-user process outside QEMU: cpr-reboot saves none of "
                "that process's state" % driver)
    if driver.startswith(VHOST):
        return ("device %s is a kernel vhost device: its rings live in the host kernel, which the "
                "kexec replaces" % driver)
    return None


def _memory_problems(vm, backends, machine_backend, conf, backend):
    """``backends``: [{id, type, share, mem-path, hugetlb}], as QEMU reports them or as argv sets
    them. The RAM must be on the machine's memory backend and on nothing else than the VM's file."""
    out = []
    mem_path = posixpath.normpath(conf.get("mem_path") or "")
    if not machine_backend:
        out.append(problem(vm, "memory", "RAM is not on a memory backend (plain -m): QEMU's own anonymous "
                                         "RAM is lost at kexec; the VM needs -machine memory-backend= and a "
                                         "share=on memory-backend-file on %s" % mem_path))
    for b in backends:
        bid, btype = b.get("id"), b.get("type") or "memory-backend-ram"
        path = b.get("mem-path")
        where = "memory backend %s (%s%s)" % (bid, btype, ", " + path if path else "")
        if btype not in ("memory-backend-file", "memory-backend-memfd"):
            out.append(problem(vm, "memory", "%s is anonymous memory: lost at kexec" % where))
            continue
        hugetlb = _on(b.get("hugetlb")) or _is_hugetlb_path(path)
        if hugetlb:
            if preserves_through_luo(backend):
                out.append(problem(vm, "backend", "%s is hugetlb memory: LUO refuses hugetlb memfds (it "
                                                  "preserves shmem memfds only)" % where))
            else:
                out.append(problem(vm, "backend", "%s is hugetlb memory: the %s backend cannot hold it "
                                                  "(hugetlbfs does not survive a kexec)" % (where, backend)))
        if not _on(b.get("share", btype == "memory-backend-memfd")):
            out.append(problem(vm, "memory", "%s has share=off: its pages are private to QEMU, not in the "
                                             "backend file; cpr-reboot would copy them into the state "
                                             "file at every pause and they are lost at kexec" % where))
        if btype == "memory-backend-memfd" and not hugetlb:
            out.append(problem(vm, "memory", "%s is QEMU's own memfd: nothing preserves it across kexec "
                                             "(luo VMs map the holder's memfd by %s)" % (where, mem_path)))
        elif btype == "memory-backend-file" and not hugetlb and path and posixpath.normpath(path) != mem_path \
                and not (path == confine.MEM_FD_PATH and conf.get("mem_fd")):  # the agent handed it over
            out.append(problem(vm, "memory", "%s is not the VM's backend file %s: its content is not "
                                             "preserved" % (where, mem_path)))
    return out


def argv_problems(conf, argv, backend=None):
    """What the argv alone says cannot be carried: devices, and the RAM's backends (used when QEMU
    did not answer about memory)."""
    vm = conf.get("name")
    backend = backend or conf.get("backend")
    out, devices, backends = [], [], []
    machine_backend, has_m, has_mem_path = None, False, None
    numa_memdevs = []
    for name, value in parse_argv(argv):
        if value is None:
            continue
        if name == "device":
            driver, _opts = split_opts(value)
            devices.append(driver)
        elif name == "netdev":
            kind, _opts = split_opts(value)
            if kind == "vhost-user" or kind == "vhost-vdpa":
                out.append(problem(vm, "device", "-netdev %s: the network backend is another process "
                                                 "(or the host kernel), which cpr-reboot does not save" % kind))
        elif name == "object":
            kind, opts = split_opts(value)
            if kind and kind.startswith("memory-backend-"):
                b = {"id": opts.get("id"), "type": kind, "mem-path": opts.get("mem-path"),
                     "hugetlb": opts.get("hugetlb", "off")}
                if "share" in opts:
                    b["share"] = opts["share"]
                backends.append(b)
        elif name == "machine" or name == "M":
            _t, opts = split_opts(value)
            machine_backend = opts.get("memory-backend", machine_backend)
        elif name == "m":
            has_m = True
        elif name == "mem-path":
            has_mem_path = value
        elif name == "numa":
            _t, opts = split_opts(value)
            if opts.get("memdev"):
                numa_memdevs.append(opts["memdev"])
    for driver in devices:
        why = device_problem(driver, backend)
        if why:
            out.append(problem(vm, "device", why))
    if has_mem_path:
        out.append(problem(vm, "memory", "-mem-path %s gives private (share=off) RAM: lost at kexec; use "
                                         "-object memory-backend-file,share=on" % has_mem_path))
    elif has_m or backends or machine_backend:
        out += _memory_problems(vm, backends, machine_backend or (numa_memdevs and numa_memdevs[0]), conf, backend)
    return _dedup(out)


def argv_files(argv):
    """[(option, path)] of the kernel-side files the restoring QEMU opens again."""
    return [(n, v) for n, v in parse_argv(argv) if n in ("kernel", "initrd", "dtb", "bios") and v]


# -- QEMU's answers -------------------------------------------------------------------------------

def _key(execute, *args):
    return " ".join((execute,) + tuple(a for a in args if a))


def ask_qemu(qmp):
    """Ask a running VM's QEMU (``qmp``: connected, with ``cmd(execute, **arguments)``) what decides
    preservability; {"execute [path] [property]": answer} plus "errors": {key: message}.

    The migration mode and capabilities the save uses are set for the query and put back after:
    they change nothing until a migration starts, and QEMU's blocker list depends on the mode."""
    answers, errors = {}, {}

    def ask(key, execute, **arguments):
        try:
            answers[key] = qmp.cmd(execute, **arguments)
        except QMPError as exc:
            errors[key] = str(exc)
            return None
        return answers[key]

    ask("query-status", "query-status")
    params = ask("query-migrate-parameters", "query-migrate-parameters") or {}
    caps = ask("query-migrate-capabilities", "query-migrate-capabilities") or []
    ask("query-migrate", "query-migrate")
    old_caps = dict((c.get("capability"), c.get("state")) for c in caps)
    want = [{"capability": c, "state": True} for c in CPR_CAPABILITIES]
    ask("migrate-set-capabilities", "migrate-set-capabilities", capabilities=want)
    set_caps = "migrate-set-capabilities" not in errors
    ask("migrate-set-parameters", "migrate-set-parameters", mode=CPR_MODE)
    set_mode = "migrate-set-parameters" not in errors
    if set_mode:
        ask(_key("query-migrate", CPR_MODE), "query-migrate")
        if params.get("mode", "normal") != CPR_MODE:
            ask("migrate-set-parameters restore", "migrate-set-parameters", mode=params.get("mode", "normal"))
    if set_caps:
        back = [{"capability": c, "state": bool(old_caps.get(c))} for c in CPR_CAPABILITIES
                if not old_caps.get(c)]
        if back:
            ask("migrate-set-capabilities restore", "migrate-set-capabilities", capabilities=back)
    ask("qom-get /machine type", "qom-get", path="/machine", property="type")
    ask("qom-get /machine memory-backend", "qom-get", path="/machine", property="memory-backend")
    ask("query-memdev", "query-memdev")
    objects = ask("qom-list /objects", "qom-list", path="/objects") or []
    for child in objects:
        ctype = _child_type(child)
        if not ctype.startswith("memory-backend-"):
            continue
        path = "/objects/" + child["name"]
        props = [p.get("name") for p in (ask(_key("qom-list", path), "qom-list", path=path) or [])]
        for prop in ("mem-path", "share", "hugetlb"):
            if prop in props:
                ask(_key("qom-get", path, prop), "qom-get", path=path, property=prop)
    for where in ("/machine/peripheral", "/machine/peripheral-anon"):
        ask(_key("qom-list", where), "qom-list", path=where)
    answers["errors"] = errors
    return answers


def _child_type(entry):
    t = entry.get("type") or ""
    return t[len("child<"):-1] if t.startswith("child<") and t.endswith(">") else ""


def machine_type(answers):
    """The VM's concrete machine type from QEMU (an alias like ``q35`` resolved), or None."""
    t = answers.get("qom-get /machine type")
    if isinstance(t, str) and t.endswith("-machine"):
        return t[:-len("-machine")]
    return t or None


def qemu_backends(answers):
    """[{id, type, size, share, mem-path, hugetlb}] of the memory backends QEMU has."""
    out = []
    memdev = dict((m.get("id"), m) for m in answers.get("query-memdev") or [])
    for child in answers.get("qom-list /objects") or []:
        ctype = _child_type(child)
        if not ctype.startswith("memory-backend-"):
            continue
        path = "/objects/" + child["name"]
        b = {"id": child["name"], "type": ctype}
        m = memdev.get(child["name"], {})
        if "size" in m:
            b["size"] = m["size"]
        for prop in ("share", "mem-path", "hugetlb"):
            k = _key("qom-get", path, prop)
            if k in answers:
                b[prop] = answers[k]
            elif prop in m:
                b[prop] = m[prop]
        out.append(b)
    return out


def qemu_devices(answers):
    """[(id, QOM type)] of the devices the VM was given (-device, hotplug)."""
    out = []
    for where in ("/machine/peripheral", "/machine/peripheral-anon"):
        for child in answers.get(_key("qom-list", where)) or []:
            t = _child_type(child)
            if t:
                out.append((child.get("name"), t))
    return out


def _qemu_problems(conf, answers, backend):
    vm = conf.get("name")
    out = []
    errors = answers.get("errors") or {}
    status = (answers.get("query-status") or {}).get("status")
    if status in BAD_STATES:
        out.append(problem(vm, "state", "QEMU's run state is %s: a save needs a running or paused VM" % status))
    cpr_key = _key("query-migrate", CPR_MODE)
    if cpr_key in answers:
        for reason in (answers[cpr_key] or {}).get("blocked-reasons") or []:
            out.append(problem(vm, "migration_blocker", "QEMU blocks a cpr-reboot migration: %s" % reason))
    else:
        why = errors.get("migrate-set-parameters") or errors.get(cpr_key) or "no answer"
        out.append(problem(vm, "migration_blocker", "QEMU could not be asked for cpr-reboot blockers "
                                                    "(%s)" % why))
    mig = (answers.get("query-migrate") or {}).get("status")
    if mig in ("setup", "active", "device", "pre-switchover", "postcopy-active", "cancelling", "wait-unplug"):
        out.append(problem(vm, "state", "a migration is already %s" % mig))
    if "qom-list /objects" in answers:
        # QEMU answers with the backend's QOM path (/objects/ram0), argv names its id.
        mb = (answers.get("qom-get /machine memory-backend") or "").rsplit("/", 1)[-1] or None
        backends = qemu_backends(answers)
        # QEMU names the memory it makes for a plain -m "pc.ram" (memory-backend-ram): that is the
        # "not on a memory backend" case, said once.
        implicit = [b for b in backends if b["id"] == mb and b["type"] == "memory-backend-ram"
                    and b["id"] == "pc.ram"]
        if implicit:
            for b in implicit:
                b["implicit"] = True
            out += _memory_problems(vm, [b for b in backends if not b.get("implicit")], None, conf, backend)
        else:
            out += _memory_problems(vm, backends, mb, conf, backend)
    for dev_id, dtype in qemu_devices(answers):
        why = device_problem(dtype, backend)
        if why:
            out.append(problem(vm, "device", why))
    return out


def vm_problems(conf, answers, target_machines, backend=None, env=None):
    """Every reason VM ``conf`` cannot be live-updated.

    ``answers``: ``ask_qemu``'s (None or {"error": ...} when QEMU did not answer); QEMU's word
    decides memory and blockers, the argv adds the devices QEMU does not refuse itself (cpr-reboot
    has no blocker for passthrough). ``target_machines``: the machine types (and aliases) the
    restoring binary offers, None when unknown. ``env``: ``reopen_env``'s, for the disk/NIC/file
    checks (skipped when None)."""
    vm = conf.get("name")
    backend = backend or conf.get("backend")
    if backend is not None and not isinstance(backend, str):
        backend = backend.name
    out = []
    argv = conf.get("argv")
    answered = bool(answers) and "error" not in answers
    if not answered:
        out.append(problem(vm, "qemu", "QEMU did not answer over QMP (%s): cannot tell its blockers or "
                                       "memory" % ((answers or {}).get("error") or "no answer")))
    else:
        out += _qemu_problems(conf, answers, backend)
    if argv:
        ap = argv_problems(conf, argv, backend)
        if answered and "qom-list /objects" in answers:
            ap = [p for p in ap if p["check"] not in ("memory", "backend")]  # QEMU's word is final
        out += ap
    machine = (machine_type(answers) if answered else None) or conf.get("machine")
    if target_machines is not None and machine and machine not in target_machines:
        out.append(problem(vm, "machine", "machine type %s is not offered by the restoring QEMU %s: it "
                                          "could not load the saved state" % (machine, conf.get("_target_qemu")
                                                                              or conf.get("qemu") or "binary")))
    if env is not None:
        out += reopen_problems(conf, env)
    return _dedup(out)


# -- the restoring binary -------------------------------------------------------------------------

def parse_machine_help(text):
    """``qemu -machine help`` -> set of machine types and aliases."""
    out = set()
    for line in (text or "").splitlines():
        if not line or line.startswith("Supported machines") or not line[0].isalnum():
            continue
        parts = line.split()
        out.add(parts[0])
        if "(alias of" in line:
            out.add(line.split("(alias of", 1)[1].strip(" )"))
    return out


def machines_from_query(machines):
    """QMP query-machines -> set of names and aliases."""
    out = set()
    for m in machines or []:
        out.add(m["name"])
        if m.get("alias"):
            out.add(m["alias"])
    return out


def target_machines(binary, run):
    """The machine types ``binary`` offers (its ``-machine help``); ``run(argv)`` gives (rc, stdout,
    stderr) (the module's run_command). Raises OSError/ValueError when it cannot say."""
    # Asked twice at most: once, in a molecule run, it answered rc 0 with no list at all, and an
    # answer a second later was complete; a refusal must come from QEMU's answer, not a hiccup.
    for attempt in (1, 2):
        rc, out, err = run([binary, "-machine", "help"])
        if rc != 0:
            raise ValueError("%s -machine help failed (rc=%s): %s" % (binary, rc, err.strip()))
        machines = parse_machine_help(out)
        if machines:
            return machines
    raise ValueError("%s -machine help listed no machine types (twice; stdout %r, stderr %r)"
                     % (binary, (out or "")[:200], (err or "")[:200]))


# -- disks, NICs and files the restoring QEMU reopens ----------------------------------------------

def parse_bridge_conf(path, read, depth=0):
    """qemu-bridge-helper's ACL: [("allow"|"deny", name or "all")] from ``path`` and its
    ``include`` files; ``read(path)`` returns text or None."""
    text = read(path)
    if text is None or depth > 8:
        return None if depth == 0 else []
    rules = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, _sep, arg = line.partition(" ")
        arg = arg.strip()
        if word in ("allow", "deny") and arg:
            rules.append((word, arg))
        elif word == "include" and arg:
            rules += parse_bridge_conf(arg, read, depth + 1) or []
    return rules


def bridge_allowed(rules, bridge):
    """qemu-bridge-helper's decision: allowed by some rule and denied by none."""
    allowed = any(w == "allow" and a in ("all", bridge) for w, a in rules)
    denied = any(w == "deny" and a in ("all", bridge) for w, a in rules)
    return allowed and not denied


def _file_state(path):
    st = {"exists": os.path.exists(path)}
    if st["exists"]:
        st["readable"] = os.access(path, os.R_OK)
        st["writable"] = os.access(path, os.W_OK)
        if st["readable"]:
            try:
                with open(path, "rb") as fh:
                    st["format"] = "qcow2" if fh.read(4) == QCOW2_MAGIC else "raw"
            except (IOError, OSError) as exc:
                st["readable"] = False
                st["error"] = str(exc)
    return st


def reopen_env(conf, sys_net=SYS_NET, bridge_conf=BRIDGE_CONF, read=None, file_state=None):
    """What ``reopen_problems`` decides on, read from the host: each disk's and kernel file's
    state, the network interfaces and bridges, qemu-bridge-helper's rules."""
    read = read or _read_text
    file_state = file_state or _file_state
    files = {}
    for d in conf.get("disks") or []:
        if d.get("path"):
            files[d["path"]] = file_state(d["path"])
    for _opt, path in argv_files(conf.get("argv") or []):
        files[path] = file_state(path)
    if conf.get("kernel"):
        files[conf["kernel"]] = file_state(conf["kernel"])
    try:
        names = os.listdir(sys_net)
    except OSError:
        names = []
    bridges = [n for n in names if os.path.isdir(os.path.join(sys_net, n, "bridge"))]
    env = {"files": files, "interfaces": sorted(names), "bridges": sorted(bridges),
           "bridge_conf": bridge_conf, "bridge_rules": None}
    if any(n.get("type") == "bridge" for n in conf.get("nics") or []):
        env["bridge_rules"] = parse_bridge_conf(bridge_conf, read)
    return env


def _read_text(path):
    try:
        with open(path) as fh:
            return fh.read()
    except (IOError, OSError):
        return None


def reopen_problems(conf, env):
    """Disks, NICs and kernel files that the restoring QEMU could not open again."""
    vm = conf.get("name")
    out = []
    files = env.get("files") or {}
    for d in conf.get("disks") or []:
        path = d.get("path")
        st = files.get(path)
        if not path or st is None:
            continue
        if not st.get("exists"):
            out.append(problem(vm, "disk", "disk %s is missing" % path))
            continue
        if not st.get("readable"):
            out.append(problem(vm, "disk", "disk %s is not readable%s" % (path, ": " + st["error"] if st.get("error") else "")))
            continue
        if not d.get("readonly") and not st.get("writable"):
            out.append(problem(vm, "disk", "disk %s is not writable (the VM has it read-write)" % path))
        fmt, found = d.get("format"), st.get("format")
        if fmt in ("qcow2", "raw") and found and fmt != found:
            out.append(problem(vm, "disk", "disk %s is defined as %s but the image is %s" % (path, fmt, found)))
    ifaces, bridges = set(env.get("interfaces") or []), set(env.get("bridges") or [])
    for n in conf.get("nics") or []:
        kind = n.get("type")
        if kind == "bridge":
            br = n.get("bridge")
            if br not in bridges:
                out.append(problem(vm, "nic", "bridge %s does not exist (no %s/%s/bridge)"
                                   % (br, SYS_NET, br)))
            rules = env.get("bridge_rules")
            if rules is None:
                out.append(problem(vm, "nic", "bridge %s: %s is missing, qemu-bridge-helper allows no "
                                              "bridge" % (br, env.get("bridge_conf", BRIDGE_CONF))))
            elif not bridge_allowed(rules, br):
                out.append(problem(vm, "nic", "bridge %s is not allowed in %s (qemu-bridge-helper would "
                                              "refuse it)" % (br, env.get("bridge_conf", BRIDGE_CONF))))
        elif kind == "tap":
            if n.get("ifname") and n["ifname"] not in ifaces:
                out.append(problem(vm, "nic", "tap %s does not exist" % n["ifname"]))
    kernel_files = list(argv_files(conf.get("argv") or []))
    if conf.get("kernel"):
        kernel_files.append(("kernel", conf["kernel"]))
    for opt, path in kernel_files:
        st = files.get(path)
        if st is None:
            continue
        if not st.get("exists"):
            out.append(problem(vm, "file", "-%s file %s is missing" % (opt, path)))
        elif not st.get("readable"):
            out.append(problem(vm, "file", "-%s file %s is not readable" % (opt, path)))
    return _dedup(out)


# -- the host --------------------------------------------------------------------------------------

def host_problems(facts):
    """The host's own reasons, each {"vm": None, "check", "detail", "blocks"}; ``blocks`` False for
    what is reported but does not stop the update.

    ``facts``: {"backend", "meminfo": {key: bytes}, "liveupdate": {"exists": bool, "holders":
    [{"pid", "comm", "cmdline"}]}, "libvirt": [domain]} (``host_facts``)."""
    out = []
    if preserves_through_luo(facts.get("backend")):
        lu = facts.get("liveupdate") or {}
        if not lu.get("exists"):
            out.append({"vm": None, "check": "liveupdate", "blocks": True,
                        "detail": "/dev/liveupdate is missing: boot with kho=on liveupdate=on"})
        holders = lu.get("holders") or []
        ours = [h for h in holders if COLLECTION_HOLDER in (h.get("cmdline") or "")]
        for h in holders:
            # Beside the collection's holder, PID 1 holds the same open device in that unit's fd store
            # (FileDescriptorStorePreserve=yes). PID 1 alone proves nothing of whose session it is.
            if h in ours or (ours and str(h.get("pid")) == "1"):
                continue
            out.append({"vm": None, "check": "liveupdate", "blocks": True,
                        "detail": "/dev/liveupdate is held by %s[%s], not by the collection's holder: "
                                  "LUO allows one opener, so the VMs' memfds cannot be preserved"
                                  % (h.get("comm"), h.get("pid"))})
    out += libvirt_problems(facts.get("libvirt") or [])
    mi = facts.get("meminfo") or {}
    if "CmaFree" in mi and "CmaTotal" in mi and mi["CmaFree"] > mi["CmaTotal"]:
        out.append({"vm": None, "check": "kho_cma", "blocks": False,
                    "detail": "CmaFree (%d kB) > CmaTotal (%d kB): the KHO scratch area came back as CMA; "
                              "long-term page pinning (VFIO, RDMA) fails with ENOMEM on this kernel"
                              % (mi["CmaFree"] // 1024, mi["CmaTotal"] // 1024)})
    return out


# What libvirt (11.3 in Debian trixie, 12.9 in trixie-backports) lacks to carry a domain through a
# live update, and what the operator can do; each claim is a recorded run in docs/libvirt.md.
LIBVIRT_LACKS = ("libvirt cannot carry it: it never sets migration mode cpr-reboot nor x-ignore-shared (its "
                 "own restore of such a state fails), its save and managedsave copy all guest RAM into the "
                 "image and stop the domain, and it deletes the domain's memory file in memory_backing_dir "
                 "whenever its QEMU stops")
LIBVIRT_TODO = ("Shut the domain down before the update and start it after (virsh shutdown %s, virsh start "
                "%s), or move it to a guestmemfs_vms definition; docs/libvirt.md")


def libvirt_problems(domains):
    """The host's refusal for each QEMU domain libvirt runs (``hostinfo.libvirt_domains``): the
    collection cannot save it, and the kexec would end it with its memory."""
    out = []
    for d in domains:
        where = ", ".join(str(x) for x in (
            "pid %s" % d.get("pid") if d.get("pid") else None,
            "uuid %s" % d.get("uuid") if d.get("uuid") else None, d.get("status")) if x)
        out.append({"vm": None, "check": "libvirt", "blocks": True,
                    "detail": "libvirt runs QEMU domain %s (%s): a kexec would end it and its memory. %s. %s"
                              % (d.get("name"), where, LIBVIRT_LACKS,
                                 LIBVIRT_TODO % (d.get("name"), d.get("name")))})
    return out


def host_facts(backend, proc="/proc", device="/dev/liveupdate", users=None, root="/"):
    """What ``host_problems`` decides on, read from ``proc``, ``device`` and (libvirt's domains)
    ``root``."""
    users = users or procs.users
    facts = {"backend": backend, "meminfo": parse_meminfo(_read_text(os.path.join(proc, "meminfo"))),
             "libvirt": hostinfo.libvirt_domains(root)}
    if preserves_through_luo(backend):
        holders = []
        exists = os.path.exists(device)
        if exists:
            for pid, comm, _path in users(device, proc=proc):
                raw = _read_text(os.path.join(proc, str(pid), "cmdline")) or ""
                holders.append({"pid": pid, "comm": comm, "cmdline": " ".join(raw.split("\0")).strip()})
        facts["liveupdate"] = {"exists": exists, "holders": holders}
    return facts
