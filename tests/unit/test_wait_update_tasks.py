"""playbooks/tasks/wait_update.yml follows a host through its own kexec: every task of it that talks
to the host may find it gone at any moment and must leave that to the next slice."""

import os

import yaml

TASKS = os.path.join(os.path.dirname(__file__), "..", "..", "playbooks", "tasks", "wait_update.yml")
# What does not talk to the host: the wait for it to come back, messages, the next slice.
LOCAL = ("ansible.builtin.wait_for_connection", "ansible.builtin.debug", "ansible.builtin.include_tasks")


def test_every_task_that_talks_to_the_host_survives_its_kexec():
    # Seen in the fleet (molecule, 2026-12-05, load 13): the host kexeced while async_status read
    # the update process's answer: "UNREACHABLE", host1 failed, the rollout stopped.
    with open(TASKS) as fh:
        tasks = yaml.safe_load(fh)
    remote = [t for t in tasks if not any(k in t for k in LOCAL) and not t.get("delegate_to")]
    assert remote, "no task talks to the host?"
    for t in remote:
        assert t.get("ignore_unreachable") is True, t["name"]
