#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: rollout_gate
short_description: Check the rollout's controller-side gates - the window, a PromQL query, a command
version_added: 0.3.0
description:
  - At one point of a rollout (I(phase)), checks on the controller - whether now lies in the maintenance
    window (phases C(start) and C(before_wave)); that a Prometheus query returns an empty result (or true, as asked);
    that a command exits 0. A health gate is asked again every C(interval) seconds until it passes or its
    C(timeout) passed, with a line of progress each time.
  - The verdict is data - C(passed), C(reason) and C(results); a gate whose C(on_failure) is C(warn) only
    warns. The module fails only on bad input, checked before any gate runs.
  - An action plugin; it runs on the controller only. C(docs/gates.md) describes every option.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  phase:
    description: Where the rollout is - C(start) (the window only), C(before_wave), C(after_resume) (after a
      host's VMs resumed).
    type: str
    choices: [start, before_wave, after_resume]
    required: true
  wave:
    description: The wave number, for the messages and the command's environment.
    type: int
  hosts:
    description: The hosts the gate is for (the wave's, or the one host whose VMs resumed).
    type: list
    elements: str
  window:
    description: C(guestmemfs_window) - C(days) (mon..sun), C(hours) (C(HH:MM-HH:MM), may run past midnight),
      C(timezone) (IANA name, C(UTC) or C(local); default C(UTC)).
    type: dict
  prometheus:
    description: C(guestmemfs_prometheus_gate) - C(url), C(query), C(expect) (C(empty) - no sample, the default;
      C(true) - every sample is 1), C(timeout) (60), C(interval) (10), C(on_failure) (C(stop), C(warn)), C(before_wave),
      C(after_resume) (both true), C(headers), C(validate_certs).
    type: dict
  command:
    description: C(guestmemfs_command_gate) - C(command) (a string split like a shell's words, or a list),
      C(timeout) (60), C(interval) (10), C(on_failure), C(before_wave), C(after_resume). It runs with
      C(GUESTMEMFS_GATE_PHASE), C(GUESTMEMFS_GATE_WAVE) and C(GUESTMEMFS_GATE_HOSTS) in its environment.
    type: dict
  guest:
    description: C(guestmemfs_guest_gate), only checked (the in-guest gate runs on the hosts, M(guestmemfs.liveupdate.guest_health)).
    type: dict
  webhook:
    description: C(guestmemfs_webhook), only checked (M(guestmemfs.liveupdate.rollout_notify) sends).
    type: dict
  lock:
    description: C(guestmemfs_lock), only checked (M(guestmemfs.liveupdate.rollout_lock) takes it).
    type: dict
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - Python 3.9 or newer on the controller for IANA time zones (zoneinfo); UTC and local time need nothing
attributes:
  check_mode:
    support: full
    description: Runs in check mode (it only asks).
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Changes nothing.
  platform:
    support: full
    platforms: posix
    description: The controller.
seealso:
  - module: guestmemfs.liveupdate.guest_health
  - name: Rollout gates
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/gates.md
"""

EXAMPLES = r"""
- name: Gate the wave
  guestmemfs.liveupdate.rollout_gate:
    phase: before_wave
    wave: 2
    hosts: [hv03, hv04]
    window: {days: [sat, sun], hours: ["01:00-05:00"], timezone: Europe/Berlin}
    prometheus:
      url: http://prometheus.example:9090
      query: ALERTS{alertstate="firing", severity="critical"}
  register: gate
"""

RETURN = r"""
passed:
  description: No gate whose C(on_failure) is C(stop) failed.
  returned: success
  type: bool
reason:
  description: The failed gates, one after the other, or null.
  returned: success
  type: str
results:
  description: Per gate - C(gate) (window, prometheus, command), C(ok), C(detail), C(seconds), C(attempts),
    C(on_failure); the window's C(next_open); the command's C(rc), C(stdout), C(stderr).
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(phase=dict(type="str", choices=["start", "before_wave", "after_resume"], required=True),
                                              wave=dict(type="int"), hosts=dict(type="list", elements="str"),
                                              window=dict(type="dict"), prometheus=dict(type="dict"), command=dict(type="dict"),
                                              guest=dict(type="dict"), webhook=dict(type="dict"), lock=dict(type="dict")),
                           supports_check_mode=True)
    module.fail_json(msg="guestmemfs.liveupdate.rollout_gate runs on the controller, through its action plugin")


if __name__ == "__main__":
    main()
