# shellcheck shell=sh
# The build puts `#!/bin/busybox sh` before this (the collection's sanity tests refuse shebangs here).
# PID 1 of the nested test guest (busybox initramfs built by tests/fleet/fleet.py guest).
# Kernel cmdline: gmfs.ip=A.B.C.D/NN (eth0's address). Logs go to the console (ttyS0).
# PID 1 must never exit (the kernel panics): every failure is logged and the loop at the end runs.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "gmfs-init: $*"; }
# Keep the console quiet: only warnings and worse from the kernel after this point.
echo 4 > /proc/sys/kernel/printk
log "up $(cut -d' ' -f1 /proc/uptime)s"

# Modules in dependency order (written by the build from the kernel's modules.dep); none when
# the kernel has everything built in (fleet.py guest --kernel).
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m" || log "insmod $m failed"
done < /lib/modules/load.order

ip=
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
  case "$arg" in gmfs.ip=*) ip=${arg#gmfs.ip=} ;; esac
done

# The data disk: virtio-blk probes asynchronously, so wait for /dev/vda a little.
mkdir -p /data
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 /dev/vda /data; then
  log "/data mounted"
else
  log "no /data (mount /dev/vda failed): the workload runs without its log"
fi

ip link set lo up
if [ -n "$ip" ]; then
  ip link set eth0 up && ip addr add "$ip" dev eth0 && log "eth0 $ip"
else
  log "no gmfs.ip= on the cmdline: eth0 stays down"
fi

# The guest agent (qga.c) on the org.qemu.guest_agent.0 port, for the in-guest gate; it waits for the
# port itself (a VM without the channel never gets one) and is restarted if it dies.
while :; do /bin/qga; log "qga exited rc=$?; restarting in 1s"; sleep 1; done &

# The workload; restarted if it dies (a new pid shows it from outside).
while :; do
  /bin/workload
  log "workload exited rc=$?; restarting in 1s"
  sleep 1
done &
# Reap orphans forever.
while :; do wait; sleep 60; done
