#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: rollout_notify
short_description: POST one rollout event to a webhook as JSON
version_added: 0.3.0
description:
  - Sends C({event, time, ...payload}) as a JSON POST to C(webhook.url), with C(webhook.headers), and retries
    once after a second. A webhook that does not answer is a warning, unless C(webhook.required) is true.
  - Without I(webhook), does nothing. In check mode, sends nothing.
  - An action plugin; it runs on the controller only. C(docs/gates.md) lists the events and their fields.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  webhook:
    description: C(guestmemfs_webhook) - C(url), C(headers), C(timeout) (10), C(required) (false), C(events) (default all),
      C(validate_certs) (true).
    type: dict
  event:
    description: The event.
    type: str
    choices: [rollout_start, wave_start, wave_end, host_kexec, host_resumed, gate_failed, rollout_stop, rollout_end,
              rollout_refused]
    required: true
  payload:
    description: The event's fields (run id, fleet, wave, hosts, host, reason, ...).
    type: dict
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - The controller reaches the webhook's URL
attributes:
  check_mode:
    support: full
    description: Sends nothing in check mode.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: none
    description: Every run sends the event again.
  platform:
    support: full
    platforms: posix
    description: The controller.
seealso:
  - module: guestmemfs.liveupdate.rollout_gate
  - name: Rollout gates
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/gates.md
"""

EXAMPLES = r"""
- name: Tell the team a wave starts
  guestmemfs.liveupdate.rollout_notify:
    webhook: {url: "https://chat.example/hooks/kernel"}
    event: wave_start
    payload: {wave: 2, hosts: [hv03, hv04]}
"""

RETURN = r"""
sent:
  description: Whether the webhook took the event (an HTTP 2xx).
  returned: success
  type: bool
detail:
  description: The HTTP status, or why it was not sent.
  returned: success
  type: str
body:
  description: What was sent.
  returned: when sent or tried
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(
        webhook=dict(type="dict"), payload=dict(type="dict"),
        event=dict(type="str", required=True, choices=["rollout_start", "wave_start", "wave_end", "host_kexec", "host_resumed",
                                                       "gate_failed", "rollout_stop", "rollout_end", "rollout_refused"])),
        supports_check_mode=True)
    module.fail_json(msg="guestmemfs.liveupdate.rollout_notify runs on the controller, through its action plugin")


if __name__ == "__main__":
    main()
