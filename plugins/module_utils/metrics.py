# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's update as Prometheus metrics: a node_exporter textfile collector file rendered from
the journal each time the journal changes (docs/metrics.md lists every metric).

The directory comes from ``CONFIG`` (written by the qemu_vm role from
``guestmemfs_metrics_textfile_dir``; an empty directory turns the file off). The file is replaced
by a rename from a temporary file in the same directory, so node_exporter reads the old file or the
new one, never half of one. It is not fsynced: journal writes happen between the first pause and
the last resume, and the file is rendered again from the (fsynced) journal at its next change.
Writing it never fails the update: a full disk is said once on stderr and the update carries on."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import events
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import replace_file

CONFIG = "/etc/guestmemfs-liveupdate/metrics.json"
DEFAULT_DIR = "/var/lib/node_exporter/textfile_collector"
FILE = "guestmemfs_liveupdate.prom"
PREFIX = "guestmemfs_liveupdate_"
# Every phase the journal knows (module_utils/journal), "none" before the first update.
PHASES = ("none", "preflight", "saving", "saved", "handover", "kexec", "booted", "verified", "restored", "held",
          "rolled_back", "interrupted", "qemu-update")
# How an update ended (journal "totals"); each a label value of updates_total.
ENDINGS = ("restored", "rolled_back", "held")


def textfile_dir(config=None):
    """The textfile collector directory, or None when the metrics file is turned off."""
    try:
        with open(config or CONFIG) as fh:
            conf = json.load(fh)
    except (IOError, OSError):
        return DEFAULT_DIR
    d = conf.get("textfile_dir", DEFAULT_DIR) if isinstance(conf, dict) else DEFAULT_DIR
    return d or None


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Families:
    """Metric families in the order they are added, each HELP and TYPE once, then its samples."""

    def __init__(self):
        self.out = []

    def add(self, name, kind, text, samples):
        self.out.append("# HELP %s%s %s" % (PREFIX, name, text.replace("\\", "\\\\").replace("\n", "\\n")))
        self.out.append("# TYPE %s%s %s" % (PREFIX, name, kind))
        for labels, value in samples:
            lab = ",".join('%s="%s"' % (k, _escape(v)) for k, v in labels if v is not None)
            self.out.append("%s%s%s %s" % (PREFIX, name, "{%s}" % lab if lab else "", _number(value)))

    def text(self):
        return "\n".join(self.out) + "\n"


def render(j, release=None):
    """The exposition-format text for journal ``j`` on a host running kernel ``release``."""
    j = j or {}
    release = release or os.uname()[2]
    update_id = j.get("update_id")
    phase = j.get("phase") or "none"
    vms = j.get("vms") or {}
    totals = j.get("totals") or {}
    f = _Families()
    f.add("phase", "gauge", "The host's live update phase: 1 for the current one, 0 for the others.",
          [((("phase", p),), p == phase) for p in PHASES + (() if phase in PHASES else (phase,))])
    f.add("update_info", "gauge", "The host's last live update (1): its id, the running kernel and the kernel it "
          "loaded for the kexec.", [((("update_id", update_id or ""), ("kernel_release", release),
                                      ("target_release", (j.get("kexec_target") or {}).get("release") or "")), 1)])
    f.add("vm_state", "gauge", "Each VM's state in the last update (1).",
          [((("vm", n), ("state", str(v.get("state")).split(" ", 1)[0])), 1) for n, v in sorted(vms.items())])
    f.add("vm_blackout_seconds", "gauge", "Each VM's last blackout, from its pause to its resume.",
          [((("vm", n), ("update_id", update_id)), v["blackout_s"]) for n, v in sorted(vms.items())
           if isinstance(v.get("blackout_s"), (int, float))])
    f.add("vm_verification_ok", "gauge", "Each VM's last memory verification: 1 when its verdict is ok, 0 "
          "otherwise (the verdict is a label).",
          [((("vm", n), ("verdict", v["verify"].get("status"))), v["verify"].get("status") == "ok")
           for n, v in sorted(vms.items()) if isinstance(v.get("verify"), dict)])
    if totals.get("last_success_ts"):
        f.add("last_success_timestamp_seconds", "gauge", "When the last live update that restored every VM on "
              "a new kernel finished (unix seconds).", [((), totals["last_success_ts"])])
    f.add("kexecs_total", "counter", "Kexecs into the kernel the live update loaded that this host booted.",
          [((), int(totals.get("kexecs") or 0))])
    f.add("updates_total", "counter", "Live updates that ended, each counted once at its first ending: "
          "restored (on a new kernel), "
          "rolled_back (on the old one), held (a VM not resumed).",
          [((("ending", e),), int((totals.get("updates") or {}).get(e) or 0)) for e in ENDINGS])
    return f.text()


def refresh(j, release=None):
    """Write the textfile for journal ``j``: True when written. Never raises (see the module's
    docstring)."""
    d = None
    try:
        d = textfile_dir()
        if d:
            replace_file(os.path.join(d, FILE), render(j, release).encode("utf-8"), 0o644)
            return True
    except Exception as exc:  # metrics are never worth a failed update
        events.complain("metrics", "the metrics file %s was not written" % os.path.join(d or "?", FILE), exc)
    return False
