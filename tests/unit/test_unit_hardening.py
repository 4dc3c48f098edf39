"""The VM unit's confinement, exactly as rendered (the agent runs as root in it, then becomes QEMU as
the unprivileged user), and systemd's own check of every unit the qemu_vm role renders."""

import os
import shutil
import subprocess

import pytest

from test_backend_spec import TEMPLATES

VM_SERVICE = """[Service]
Type=notify
# Cold start; or, with a saved state, verify its memory against the manifest, then -incoming defer.
# The agent forks the rest of the start (feed the saved state and resume, or nothing on a cold
# start; then the CPU quota) and becomes QEMU: the unit's main process is QEMU from then on, and
# the forked step's READY=1 ends the start once the VM runs.
ExecStart=/usr/bin/python3 -I -S /usr/lib/guestmemfs-liveupdate/agent vm-run %i
NotifyAccess=all
Restart=no
TimeoutStartSec=600
# Its CPU weight while the host boots is its slice's (system-guestmemfs\\x2dvm.slice).

# Confinement. The agent runs as root in this unit (it verifies the memory, journals, opens the
# VM's QMP socket, taps and memfd) and then becomes QEMU as guestmemfs-qemu, which
# QEMU's own -sandbox confines further (see docs/confinement.md). What follows holds for both.
NoNewPrivileges=yes
# Read-only but for the agent's directories, the backend's mount and (the VM's drop-in) its disks
# and serial log.
ProtectSystem=strict
ReadWritePaths=-/var/lib/guestmemfs-liveupdate -/var/log/guestmemfs-liveupdate -/run/guestmemfs-liveupdate -/mnt/vmmem
# The update's metrics (docs/metrics.md): the agent writes them from here too.
ReadWritePaths=-/var/lib/node_exporter/textfile_collector
ProtectHome=yes
# A /tmp of its own. Not PrivateTmp=yes: systemd orders a unit with it after systemd-tmpfiles-setup,
# which on a booting host ends seconds after the backend's mount (docs/performance.md).
TemporaryFileSystem=/tmp:mode=1777 /var/tmp:mode=1777
# /run/guestmemfs-liveupdate (QMP sockets, locks), made by systemd for the unit, as tmpfiles.d
# makes it at boot; kept when the unit stops: every VM and the agent use it.
RuntimeDirectory=guestmemfs-liveupdate
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
# KVM and the taps the agent opens; /dev/null and the like are in "closed".
DevicePolicy=closed
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# QMP, the guest agent and the bridge ioctls (unix), a user-mode NIC and, for a QEMU started as
# root before confinement, its bridge helper's ioctls (inet).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
# The agent's: give QEMU its files (CHOWN, FOWNER, DAC_*), become its user (SETUID, SETGID), open
# taps (NET_ADMIN), follow the luo holder's memfd link (SYS_PTRACE: read access to the holder),
# stop the QEMU whose restore failed before it resumed (KILL: QEMU runs as another user).
# A QEMU started as root before confinement keeps what it used (NET_ADMIN for its bridge helper).
CapabilityBoundingSet=CAPS
UMask=0077
# Not MemoryDenyWriteExecute: TCG translates guest code into host code at run time (a JIT), which
# needs writable and executable memory.

[Install]
WantedBy=multi-user.target
""".replace("CAPS", " ".join(
    "CAP_" + c for c in ("CHOWN FOWNER DAC_OVERRIDE DAC_READ_SEARCH SETUID SETGID NET_ADMIN SYS_PTRACE KILL IPC_LOCK "
                         "SYS_RESOURCE").split()))


def render(name, backend, user="guestmemfs-qemu", metrics="/var/lib/node_exporter/textfile_collector"):
    import jinja2

    from ansible_collections.guestmemfs.liveupdate.plugins.filter.backend_spec import backend_spec
    # as Ansible's template module renders: every variable required, the final newline kept
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, trim_blocks=True,
                             keep_trailing_newline=True)
    env.filters["guestmemfs.liveupdate.backend_spec"] = backend_spec
    return env.get_template(name + ".j2").render(qemu_vm_backend=backend, qemu_vm_mem_dir="/mnt/vmmem",
                                                 qemu_vm_qemu_user=user, ansible_managed="managed",
                                                 qemu_vm_metrics_textfile_dir=metrics, qemu_vm_startup_cpu_weight=1000)


def test_the_vm_unit_is_hardened_exactly_so():
    text = render("guestmemfs-vm@.service", "pmem")
    assert text[text.index("[Service]"):] == VM_SERVICE
    assert "MemoryDenyWriteExecute=" not in text.replace("# Not MemoryDenyWriteExecute", "")


def test_without_a_mount_no_mount_is_writable_and_root_is_named_unsafe():
    # and without metrics no metrics directory is (molecule, 2026-12-05: the hardened unit made the
    # textfile's directory read-only, "Read-only file system", until it was named here)
    text = render("guestmemfs-vm@.service", "luo", user="root", metrics="")
    assert "node_exporter" not in text
    assert ("ReadWritePaths=-/var/lib/guestmemfs-liveupdate -/var/log/guestmemfs-liveupdate "
            "-/run/guestmemfs-liveupdate\n") in text
    assert "becomes QEMU as root (opted out: QEMU runs as root, unsafe)" in text


@pytest.mark.parametrize("backend", ["pmem", "guestmemfs", "luo"])
def test_every_unit_a_paused_vm_waits_for_at_boot_goes_first_while_the_host_boots(backend):
    # The VM units' weight is their slice's (systemd-cgls: system.slice/system-guestmemfs\x2dvm.slice/
    # guestmemfs-vm@vm1.service): a weight on each unit would only share the slice's 100 among the
    # VMs (measured: eight agents' starts no faster with it). The slice's weight counts against
    # udev's, ssh's and every other service's of system.slice.
    text = render("guestmemfs-vm-slice", backend)
    assert text[text.index("[Slice]"):] == "[Slice]\nStartupCPUWeight=1000\n"
    assert "StartupCPUWeight" not in render("guestmemfs-vm@.service", backend)
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
    waited_for = ["guestmemfs-verify.service"] + [
        n for n in list(get_backend(backend).units) + list(get_backend(backend).boot_units)
        if n in ("guestmemfs-luo.service", "guestmemfs-pmem-mount.service")]
    assert len(waited_for) == (1 if backend == "guestmemfs" else 2)
    for name in waited_for:
        text = render(name, backend)
        assert "\nStartupCPUWeight=1000\n" in text[text.index("[Service]"):text.index("[Install]")], name


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("backend", ["pmem", "guestmemfs", "luo"])
def test_systemd_accepts_every_directive_of_the_rendered_units(tmp_path, backend):
    from ansible_collections.guestmemfs.liveupdate.plugins.module_utils.backends import get_backend
    names = (["guestmemfs-vm@.service", "guestmemfs-verify.service"] + list(get_backend(backend).units)
             + list(get_backend(backend).boot_units))
    for name in names:
        (tmp_path / name).write_text(render(name, backend))
    (tmp_path / "system-guestmemfs\\x2dvm.slice").write_text(render("guestmemfs-vm-slice", backend))
    os.link(tmp_path / "guestmemfs-vm@.service", tmp_path / "guestmemfs-vm@vm1.service")
    units = [str(tmp_path / n) for n in names if n != "guestmemfs-vm@.service"] + [
        str(tmp_path / "guestmemfs-vm@vm1.service"), str(tmp_path / "system-guestmemfs\\x2dvm.slice")]
    out = subprocess.run(["systemd-analyze", "verify", "--man=no"] + units, capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path), check=False)
    version = int(subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1])
    # FileDescriptorStorePreserve= came with systemd 254 (the luo holder's unit; trixie has 257).
    known_newer = ["FileDescriptorStorePreserve"] if version < 254 else []
    problems = [line for line in out.stderr.splitlines()
                if str(tmp_path) in line and not any(k in line for k in known_newer)]
    assert problems == [], out.stderr
