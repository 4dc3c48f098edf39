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
# The guest network: a second NIC (MAC 52:54:00:77:00:HH, H = the host's index from fw_cfg) is
# enslaved to a bridge br0 holding 10.77.H.1/16; nested guests bridge onto br0 and are reached over
# L2 from the controller's per-fleet network namespace. The files go to /run (rewritten at every
# boot, before networkd starts) because the image is shared by every host and only fw_cfg knows H.
# Named 05-* so they sort before 10-fleet.network, whose en*/eth* match would otherwise take the NIC.
index=$(item index || true)
case "${index:-}" in
  ''|*[!0-9]*) ;;
  *)
    hh=$(printf '%02x' "$index")
    d=/run/systemd/network
    mkdir -p "$d"
    printf '[NetDev]\nName=br0\nKind=bridge\nMACAddress=52:54:00:77:01:%s\n\n[Bridge]\nSTP=no\nForwardDelaySec=0\n' \
      "$hh" > "$d/05-fleet-br0.netdev"
    printf '[Match]\nMACAddress=52:54:00:77:00:%s\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nBridge=br0\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
      "$hh" > "$d/05-fleet-guestnic.network"
    printf '[Match]\nName=br0\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nAddress=10.77.%s.1/16\nConfigureWithoutCarrier=yes\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
      "$index" > "$d/05-fleet-br0.network"
    ;;
esac
