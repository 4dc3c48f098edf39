# -*- coding: utf-8 -*-
# Copyright: guestmemfs.liveupdate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every ``guestmemfs_*`` variable the collection's playbooks and roles read or set.

The variables reference (docs/variables.md) is generated from this list and from the roles'
``meta/argument_specs.yml``; the playbooks' preflight refuses a ``guestmemfs_*`` variable that is
not in it (a typo such as ``guestmemfs_rolout`` would otherwise leave a default in force)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib

PREFIX = "guestmemfs_"

# What an operator sets (inventory, group_vars, extra vars), one a line:
# name | type | default | the playbooks and roles that read it | description (Markdown); a long
# row goes on in indented lines.
_OPERATOR = """
guestmemfs_hosts | str | hypervisors | all playbooks | The inventory group (or pattern) the playbooks act on.
guestmemfs_backend | str | pmem | liveupdate; roles memory_backend, qemu_vm, kernel_build; sizing (checked) |
    The memory backend that holds VM RAM: `pmem`, `guestmemfs` or `luo`. Must be the backend the host's
    `guestmemfs_sizing` plans (its `backend`, default `pmem`): sizing refuses a host where they differ.
guestmemfs_mount | path | /mnt/vmmem | liveupdate; roles memory_backend, qemu_vm | Mount point of the
    backend's filesystem (pmem, guestmemfs); not used by `luo`.
guestmemfs_vms | list of dict | [] | liveupdate; roles memory_backend, qemu_vm | The host's VMs, each with
    `name` and `memory` and what the guest needs (`docs/vms.md`).
guestmemfs_vm_defaults | dict | {} | role qemu_vm | Values for the keys a VM definition leaves out
    (`docs/vms.md`).
guestmemfs_qemu_user | str | guestmemfs-qemu | role qemu_vm | The unprivileged user each VM's QEMU runs as,
    sandboxed (`-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`) in a
    hardened unit; the role creates it. `root` opts out: unsafe, a compromised QEMU owns the host. A
    running VM keeps how it was launched until its next cold start (`docs/confinement.md`).
guestmemfs_startup_cpu_weight | int | 1000 | role qemu_vm | systemd's `StartupCPUWeight=` (1-10000, every
    unit's default 100) of the units a paused VM waits for at boot (the VM units' slice, `guestmemfs-verify`,
    the backend's early mount or holder): while the host boots their agents, QEMUs and restores get the CPU
    before the rest of the boot (`docs/performance.md`); `100` gives them no priority.
guestmemfs_metrics_textfile_dir | path | /var/lib/node_exporter/textfile_collector | role qemu_vm | The
    node_exporter textfile collector directory the host agent writes `guestmemfs_liveupdate.prom` into; empty
    turns the file off (`docs/metrics.md`). The update events always go to
    `/var/lib/guestmemfs-liveupdate/events.jsonl`.
guestmemfs_sizing | dict | (required by sizing) | sizing, prepare | The host's sizing policy: `backend`,
    `mode` (`fraction`, `absolute`, `vms`), `fraction`, `size`, `vms`, `headroom`, `reserve`, `align`,
    `kho_scratch`, `kernel_reserved`, `numa` (`docs/sizing.md`).
guestmemfs_facts_from | str | (unset: read the hosts) | sizing | Plan without contacting the hosts: `cache`
    (Ansible's fact cache) or the path of a facts file (`docs/scale.md`).
guestmemfs_sizing_record | bool | true unless guestmemfs_facts_from is set | sizing | Record each host's plan
    on it as `guestmemfs_carveout`.
guestmemfs_rollout | dict | (a canary of 1, then growing waves) | plan, liveupdate | The rollout policy:
    canary, waves, at most K hosts per failure domain (`docs/waves.md`). One policy for the whole rollout: set
    it for the group or as an extra var.
guestmemfs_max_failed_hosts | int | 0 | liveupdate | No wave starts after more failed hosts than this; hosts
    already unreachable or with a VM not resumed before the run count too, and a run with more of them does not
    start (`docs/gates.md`).
guestmemfs_window | dict | (none: any time) | liveupdate | When a wave may start: `days` (mon..sun), `hours`
    (`HH:MM-HH:MM`, may run past midnight), `timezone` (default UTC). A run outside it does not start; a running
    wave finishes (`docs/gates.md`).
guestmemfs_wave_delay | int | 0 | liveupdate | Seconds to wait before each wave after the first.
guestmemfs_host_delay | int | 0 | liveupdate | Seconds between the hosts of a wave: the k-th host starts its save
    k delays after the first.
guestmemfs_confirm_waves | bool | false | liveupdate | Ask the operator to type yes before each wave (a run
    without a terminal cannot confirm, so it stops).
guestmemfs_guest_gate | dict | (off) | liveupdate | The in-guest gate through each VM's guest agent: `enabled`,
    `command` (argv run in the guest), `timeout` (60), `on_failure` (stop, warn), `before_wave`, `after_resume`
    (both true) (`docs/gates.md`).
guestmemfs_prometheus_gate | dict | (none) | liveupdate | A PromQL gate: `url`, `query`, `expect` (empty, true),
    `timeout` (60), `interval` (10), `on_failure`, `before_wave`, `after_resume`, `headers`, `validate_certs`.
guestmemfs_command_gate | dict | (none) | liveupdate | A command on the controller that must exit 0: `command`,
    `timeout` (60), `interval` (10), `on_failure`, `before_wave`, `after_resume`.
guestmemfs_webhook | dict | (none) | liveupdate | Where the rollout's events are POSTed as JSON: `url`, `headers`,
    `timeout` (10), `required` (false), `events` (default all), `validate_certs`.
guestmemfs_lock | dict | {enabled: true, ttl: 3600} | liveupdate | The fleet's run lock: `enabled`, `path`
    (default `$GUESTMEMFS_LOCK_DIR` or `~/.cache/guestmemfs-liveupdate/locks`, `FLEET.lock`), `fleet` (default a
    name made from the hosts and their addresses), `ttl`.
guestmemfs_unpreservable | dict | {} | plan, liveupdate | What to do with a VM the live update cannot carry:
    refuse, skip or shutdown, per VM (`docs/preservability.md`).
guestmemfs_restore_qemu | path | (the running QEMU) | plan, liveupdate | The QEMU binary that restores the VMs
    after the kexec, asked for its machine types.
guestmemfs_plan_check_vms | bool | true | plan | Ask each VM's QEMU which VMs the update can carry
    (liveupdate.yml sets it false and asks right before each host's save).
guestmemfs_kexec_kernel | path | (the staged kernel, from kernel.yml's local fact) | liveupdate | The kernel
    to kexec into; kernel.yml sets it for the rest of its run.
guestmemfs_kexec_initrd | path | (the staged initrd) | liveupdate | Its initrd.
guestmemfs_kexec_append | list of str | [] | liveupdate | Arguments added to the next kernel's command line.
guestmemfs_kexec_timeout | int | 900 | liveupdate | Seconds to wait for the host to come back from the kexec.
guestmemfs_save_timeout | int | (from the VMs' memory) | liveupdate | Seconds the save of a host's VMs may take
    (default: `update_step`'s `save_time_limit`, which follows the VMs' memory).
guestmemfs_allow_boot_drift | bool | false | liveupdate | Update a host whose boot configuration lacks a memory
    backend's argument that its running cmdline has (its next cold boot would destroy every VM's memory).
guestmemfs_restore_timeout | int | 600 | liveupdate | Seconds to wait for the host's own restore of every VM
    after the kexec.
guestmemfs_verify | str | prove_once | liveupdate | The memory check of each host's manifest: `prove_once`
    checks every chunk until the kernel pair (running -> target) is proven - a full check passed on every VM
    of a host, in an earlier wave or an earlier run, as the hosts' journals keep it - then extents plus a
    sampled content check, until a check of the pair fails anywhere; `full` checks every chunk on every host.
guestmemfs_kernel_proofs | dict | {} | liveupdate | The kernel pairs an earlier run proved or saw fail, as it
    left them: an AWX workflow passes them from one wave's job to the next (the run's `set_stats`), the command
    line with `-e @REPORT_DIR/kernel_proofs.json`. Merged with what the run's hosts' journals keep; a failure
    from either wins.
guestmemfs_shutdown_timeout | int | 300 | liveupdate | Seconds to wait for a VM shut down by the `shutdown`
    policy.
kernel_build_host | str | localhost | kernel | The host that builds the kernel (the role kernel_build runs
    there).
kernel_build_become | bool | false | kernel | Become root on the build host.
kernel_build_only | bool | false | kernel | Build the kernel and install it nowhere: no inventory of
    hypervisors is needed (`scripts/kernel-build` without `-i`).
kernel_build_controller_dir | path | ~/.cache/guestmemfs-liveupdate/kernel-packages | kernel | Where a remote
    build host's packages are fetched to on the controller.
guestmemfs_qemu_update_binary | path | /usr/bin/qemu-system-x86_64 | qemu_update | The new QEMU every VM moves
    onto (`docs/qemu-update.md`): QEMU 9.0 or newer offering each VM's machine type, else the host is refused
    before any VM pauses.
guestmemfs_qemu_update_package | str | (none: nothing installed) | qemu_update | Opt-in: the package (apt) that
    brings the new QEMU, installed on each host right before its VMs move, after the QEMU they run was kept
    for their rollback.
guestmemfs_qemu_update_release | str | (the host's default) | qemu_update | The release the package comes from
    (apt's `default_release`, e.g. `trixie-backports`).
guestmemfs_qemu_update_parallel | int | 1 | qemu_update | How many VMs of a host move at a time.
guestmemfs_qemu_update_vms | list | (every running VM) | qemu_update | Only these VMs move; the others stay on
    their QEMU (e.g. a VM the new QEMU would refuse, which the check names before any pause).
guestmemfs_qemu_update_memory_check | str | sampled | qemu_update | Each VM's memory check before it resumes
    on the new QEMU: `sampled` (extents plus a sampled content check: the memory never moved), `full` or
    `extents`.
guestmemfs_qemu_update_timeout | int | 3600 | qemu_update | Seconds a host's QEMU update may take (its async
    limit).
guestmemfs_report_dir | path | $GUESTMEMFS_REPORT_DIR, else guestmemfs-report in the current directory | plan,
    sizing, liveupdate, qemu_update, report | Where the reports are written; give it as an extra var (`-e`) or in
    `GUESTMEMFS_REPORT_DIR` (a relative path is taken from the directory `ansible-playbook` runs in).
guestmemfs_run_id | str | (the plan's start time, UTC) | plan, liveupdate, sizing, report | Names the run in
    the reports' rows (`liveupdate.json`, `blackout.json`) and its report directory (`REPORT_DIR/RUN_ID/`,
    linked from `REPORT_DIR/latest`); give one value to every job of a rollout run as one job per wave.
"""

# Set by the collection's playbooks and roles (registered results, facts): never set them.
# name | the playbook that sets it | what it holds.
_SET_BY_COLLECTION = """
guestmemfs_carveout | sizing | this host's sizing plan row (read by the memory_backend role)
guestmemfs_sizing_planned | sizing | the sizing_plan result (kept on localhost as guestmemfs_sizing_result)
guestmemfs_sizing_result | sizing | the fleet's plan, on localhost
guestmemfs_rollout_plan | plan | the waves, on localhost
guestmemfs_rollout_reports | plan | the rendered plan, on localhost
guestmemfs_plan_reports | plan | the rendered plan
guestmemfs_plan_preserve | plan | each host's preservability
guestmemfs_plan_preserve_rows | plan | the preservability report's rows
guestmemfs_blackout | liveupdate | this host's blackout rows
guestmemfs_blackout_rows | liveupdate | every host's blackout rows
guestmemfs_lu_after | liveupdate | the host after the kexec
guestmemfs_lu_backend | liveupdate | the host's backend
guestmemfs_lu_outcome | liveupdate | this host's row of the run report (outcome, reason, start, end)
guestmemfs_lu_plan | liveupdate | the rollout plan (from localhost)
guestmemfs_lu_preflight_ok | liveupdate | whether this host passed its preflight in this wave (the wave's gate)
guestmemfs_lu_run_id | plan, sizing, report | the run's id in the reports (and its report directory), on localhost
guestmemfs_lu_run_rows | liveupdate | every planned host's row of the run report
guestmemfs_lu_started | liveupdate | when this host's wave started
guestmemfs_lu_stopped | liveupdate | the hosts of this wave that did not pass their preflight
guestmemfs_lu_job | liveupdate | the poll of the host's detached update (async_status)
guestmemfs_lu_memory_check | liveupdate | the memory check this host's update uses (full to prove a kernel pair, else the policy's)
guestmemfs_lu_proven | liveupdate | the kernel pairs already proven by a full check, from the run's reports
guestmemfs_lu_fleet_proofs | liveupdate | the kernel pairs proven or failed as the hosts' journals and guestmemfs_kernel_proofs keep them, on localhost
guestmemfs_lu_updating | liveupdate | the host's detached update (its async job)
guestmemfs_lu_verify_mode | liveupdate | the memory check handed to the host's update
guestmemfs_lu_wait_since | liveupdate | when the wait for the host's restore started
guestmemfs_lu_wave_number | liveupdate | this host's wave
guestmemfs_report_journal | report | each host's live-update journal
guestmemfs_report_rows | report | the host report's rows (readiness verdicts)
guestmemfs_lu_kernel | liveupdate | the kernel to load
guestmemfs_lu_load | liveupdate | the kernel load's result
guestmemfs_lu_update_id | liveupdate | the id the save gives the host's update (its rescue acts only on it)
guestmemfs_lu_mount | liveupdate | the backend's mount
guestmemfs_lu_new | liveupdate | the new kernel's release
guestmemfs_lu_next | liveupdate | the host's next step
guestmemfs_lu_preserve | liveupdate | the host's preservability
guestmemfs_lu_restored | liveupdate | the VMs restored
guestmemfs_lu_spec | liveupdate | what the backend needs
guestmemfs_lu_step | liveupdate | where the host's update stands
guestmemfs_lu_waited | liveupdate | a save that was still running
guestmemfs_lu_wave | liveupdate | this wave's hosts
guestmemfs_report_hosts | report | the hosts of the report
guestmemfs_lu_event | liveupdate | the fields of every webhook event
guestmemfs_lu_lock | liveupdate | the fleet's run lock this run holds (path, token, holder), on localhost
guestmemfs_lu_lock_taken | liveupdate | the lock as taken
guestmemfs_lu_start_gate | liveupdate | the gate settings and window checked at the start
guestmemfs_lu_probe | liveupdate | whether each host answered before the run
guestmemfs_lu_probe_journal | liveupdate | each host's journal before the run
guestmemfs_lu_degraded | liveupdate | the hosts already degraded before the run, on localhost
guestmemfs_lu_confirm | liveupdate | the operator's answer before a wave
guestmemfs_lu_wave_gate | liveupdate | the wave's gates (window, Prometheus, command)
guestmemfs_lu_guest_before | liveupdate | the in-guest gate before the wave
guestmemfs_lu_guest_after | liveupdate | the in-guest gate after the resume
guestmemfs_lu_host_gate | liveupdate | the controller's gates after the host's resume
guestmemfs_lu_closed | liveupdate | why the rollout ended, on localhost
guestmemfs_report_qemu | report | each host's QEMU version
guestmemfs_qu_binary | qemu_update | the new QEMU of this run
guestmemfs_qu_job | qemu_update | this host's detached qemu_update job
guestmemfs_qu_result | qemu_update | this host's qemu_update result (per VM: outcome and journal record)
guestmemfs_qu_why | qemu_update | why this host's QEMU update stopped
guestmemfs_qu_why_task | qemu_update | the task where it stopped
"""

# Refused with a message saying what replaced them: name | its replacement | how.
_REPLACED = """
guestmemfs_waves | guestmemfs_rollout | a list of wave sizes is `guestmemfs_rollout.waves`
"""


def _table(text, columns):
    rows, lines = [], []
    for line in text.strip().splitlines():
        if line.startswith(" ") and lines:  # a long row goes on, indented
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    for line in lines:
        cells = tuple(c.strip() for c in line.split(" | "))
        if len(cells) != columns:
            raise ValueError("variables table: %d cells, not %d: %s" % (len(cells), columns, line))
        rows.append(cells)
    return tuple(rows)


OPERATOR = _table(_OPERATOR, 5)
SET_BY_COLLECTION = _table(_SET_BY_COLLECTION, 3)
REPLACED = _table(_REPLACED, 3)

KNOWN = frozenset([v[0] for v in OPERATOR if v[0].startswith(PREFIX)] + [v[0] for v in SET_BY_COLLECTION] + [v[0] for v in REPLACED])


def unknown(names):
    """``guestmemfs_*`` names that the collection neither reads nor sets -> {name: closest known or None}."""
    out = {}
    for name in names:
        name = str(name)
        if name.startswith(PREFIX) and name not in KNOWN:
            close = difflib.get_close_matches(name, sorted(KNOWN), n=1, cutoff=0.8)
            out[name] = close[0] if close else None
    return out


def describe_unknown(by_host, limit=10):
    """{host: [names]} -> one line per unknown name with the first hosts that have it."""
    hosts_of = {}
    for host, names in by_host.items():
        for name in names:
            hosts_of.setdefault(name, []).append(host)
    lines = []
    guesses = unknown(hosts_of)
    for name in sorted(hosts_of)[:limit]:
        hosts = hosts_of[name]
        lines.append("%s (%s%s%s)" % (
            name, ", ".join(hosts[:3]), " and %d more" % (len(hosts) - 3) if len(hosts) > 3 else "",
            "; did you mean %s?" % guesses[name] if guesses.get(name) else ""))
    if len(hosts_of) > limit:
        lines.append("and %d more" % (len(hosts_of) - limit))
    return lines
