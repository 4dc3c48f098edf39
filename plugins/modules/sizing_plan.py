#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: sizing_plan
short_description: Plan every hypervisor's carve-out on the controller, in one task
version_added: 0.1.7
description:
  - Reads each host's C(guestmemfs_sizing) and its C(guestmemfs) facts once, plans every carve-out
    (C(plugins/module_utils/sizing.py), the planner behind the C(guestmemfs.liveupdate.carveout_plan)
    filter; C(docs/sizing.md)), writes the sizing report and returns the plan, in one task on the
    controller. Its cost grows linearly with the hosts, and no host is contacted.
  - Returns C(rows) (in host order), C(by_host) (the rows by host name, so that each host takes its own
    by index, not by scanning the plan) and C(refused) (the hosts without a plan); C(playbooks/sizing.yml)
    registers them on localhost as C(guestmemfs_sizing_result).
  - An action plugin; it runs on the controller only.
author:
  - guestmemfs.liveupdate developers (@guestmemfs)
options:
  hosts:
    description: The hosts to plan, by inventory name.
    type: list
    elements: str
    required: true
  facts_from:
    description:
      - Where the hosts' facts come from. Unset or C(cache) - the facts Ansible has for them, gathered in
        this run or read from its fact cache (for example C(jsonfile)).
      - "A path - a facts file gathered earlier, JSON or YAML, C({host: ansible_facts}) or
        C({host: {ansible_facts: ...}})."
    type: str
  report_dir:
    description:
      - Where to write C(sizing.txt), C(sizing.json) and C(sizing.csv) (created when missing; a file is
        written only when its content changes). Unset, nothing is written.
    type: path
  run:
    description:
      - With O(report_dir), the run the report belongs to - it goes to O(report_dir)/RUN, linked from
        O(report_dir)/sizing.* and O(report_dir)/latest (see M(guestmemfs.liveupdate.report_files)).
    type: str
extends_documentation_fragment:
  - guestmemfs.liveupdate.attributes
requirements:
  - Runs on the controller
attributes:
  action:
    support: full
    description: Runs on the controller.
  check_mode:
    support: full
    description: Plans and writes nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: A report file with the same content is not written again.
  platform:
    support: full
    platforms: posix
    description: The controller.
seealso:
  - module: guestmemfs.liveupdate.guestmemfs_facts
  - name: Sizing the carve-out
    description: The collection's documentation.
    link: https://github.com/guestmemfs/liveupdate/blob/main/docs/sizing.md
"""

EXAMPLES = r"""
- name: Plan from the fact cache, without contacting the hosts
  guestmemfs.liveupdate.sizing_plan:
    hosts: "{{ groups['hypervisors'] }}"
    facts_from: cache
    report_dir: guestmemfs-report

- name: Plan from a facts file gathered earlier
  guestmemfs.liveupdate.sizing_plan:
    hosts: "{{ groups['hypervisors'] }}"
    facts_from: /srv/facts/hypervisors.json
"""

RETURN = r"""
summary:
  description: C(hosts), C(ok), C(refused), C(carved_bytes), C(held_bytes), C(scratch_bytes).
  returned: success
  type: dict
table:
  description: The sizing table, as written to C(sizing.txt).
  returned: success
  type: str
written:
  description: The report files written (new or changed).
  returned: success
  type: list
  elements: str
rows:
  description: One row per host, in the order of O(hosts) (see C(guestmemfs.liveupdate.carveout_plan)).
  returned: success
  type: list
  elements: dict
by_host:
  description: The same rows by host name.
  returned: success
  type: dict
refused:
  description: The hosts without a plan, in the order of O(hosts).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(hosts=dict(type="list", elements="str", required=True),
                                              facts_from=dict(type="str"), report_dir=dict(type="path"),
                                              run=dict(type="str")),
                           supports_check_mode=True)
    module.fail_json(msg="guestmemfs.liveupdate.sizing_plan runs on the controller, through its action plugin")


if __name__ == "__main__":
    main()
