#!/bin/sh
# Gives a fleet VM its identity from QEMU fw_cfg at every boot: hostname and the controller's SSH
# key. The base image is shared by every VM, so nothing host-specific may be baked into it.
set -eu
modprobe qemu_fw_cfg 2>/dev/null || true
item() { f="/sys/firmware/qemu_fw_cfg/by_name/opt/fleet/$1/raw"; [ -r "$f" ] && cat "$f"; }
name=$(item hostname || true)
if [ -n "${name:-}" ]; then
  echo "$name" > /etc/hostname
  hostname "$name"
  grep -q "[[:space:]]$name\$" /etc/hosts || echo "127.0.1.1 $name" >> /etc/hosts
fi
keys=$(item authorized_keys || true)
if [ -n "${keys:-}" ]; then
  install -d -m 0700 /root/.ssh
  printf '%s\n' "$keys" > /root/.ssh/authorized_keys
  chmod 0600 /root/.ssh/authorized_keys
fi
# Host keys are removed from the base image; each VM makes its own once (ed25519 only: RSA
# generation takes seconds under TCG).
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
