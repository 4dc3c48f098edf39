#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: rollout_lock
short_description: Take, renew or release a fleet's run lock (one rollout per fleet)
version_added: 0.3.0
description:
  - C(acquired) - creates the lock file I(path) (exclusively) naming its holder (user, controller,
    C(ansible-playbook)'s pid), run id, start and expiry (now + I(ttl)), and returns its C(token). A lock
    that is held is refused, naming its holder. A lock that expired, or whose process on this controller is
    gone, is stale - renamed aside (only one of two racing runs can) and taken over, with a warning.
  - C(renewed) - pushes the expiry on by its TTL; fails when the lock is no longer this run's (the rollout
    must stop - another may be running).
  - C(released) - removes the lock if it is this run's; another run's lock is left alone.
  - For several controllers, put I(path) on a filesystem they share (creation with O_EXCL and rename are
    atomic on local filesystems and NFS).
  - An action plugin; it runs on the controller only.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  state:
    description: What to do.
    type: str
    choices: [acquired, renewed, released]
    required: true
  path:
    description: The lock file. Default - C($GUESTMEMFS_LOCK_DIR/FLEET.lock), else
      C(~/.cache/guestmemfs-liveupdate/locks/FLEET.lock).
    type: path
  fleet:
    description: The fleet's name. Default - one made from I(hosts) and their addresses and ports, so that one
      inventory always gives one name.
    type: str
  hosts:
    description: The fleet's hosts (every host of its group), when I(fleet) is not given.
    type: list
    elements: str
  ttl:
    description: Seconds until a lock that is not renewed expires (at least 60).
    type: int
    default: 3600
  run_id:
    description: The rollout's run id, recorded in the lock.
    type: str
  token:
    description: The token C(acquired) returned (C(renewed), C(released)).
    type: str
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - A lock directory writable by the user running ansible-playbook (shared by every controller of the fleet)
attributes:
  check_mode:
    support: full
    description: C(acquired) takes nothing in check mode and warns when the lock is held.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: partial
    description: C(released) is; C(acquired) refuses while the lock is held, by this run too.
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
- name: One rollout per fleet
  guestmemfs.liveupdate.rollout_lock:
    state: acquired
    path: ~/.cache/guestmemfs-liveupdate/locks/prod.lock
    fleet: prod
    ttl: 3600
  register: lock

- name: Release it
  guestmemfs.liveupdate.rollout_lock:
    state: released
    path: "{{ lock.path }}"
    token: "{{ lock.token }}"
"""

RETURN = r"""
path:
  description: The lock file.
  returned: always
  type: str
fleet:
  description: The fleet's name.
  returned: state is acquired
  type: str
token:
  description: This run's token (C(acquired)).
  returned: state is acquired
  type: str
holder:
  description: Who holds the lock - C(user@controller (pid N)).
  returned: state is acquired or renewed
  type: str
expires:
  description: When the lock expires unless renewed (UTC).
  returned: state is acquired or renewed
  type: str
took_over:
  description: Why an earlier lock was stale, when it was taken over.
  returned: state is acquired
  type: str
detail:
  description: What C(released) did.
  returned: state is released
  type: str
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(state=dict(type="str", choices=["acquired", "renewed", "released"], required=True),
                                              path=dict(type="path"), fleet=dict(type="str"), hosts=dict(type="list", elements="str"),
                                              ttl=dict(type="int", default=3600), run_id=dict(type="str"),
                                              token=dict(type="str", no_log=False)),
                           required_if=[("state", "renewed", ["token"]), ("state", "released", ["token"])],
                           supports_check_mode=True)
    module.fail_json(msg="guestmemfs.liveupdate.rollout_lock runs on the controller, through its action plugin")


if __name__ == "__main__":
    main()
