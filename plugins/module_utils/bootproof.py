# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the booted kernel itself says about how it came up, read on the host once its VMs are
restored (off the blackout path; vm_cpr wait): a new boot id alone does not prove a
kexec into the target (a panic in the new kernel cold-boots the default one, also with a new boot
id). The witnesses, each where the kernel or systemd gives it:

- the running release and build (``/proc/sys/kernel/osrelease``, ``version``);
- KHO's ``KHO: exec from: <release> (count N)`` in the kernel log: this boot is a kexec with a
  handover, from that release, the N-th in a row (kernels with KHO, booted with kho=on);
- systemd's ``KexecsCount`` (systemd 262 and later): kexecs since the last cold boot."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re

KHO_EXEC = re.compile(r"KHO: exec from: (\S+) \(count (\d+)\)")
KMSG = "/dev/kmsg"


def kernel_log(path=KMSG):
    """The kernel log's messages (without /dev/kmsg's ``prio,seq,ts,flags;`` prefix); [] when it
    cannot be read. /dev/kmsg gives one record per read and EAGAIN at its end (non-blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record overwritten while reading: go on
                    continue
                break  # EAGAIN: the end
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    lines = []
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        if line.startswith(" "):  # a record's continuation (KEY=value), not a message
            continue
        lines.append(line.split(";", 1)[1] if ";" in line.split(" ", 1)[0] else line)
    return lines


def kho_exec(lines):
    """KHO's own word on this boot -> {"from_release", "count"}, or None (no KHO kexec, or no KHO)."""
    found = None
    for line in lines:
        m = KHO_EXEC.search(line)
        if m:
            found = {"from_release": m.group(1), "count": int(m.group(2))}
    return found


def systemd_kexecs(run):
    """systemd's count of kexecs since the last cold boot, or None where systemd does not say
    (before 262). ``run(argv) -> (rc, stdout, stderr)``."""
    try:
        rc, out, _err = run(["systemctl", "show", "--property=KexecsCount", "--value"])
    except OSError:
        return None
    out = (out or "").strip()
    return int(out) if rc == 0 and out.isdigit() else None


def read_proof(run, proc="/proc", kmsg=KMSG):
    """This boot's witnesses: release, version, KHO's exec line, systemd's kexec count."""
    def read(name):
        try:
            with open(os.path.join(proc, "sys", "kernel", name)) as fh:
                return fh.read().strip()
        except (IOError, OSError):
            return None
    kho = kho_exec(kernel_log(kmsg))
    if kho is None:  # the ring buffer may have moved on: the journal keeps this boot's kernel log
        try:
            rc, out, _err = run(["journalctl", "-k", "-b", "-o", "cat", "--no-pager"])
        except OSError:
            rc, out = 1, ""
        kho = kho_exec((out or "").splitlines()) if rc == 0 else None
    return {"release": read("osrelease"), "version": read("version"),
            "kho_exec_from": kho["from_release"] if kho else None, "kho_exec_count": kho["count"] if kho else None,
            "systemd_kexecs": systemd_kexecs(run)}


def verdict(proof, from_release, target_release, booted_as_loaded):
    """How sure the run is that the host kexeced from ``from_release`` into ``target_release``:
    (verdict, evidence) with verdict ``kexec`` (every witness there agrees), ``not the target``
    (the running release differs: a cold boot into another kernel), or ``unproven`` (a witness
    contradicts it, e.g. KHO says the boot came from another release)."""
    evidence = []
    release = proof.get("release")
    if release != target_release:
        return "not the target", ["running %s, not the target %s" % (release, target_release)]
    evidence.append("running %s" % release)
    if booted_as_loaded:
        evidence.append("booted the kernel and command line that were loaded")
    else:
        return "unproven", evidence + ["the boot does not match the kernel and command line that were loaded"]
    if proof.get("kho_exec_from") is not None:
        if from_release and proof["kho_exec_from"] != from_release:
            return "unproven", evidence + ["KHO says exec from %s (count %s), not from %s" % (
                proof["kho_exec_from"], proof["kho_exec_count"], from_release)]
        evidence.append("KHO: exec from %s (count %s)" % (proof["kho_exec_from"], proof["kho_exec_count"]))
    if proof.get("systemd_kexecs") is not None:
        if proof["systemd_kexecs"] < 1:
            return "unproven", evidence + ["systemd counts no kexec since the last cold boot"]
        evidence.append("systemd: %d kexec(s) since the last cold boot" % proof["systemd_kexecs"])
    return "kexec", evidence
