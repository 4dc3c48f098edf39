# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host agent's entry point (``/usr/lib/guestmemfs-liveupdate/agent``): the VM unit's two
steps go straight to hostupdate; any other command line goes to the agent's parser (module_utils/agent).

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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] in UNIT_STEPS and vmdef.NAME_RE.match(argv[1]):
        try:
            return _unit_step(argv[0], argv[1])
        except CorruptFile as exc:  # as the agent says it (exit 8: the file and its recovery)
            sys.stderr.write("%s\n" % exc)
            return 8
    # usage, help, a bad VM name and every other command: the agent's one parser
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils import agent
    return agent.main(argv)
