# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The luo backend's holder: the one process that owns /dev/liveupdate and one memfd per VM.

QEMU maps a VM's memfd through ``/run/guestmemfs-liveupdate/luo/<vm>``, a link to the holder's
``/proc/<pid>/fd/<n>``, as ``memory-backend-file,share=on`` (so ``x-ignore-shared`` skips it).
Every fd the holder owns (device, session, memfds) is also kept in systemd's fd store
(``FileDescriptorStorePreserve=yes``): a holder that dies or is stopped loses nothing, its next
start gets them back. Before the kexec the holder preserves each memfd in a session under a token
recorded in the journal, and performs the kexec itself (reboot(2)): ``systemctl kexec`` would
kill it and close the session, un-preserving everything. After a KHO boot it retrieves the
session and each memfd by token; it finishes the session only once every VM is restored or held,
and never while a token failed to come back (FINISH would free it).

Control: one JSON request per connection on a root-only socket, answered with one JSON reply.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import stat
import sys
import time

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import cpr, journal, luo, manifest, sd_notify, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.cpr import LUO_LINK_DIR, RUN_DIR
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.journal import (
    SAVED_PHASES, VM_FINAL, load_journal, update_journal)
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.procs import users

LINK_DIR = LUO_LINK_DIR
SOCKET = os.path.join(RUN_DIR, "luo.sock")
SESSION = "guestmemfs-liveupdate"
# The one VM-name rule (it also fits systemd's FDNAME: no ':' and no control characters).
NAME_RE = vmdef.NAME_RE


class HolderError(Exception):
    """A request the holder refuses; the message says why and what to do."""


def mem_path(name):
    """Where QEMU, the manifest and the operator find VM ``name``'s memfd."""
    return os.path.join(LINK_DIR, name)


def token_for(index):
    # Tokens only need to be unique in the session; small integers read well in the journal.
    return index + 1


# -- systemd's fd store (sd_notify with SCM_RIGHTS), stdlib only ---------------------------------

def store_fd(name, fd):
    """Keep a dup of ``fd`` in the unit's fd store under ``name`` (FDPOLL=0: never dropped on poll)."""
    return sd_notify.notify("FDSTORE=1\nFDNAME=%s\nFDPOLL=0" % name, [fd])


def unstore_fd(name):
    return sd_notify.notify("FDSTOREREMOVE=1\nFDNAME=%s" % name)


def inherited_fds(environ=None):
    """{name: fd} that systemd handed back from the fd store (LISTEN_FDS from fd 3 on)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") not in (None, str(os.getpid())):
        return {}
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = (env.get("LISTEN_FDNAMES") or "").split(":")
    out = {}
    for i in range(count):
        name = names[i] if i < len(names) and names[i] else "unknown.%d" % i
        out[name] = 3 + i
    return out


# -- the holder -----------------------------------------------------------------------------------

class Holder(object):
    def __init__(self, dev_path=luo.DEVICE, link_dir=LINK_DIR, store=True):
        self.dev_path = dev_path
        self.link_dir = link_dir
        self.store = store
        self.device = None
        self.session = None        # outgoing (created here) or incoming (retrieved)
        self.vms = {}              # name -> fd
        self.tokens = {}           # name -> token, for the outgoing session
        self.retrieve_errors = {}  # name -> text, for the incoming session
        self.finished = False

    # fds and their names in the fd store
    def _keep(self, name, fd):
        if self.store:
            store_fd(name, fd)

    def _drop(self, name):
        if self.store:
            unstore_fd(name)

    def adopt(self, fds):
        """Take back what an earlier holder of this boot left in the fd store."""
        for name, fd in fds.items():
            if name == "device":
                self.device = luo.Device.__new__(luo.Device)
                self.device.fd = fd
            elif name in ("session.out", "session.in"):
                self.session = luo.Session(fd, SESSION, name == "session.in")
            elif name.startswith("vm."):
                self.vms[name[3:]] = fd
            else:
                os.close(fd)
        j = load_journal().get("luo") or {}
        if self.session is not None and not self.session.retrieved and j.get("boot_id") == journal.boot_id():
            self.tokens = dict((k, int(v)) for k, v in (j.get("tokens") or {}).items())
        if self.session is not None and self.session.retrieved and j.get("retrieved_boot_id") == journal.boot_id():
            self.retrieve_errors = dict(j.get("retrieve_errors") or {})
            self.finished = bool(j.get("finished_ts"))

    def open_device(self):
        if self.device is None:
            self.device = luo.Device(self.dev_path)
            self._keep("device", self.device.fd)

    def publish(self):
        """Point each VM's link at this process's fd (a new pid after a restart)."""
        if not os.path.isdir(self.link_dir):
            os.makedirs(self.link_dir, 0o700)
        for name, fd in self.vms.items():
            link = os.path.join(self.link_dir, name)
            tmp = link + ".new"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink("/proc/%d/fd/%d" % (os.getpid(), fd), tmp)
            os.rename(tmp, link)
        for entry in os.listdir(self.link_dir):
            if entry not in self.vms and not entry.endswith(".new"):
                os.unlink(os.path.join(self.link_dir, entry))

    def retrieve_after_kexec(self):
        """After a KHO boot from a host that preserved its VMs: the session and each memfd back by
        token, each outcome journaled. A token that fails stays in the session (not finished)."""
        j = load_journal()
        rec = j.get("luo") or {}
        if self.session is not None or not rec.get("tokens") or rec.get("boot_id") == journal.boot_id() \
                or rec.get("retrieved_boot_id") == journal.boot_id():
            return None
        if j.get("phase") not in SAVED_PHASES:
            return None
        got, errors = {}, {}
        try:
            self.session = self.device.retrieve_session(rec.get("session") or SESSION)
            self._keep("session.in", self.session.fd)
        except luo.LuoError as exc:
            errors = dict((name, str(exc)) for name in rec["tokens"])
        else:
            for name, token in sorted(rec["tokens"].items()):
                try:
                    fd = self.session.retrieve(int(token))
                except luo.LuoError as exc:
                    errors[name] = str(exc)
                    continue
                self.vms[name] = fd
                self._keep("vm." + name, fd)
                got[name] = token
        if errors:  # the manifest keeps each token too: say how to take a VM back by hand
            files = (manifest.load() or {}).get("files") or {}
            for name in errors:
                token = (files.get(name) or {}).get("luo_token")
                errors[name] += ("; its memory stays in the session (not finished). The manifest records "
                                 "token %s: agent luo retrieve %s %s, then agent verify %s and systemctl start "
                                 "guestmemfs-vm@%s" % (token, name, token, name, name)) if token else \
                    "; its memory stays in the session (not finished) until the holder finishes it"
        self.retrieve_errors = errors

        def fn(jj):
            r = jj.setdefault("luo", {})
            r.update(retrieved_boot_id=journal.boot_id(), retrieved=sorted(got), retrieve_errors=errors,
                     retrieved_ts=time.time())
            for name, err in errors.items():
                jj.setdefault("vms", {}).setdefault(name, {})["luo_error"] = err
        update_journal(fn, msg="luo: retrieved %s%s" % (", ".join(sorted(got)) or "nothing", (
            "; NOT retrieved: %s" % "; ".join("%s: %s" % kv for kv in sorted(errors.items()))) if errors else ""))
        return {"retrieved": sorted(got), "errors": errors}

    def ensure_configured(self, conf_dir=None):
        """At start: a fresh memfd for each configured luo VM that has none and no saved state
        waiting (a cold-booted host starts its VMs afresh). A VM whose state file waits keeps no
        memfd here: its memory did not come back, its verify says so and it is held."""
        conf_dir = conf_dir or cpr.CONF_DIR
        made, skipped = [], []
        for name in cpr.vm_names(conf_dir):
            vm = cpr.VM.load(name, conf_dir)
            if name in self.vms or os.path.dirname(vm.mem_path) != LINK_DIR:
                continue
            if os.path.exists(vm.state_path):
                skipped.append(name)
                continue
            try:
                self.ensure(name, vm.memory_bytes)
                made.append(name)
            except (HolderError, luo.LuoError) as exc:
                skipped.append("%s (%s)" % (name, exc))
        if made or skipped:
            update_journal(lambda j: None, msg="luo holder: new memfds for %s%s" % (
                ", ".join(made) or "none", "; none for %s (a saved state waits and its memory did not come back, or refused)"
                % ", ".join(skipped) if skipped else ""))
        return made, skipped

    # requests
    def status(self):
        out = {"pid": os.getpid(), "vms": {}, "session": None, "finished": self.finished,
               "retrieve_errors": self.retrieve_errors}
        for name, fd in sorted(self.vms.items()):
            out["vms"][name] = {"size": os.fstat(fd).st_size, "path": mem_path(name), "fd": fd,
                                "token": self.tokens.get(name)}
        if self.session is not None:
            out["session"] = {"name": self.session.name, "retrieved": self.session.retrieved}
        return out

    def ensure(self, name, size):
        """A memfd of exactly ``size`` bytes for VM ``name``: created, or the existing one if its size
        matches. Refused while a session holds the VMs (a preserved memfd cannot change)."""
        if not NAME_RE.match(name or ""):
            raise HolderError("VM name %r: a VM name is %s" % (name, vmdef.NAME_RULE))
        size = int(size)
        if size <= 0 or size % 4096:
            raise HolderError("%s: size %d is not a positive multiple of 4096" % (name, size))
        if name in self.vms:
            have = os.fstat(self.vms[name]).st_size
            if have != size:
                raise HolderError("%s already has a %d-byte memfd, not %d: it holds the VM's memory; stop the VM "
                                  "and drop it first (agent luo drop %s)" % (name, have, size, name))
            return {"changed": False, "path": mem_path(name), "size": size}
        if self.session is not None and not self.session.retrieved:
            raise HolderError("a live update session is open (preserved: %s): no new memfd until it ends"
                              % ", ".join(sorted(self.tokens)))
        fd = luo.create_memfd("guestmemfs-" + name, size, flags=0)
        self.vms[name] = fd
        self._keep("vm." + name, fd)
        self.publish()
        return {"changed": True, "path": mem_path(name), "size": size}

    def drop(self, name, users):
        if name not in self.vms:
            return {"changed": False}
        if name in self.tokens:
            raise HolderError("%s is preserved for a live update: unpreserve first" % name)
        stake = [p for p in journal.at_stake() if p.startswith(name + " ")]
        if stake:
            raise HolderError("%s's memfd is its memory and stays: %s. Recover the VM first (agent verify %s, "
                              "systemctl start guestmemfs-vm@%s)" % (name, "; ".join(stake), name, name))
        if users:
            raise HolderError("%s's memory is in use by %s: stop the VM first" % (name, ", ".join(users)))
        os.close(self.vms.pop(name))
        self._drop("vm." + name)
        self.publish()
        return {"changed": True}

    def preserve(self, names, update_id=None):
        """A new session with each VM's memfd preserved under a token, recorded in the journal.
        Nothing is paused; the memfds may still be written (what is in them at the kexec is kept)."""
        missing = [n for n in names if n not in self.vms]
        if missing:
            raise HolderError("no memfd for %s: nothing preserved" % ", ".join(missing))
        if self.session is not None and not self.session.retrieved:
            if sorted(self.tokens) == sorted(names):
                return {"changed": False, "tokens": self.tokens}
            raise HolderError("a session already preserves %s, not %s: unpreserve first"
                              % (", ".join(sorted(self.tokens)), ", ".join(sorted(names))))
        if self.session is not None and self.session.retrieved and not self.finished:
            raise HolderError("the session retrieved after the last kexec is not finished (%s): finish it "
                              "before a new update" % (self.retrieve_errors or "VMs pending"))
        if self.session is not None:  # finished incoming session
            self.session.close()
            self._drop("session.in")
            self.session = None
        try:
            self.open_device()
            session = self.device.create_session(SESSION)
        except luo.LuoError as exc:
            raise HolderError("nothing preserved and nothing paused: %s" % exc)
        tokens = {}
        try:
            for i, name in enumerate(sorted(names)):
                session.preserve(self.vms[name], token_for(i))
                tokens[name] = token_for(i)
        except luo.LuoError as exc:
            session.close()  # un-preserves what this call preserved
            update_journal(lambda j: None, msg="luo: preserve failed, nothing preserved: %s" % exc)
            raise HolderError("preserving failed, nothing is preserved and nothing was paused: %s" % exc)
        self.session, self.tokens = session, tokens
        self._keep("session.out", session.fd)

        def fn(j):
            j["luo"] = {"session": SESSION, "tokens": tokens, "boot_id": journal.boot_id(), "update_id": update_id,
                        "preserved_ts": time.time()}
        update_journal(fn, msg="luo: preserved %s" % ", ".join("%s=%d" % kv for kv in sorted(tokens.items())))
        return {"changed": True, "tokens": tokens}

    def unpreserve(self):
        if self.session is None or self.session.retrieved:
            return {"changed": False}
        self.session.close()
        self._drop("session.out")
        self.session, was = None, self.tokens
        self.tokens = {}
        update_journal(lambda j: j.pop("luo", None), msg="luo: session closed, %s no longer preserved"
                       % ", ".join(sorted(was)))
        return {"changed": True}

    def kexec(self):
        """The kexec, from this process, which holds the session. The caller (agent kexec) has
        checked that every VM is saved and a kernel is loaded by kexec_file_load."""
        if self.session is None or self.session.retrieved:
            raise HolderError("no preserved session: a kexec now would lose every VM's memory")
        lost = sorted(set(self.vms) - set(self.tokens))
        if lost:
            raise HolderError("memfds not preserved: %s: a kexec now would lose them" % ", ".join(lost))
        # The same journal check as agent kexec's guard: whoever asks, no kexec of unsaved VMs.
        unsaved = journal.not_saved(load_journal(), journal.boot_id())
        if unsaved:
            raise HolderError("not kexecing, the VMs are not saved: %s" % "; ".join(unsaved))
        luo.reboot_kexec()  # returns only on failure
        raise HolderError("reboot(LINUX_REBOOT_CMD_KEXEC) returned")

    def retrieve(self, name, token):
        """Recovery: take back one memfd by token from the session retrieved in this boot (one that
        did not come back at start, e.g. under a wrong token), then verify and start its VM."""
        if not NAME_RE.match(name or ""):
            raise HolderError("VM name %r: a VM name is %s" % (name, vmdef.NAME_RULE))
        if self.session is None or not self.session.retrieved or self.finished:
            raise HolderError("no unfinished session retrieved in this boot: nothing to retrieve from")
        if name in self.vms:
            raise HolderError("%s already has a memfd here" % name)
        fd = self.session.retrieve(int(token))
        self.vms[name] = fd
        self._keep("vm." + name, fd)
        self.retrieve_errors.pop(name, None)
        self.publish()

        def fn(j):
            r = j.setdefault("luo", {})
            r["retrieved"] = sorted(set(r.get("retrieved") or []) | {name})
            r["retrieve_errors"] = dict(self.retrieve_errors)
            r.setdefault("tokens", {})[name] = int(token)
            (j.get("vms") or {}).get(name, {}).pop("luo_error", None)
        update_journal(fn, msg="luo: %s retrieved by hand (token %s)" % (name, token))
        return {"changed": True, "path": mem_path(name)}

    def finish(self, force=False):
        """Finish the retrieved session once every VM is final; never while a token failed to come
        back (FINISH frees what was not retrieved) unless ``force``."""
        if self.session is None or not self.session.retrieved:
            return {"changed": False, "reason": "no retrieved session"}
        if self.finished:
            return {"changed": False, "reason": "finished"}
        if self.retrieve_errors and not force:
            return {"changed": False, "reason": "kept: not retrieved: %s" % ", ".join(sorted(self.retrieve_errors))}
        vms = load_journal().get("vms") or {}
        pending = sorted(n for n in self.vms if (vms.get(n) or {}).get("state") not in VM_FINAL + ("running",))
        if pending and not force:
            return {"changed": False, "reason": "VMs not final yet: %s" % ", ".join(pending)}
        self.session.finish()
        self.finished = True
        update_journal(lambda j: j.setdefault("luo", {}).update(finished_ts=time.time()),
                       msg="luo: session finished")
        return {"changed": True}

    def handle(self, req, users_of=None):
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "ensure":
            return self.ensure(req.get("name"), req.get("size", 0))
        if op == "drop":
            return self.drop(req.get("name"), (users_of or (lambda n: []))(req.get("name")))
        if op == "preserve":
            return self.preserve(list(req.get("names") or sorted(self.vms)), req.get("update_id"))
        if op == "unpreserve":
            return self.unpreserve()
        if op == "kexec":
            return self.kexec()
        if op == "finish":
            return self.finish(bool(req.get("force")))
        if op == "retrieve":
            return self.retrieve(req.get("name"), req.get("token", -1))
        raise HolderError("unknown request %r" % (op,))


def _users_of(name):
    return ["%s[%d]" % (c, pid) for pid, c, _p in users(mem_path(name)) if pid != os.getpid()]


def serve(holder, path=None):
    path = path or SOCKET
    if os.path.exists(path):
        os.unlink(path)
    old = os.umask(0o077)
    try:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
    finally:
        os.umask(old)
    srv.listen(8)
    sd_notify.notify("READY=1\nSTATUS=holding %d memfds" % len(holder.vms))
    while True:
        conn, _addr = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            try:
                req = json.loads(data.decode() or "{}")
                if req.get("op") == "kexec":
                    conn.sendall(json.dumps({"ok": True, "result": "kexec"}).encode() + b"\n")
                reply = {"ok": True, "result": holder.handle(req, _users_of)}
            except (HolderError, luo.LuoError, ValueError, OSError) as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass
        sd_notify.notify("STATUS=holding %d memfds%s" % (len(holder.vms), ", session open" if holder.session else ""))


def request(op, path=None, timeout=120, **fields):
    """Send one request to the holder; its result, or HolderError with its message."""
    path = path or SOCKET
    if not os.path.exists(path) or not stat.S_ISSOCK(os.stat(path).st_mode):
        raise HolderError("the memfd holder is not running (no %s): systemctl start guestmemfs-luo.service" % path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    data = b""
    try:
        s.connect(path)
        s.sendall(json.dumps(dict(fields, op=op)).encode() + b"\n")
        while True:  # to the end: a kexec's last word is its error, if it returns
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    reply = json.loads(data.decode().splitlines()[-1] if data else "{}")
    if not reply.get("ok"):
        raise HolderError(reply.get("error") or "no answer from the memfd holder")
    return reply.get("result")


def hold():
    """``agent luo-hold``: the holder service (guestmemfs-luo.service)."""
    holder = Holder()
    holder.adopt(inherited_fds())
    try:
        holder.open_device()
    except luo.LuoError as exc:
        sys.stderr.write("guestmemfs-luo: %s\n" % exc)
        return 1
    holder.retrieve_after_kexec()
    holder.ensure_configured()
    holder.publish()
    serve(holder)
    return 0
