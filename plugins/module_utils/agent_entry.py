# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host agent's entry (``/usr/lib/guestmemfs-liveupdate/agent``, roles/qemu_vm/templates/agent.j2):
the VM unit's two steps go straight to hostupdate; the script hands any other command line to the
agent's parser (module_utils/agent).

Every VM's unit starts two agent processes (``vm-run NAME``, ``vm-restore NAME``) on a host that is
still booting, inside its VMs' blackout: eight VMs are sixteen Python starts on the host's CPUs.
The agent's whole command line (argparse, the QEMU update, the kernel build's helpers) is some
0.4 s of each start on a fleet host under TCG that these two steps never use."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import subprocess
import sys

from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import hostupdate, vmdef
from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.durable import CorruptFile

UNIT_STEPS = ("vm-run", "vm-restore")


def _unit_step(command, name):
    if command == "vm-run":
        return hostupdate.vm_run(name)
    return hostupdate.vm_restore(name, subprocess.call)


def unit_step(argv):
    """The exit code of the VM unit's step that ``argv`` names (``vm-run NAME``, ``vm-restore NAME``),
    run here; None for any other command line, usage errors included: the agent's parser answers
    those (the installed script loads it only then)."""
    if len(argv) == 2 and argv[0] in UNIT_STEPS and vmdef.NAME_RE.match(argv[1]):
        try:
            return _unit_step(argv[0], argv[1])
        except CorruptFile as exc:  # as the agent says it (exit 8: the file and its recovery)
            sys.stderr.write("%s\n" % exc)
            return 8
    return None
