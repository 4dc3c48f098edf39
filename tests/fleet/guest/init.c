/*
 * PID 1 of the nested test guest (a static binary in the initramfs that tests/fleet/fleet.py builds).
 *
 * Why C and not a shell script: under two levels of TCG every new process and every first run of a
 * code path is translated twice, and a busybox script (install the applets, mount, cut, ip, sleep
 * loops) took 35-55 s from "Run /init" to the workload. This does the same with system calls only.
 *
 * Kernel cmdline: gmfs.ip=A.B.C.D/NN gives eth0 its address; gmfs.qga=DEVICE (e.g. /dev/ttyS1, for a
 * VM whose agent channel is an ISA serial port) reaches the services as GMFS_QGA, and without it the
 * agent finds its virtio-serial port. Logs go to the console (ttyS0).
 * PID 1 must never exit (the kernel panics): every failure is logged and the reaping loop runs on.
 * It starts /bin/workload (restarted if it dies: a new pid shows that from outside) and every other
 * executable named in /etc/gmfs-services (one path per line), e.g. a guest agent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVICES 8

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("gmfs-init: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

static double uptime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void try_mount(const char *src, const char *dst, const char *type, unsigned long flags)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, NULL) != 0)
		say("mount %s failed: %s", dst, strerror(errno));
}

static int ifreq_ioctl(int s, unsigned long req, struct ifreq *ifr, const char *what)
{
	if (ioctl(s, req, ifr) == 0)
		return 0;
	say("%s: %s", what, strerror(errno));
	return -1;
}

static void link_up(int s, const char *dev)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, dev, IFNAMSIZ - 1);
	if (ifreq_ioctl(s, SIOCGIFFLAGS, &ifr, dev) == 0) {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		ifreq_ioctl(s, SIOCSIFFLAGS, &ifr, dev);
	}
}

static void set_addr(int s, const char *dev, unsigned long req, in_addr_t addr, const char *what)
{
	struct ifreq ifr;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, dev, IFNAMSIZ - 1);
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = addr;
	ifreq_ioctl(s, req, &ifr, what);
}

/* The value of key (e.g. "gmfs.ip=") on the kernel's cmdline into out ("" when absent). */
static void cmdline_value(const char *key, char *out, size_t len)
{
	char buf[4096];
	out[0] = '\0';
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n"))
		if (strncmp(tok, key, strlen(key)) == 0)
			snprintf(out, len, "%s", tok + strlen(key));
}

static void network(void)
{
	char ip[64], *slash;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0) {
		say("socket: %s", strerror(errno));
		return;
	}
	link_up(s, "lo");
	cmdline_value("gmfs.ip=", ip, sizeof ip);
	if (!ip[0]) {
		say("no gmfs.ip= on the cmdline: eth0 stays down");
		close(s);
		return;
	}
	slash = strchr(ip, '/');
	int prefix = slash ? atoi(slash + 1) : 24;
	if (slash)
		*slash = '\0';
	in_addr_t addr = inet_addr(ip);
	in_addr_t mask = prefix <= 0 ? 0 : htonl(0xffffffffu << (32 - (prefix > 32 ? 32 : prefix)));
	set_addr(s, "eth0", SIOCSIFADDR, addr, "eth0 address");
	set_addr(s, "eth0", SIOCSIFNETMASK, mask, "eth0 netmask");
	link_up(s, "eth0");
	close(s);
	say("eth0 %s", ip);
}

static void data_disk(void)
{
	/* The disk: /dev/vda on virtio-blk, /dev/sda on AHCI (a guest without virtio devices). Both
	 * probe asynchronously: wait for either up to 30 s. */
	static const char *const disks[] = { "/dev/vda", "/dev/sda" };
	const char *disk = disks[0];
	struct stat st;
	for (int i = 0; i < 300; i++) {
		int found = 0;
		for (size_t d = 0; d < sizeof disks / sizeof disks[0] && !found; d++)
			if (stat(disks[d], &st) == 0) {
				disk = disks[d];
				found = 1;
			}
		if (found)
			break;
		usleep(100000);
	}
	mkdir("/data", 0755);
	if (mount(disk, "/data", "ext4", 0, NULL) == 0)
		say("/data mounted (%s)", disk);
	else
		say("no /data (mount %s failed: %s): the workload runs without its log", disk, strerror(errno));
}

/* Modules in dependency order (written by the build from the kernel's modules.dep); none when the
 * kernel has everything built in (fleet.py guest --kernel). */
static void load_modules(void)
{
	char line[256], path[300];
	FILE *f = fopen("/lib/modules/load.order", "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!line[0])
			continue;
		snprintf(path, sizeof path, "/lib/modules/%s", line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
			say("loading %s failed: %s", line, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	fclose(f);
}

/* What every service's environment holds besides PATH: GMFS_QGA=DEVICE from gmfs.qga=. */
static char qga_env[128];

static pid_t start(const char *path)
{
	pid_t pid = fork();
	if (pid == 0) {
		char *argv[] = { (char *)path, NULL };
		char *envp[] = { "PATH=/bin", qga_env[0] ? qga_env : NULL, NULL };
		execve(path, argv, envp);
		_exit(127);
	}
	if (pid < 0)
		say("fork for %s: %s", path, strerror(errno));
	return pid;
}

int main(void)
{
	char services[MAX_SERVICES][256];
	pid_t pids[MAX_SERVICES];
	int nservices = 0;

	try_mount("proc", "/proc", "proc", 0);
	try_mount("sysfs", "/sys", "sysfs", 0);
	try_mount("devtmpfs", "/dev", "devtmpfs", 0);
	/* Keep the console quiet: only warnings and worse from the kernel after this point. */
	int fd = open("/proc/sys/kernel/printk", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, "4", 1) != 1)
			say("printk level: %s", strerror(errno));
		close(fd);
	}
	say("up %.2fs", uptime());

	load_modules();
	data_disk();
	network();
	char qga[96];
	cmdline_value("gmfs.qga=", qga, sizeof qga);
	if (qga[0]) {
		snprintf(qga_env, sizeof qga_env, "GMFS_QGA=%s", qga);
		say("guest agent on %s", qga);
	}

	snprintf(services[nservices++], sizeof services[0], "/bin/workload");
	FILE *f = fopen("/etc/gmfs-services", "r");
	if (f) {
		char line[256];
		while (nservices < MAX_SERVICES && fgets(line, sizeof line, f)) {
			line[strcspn(line, "\r\n")] = '\0';
			if (line[0] && line[0] != '#')
				snprintf(services[nservices++], sizeof services[0], "%s", line);
		}
		fclose(f);
	}
	for (int i = 0; i < nservices; i++)
		pids[i] = start(services[i]);

	/* Reap every child; restart a service that exited, after a second. */
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, 0);
		if (pid < 0) {
			sleep(1);
			continue;
		}
		for (int i = 0; i < nservices; i++) {
			if (pids[i] != pid)
				continue;
			say("%s exited rc=%d; restarting in 1s", services[i],
			    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
			sleep(1);
			pids[i] = start(services[i]);
		}
	}
}
