/*
 * The nested test guest's workload: one static process whose state shows, from outside, whether a
 * live update kept the guest running (same boot_id, same pid, counter and seq continued, its memory
 * intact) and whether its disk kept every write (seq.log lines 1..N, no gap).
 *
 *   counter   incremented every 10 ms in this process's memory
 *   seq.log   /data/seq.log, one line "<n>" per second, each write followed by fdatasync
 *   pattern   4 MiB filled with a deterministic pattern at start, re-checked on every `status`
 *   TCP 7000  one thread per connection; request lines, one JSON line per answer:
 *             status      {"boot_id","uptime_s","pid","counter","seq","conn","requests","pattern_ok"}
 *             check-disk  {"lines","first","last","gaps","bad"}   (lines must read 1..N)
 *             sync-ro     stop appending, sync, remount /data read-only -> {"ok":true}
 *
 * Connections are long-lived: a probe outside the fleet host keeps one open across the host's
 * kexec and the guest's save/restore, so nothing here may time a connection out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PORT 7000
#define SEQ_LOG "/data/seq.log"
#define DATA_DIR "/data"
#define PATTERN_BYTES (4u << 20)

static volatile uint64_t counter;
static pthread_mutex_t seq_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t seq;          /* last sequence number written (and synced) */
static int appending = 1;     /* cleared by sync-ro */
static int seq_fd = -1;
static uint32_t *pattern;
static char boot_id[64] = "unknown";
static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t next_conn = 1;

static uint32_t pattern_word(uint32_t i) { return (i * 2654435761u) ^ 0xA5A5A5A5u; }

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static void *count_thread(void *arg)
{
	(void)arg;
	for (;;) {
		sleep_ms(10);
		__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* Scan seq.log: the number of lines, the first and last value, gaps (a line that is not the previous
 * one + 1) and bad lines (not a number). Used at start (to continue after a guest reboot) and by
 * check-disk. */
struct disk_check { uint64_t lines, first, last, gaps, bad; };

static struct disk_check scan_log(void)
{
	struct disk_check c = { 0, 0, 0, 0, 0 };
	FILE *f = fopen(SEQ_LOG, "r");
	char line[64];
	if (!f)
		return c;
	while (fgets(line, sizeof line, f)) {
		char *end;
		unsigned long long v = strtoull(line, &end, 10);
		if (end == line || (*end != '\n' && *end != '\0')) {
			c.bad++;
			continue;
		}
		if (c.lines == 0)
			c.first = v;
		else if (v != c.last + 1)
			c.gaps++;
		c.last = v;
		c.lines++;
	}
	fclose(f);
	return c;
}

static void *append_thread(void *arg)
{
	(void)arg;
	for (;;) {
		sleep_ms(1000);
		pthread_mutex_lock(&seq_lock);
		if (appending && seq_fd >= 0) {
			char line[32];
			int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)seq + 1);
			if (write(seq_fd, line, n) == n && fdatasync(seq_fd) == 0)
				seq++;
			else
				fprintf(stderr, "workload: append failed: %s\n", strerror(errno));
		}
		pthread_mutex_unlock(&seq_lock);
	}
	return NULL;
}

static int pattern_ok(void)
{
	for (uint32_t i = 0; i < PATTERN_BYTES / 4; i++)
		if (pattern[i] != pattern_word(i))
			return 0;
	return 1;
}

static double uptime_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int answer(int fd, const char *cmd, uint64_t conn, uint64_t requests, char *out, size_t len)
{
	(void)fd;
	if (strcmp(cmd, "status") == 0) {
		uint64_t s;
		pthread_mutex_lock(&seq_lock);
		s = seq;
		pthread_mutex_unlock(&seq_lock);
		return snprintf(out, len,
				"{\"boot_id\":\"%s\",\"uptime_s\":%.2f,\"pid\":%d,\"counter\":%llu,\"seq\":%llu,"
				"\"conn\":%llu,\"requests\":%llu,\"pattern_ok\":%s}\n",
				boot_id, uptime_s(), (int)getpid(),
				(unsigned long long)__atomic_load_n(&counter, __ATOMIC_RELAXED),
				(unsigned long long)s, (unsigned long long)conn, (unsigned long long)requests,
				pattern_ok() ? "true" : "false");
	}
	if (strcmp(cmd, "check-disk") == 0) {
		struct disk_check c;
		pthread_mutex_lock(&seq_lock); /* no half-written line while reading */
		c = scan_log();
		pthread_mutex_unlock(&seq_lock);
		/* 1..N: starts at 1 and every line follows the one before. */
		if (c.lines && c.first != 1)
			c.gaps++;
		return snprintf(out, len, "{\"lines\":%llu,\"first\":%llu,\"last\":%llu,\"gaps\":%llu,\"bad\":%llu}\n",
				(unsigned long long)c.lines, (unsigned long long)c.first,
				(unsigned long long)c.last, (unsigned long long)c.gaps,
				(unsigned long long)c.bad);
	}
	if (strcmp(cmd, "sync-ro") == 0) {
		int rc;
		pthread_mutex_lock(&seq_lock);
		appending = 0;
		if (seq_fd >= 0) {
			fsync(seq_fd);
			close(seq_fd);
			seq_fd = -1;
		}
		sync();
		rc = mount(NULL, DATA_DIR, NULL, MS_REMOUNT | MS_RDONLY, NULL);
		pthread_mutex_unlock(&seq_lock);
		if (rc != 0)
			return snprintf(out, len, "{\"ok\":false,\"error\":\"remount: %s\"}\n", strerror(errno));
		return snprintf(out, len, "{\"ok\":true}\n");
	}
	return snprintf(out, len, "{\"error\":\"unknown command\"}\n");
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void *conn_thread(void *arg)
{
	int fd = (int)(intptr_t)arg;
	uint64_t conn, requests = 0;
	char in[256], out[512];
	size_t used = 0;

	pthread_mutex_lock(&conn_lock);
	conn = next_conn++;
	pthread_mutex_unlock(&conn_lock);
	for (;;) {
		ssize_t n = recv(fd, in + used, sizeof in - 1 - used, 0);
		char *nl;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		used += (size_t)n;
		in[used] = '\0';
		while ((nl = strchr(in, '\n'))) {
			*nl = '\0';
			if (nl > in && nl[-1] == '\r')
				nl[-1] = '\0';
			if (in[0]) {
				int len = answer(fd, in, conn, ++requests, out, sizeof out);
				if (write_all(fd, out, (size_t)len) < 0)
					goto done;
			}
			used -= (size_t)(nl + 1 - in);
			memmove(in, nl + 1, used + 1);
		}
		if (used == sizeof in - 1) /* a line too long: drop it */
			used = 0;
	}
done:
	close(fd);
	return NULL;
}

static void start_thread(void *(*fn)(void *), void *arg)
{
	pthread_t t;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 64 * 1024); /* many connections in a 256 MiB guest */
	if (pthread_create(&t, &a, fn, arg) != 0) {
		perror("workload: pthread_create");
		if (fn == conn_thread)
			close((int)(intptr_t)arg);
	}
	pthread_attr_destroy(&a);
}

int main(void)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(PORT) };
	struct disk_check c;
	int one = 1, srv;
	FILE *f;

	signal(SIGPIPE, SIG_IGN);
	if ((f = fopen("/proc/sys/kernel/random/boot_id", "r"))) {
		if (fgets(boot_id, sizeof boot_id, f))
			boot_id[strcspn(boot_id, "\n")] = '\0';
		fclose(f);
	}
	pattern = malloc(PATTERN_BYTES);
	if (!pattern) {
		perror("workload: malloc");
		return 1;
	}
	for (uint32_t i = 0; i < PATTERN_BYTES / 4; i++)
		pattern[i] = pattern_word(i);

	/* Continue the log after a guest reboot, so it stays 1..N across cold boots too. */
	c = scan_log();
	seq = c.last;
	seq_fd = open(SEQ_LOG, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (seq_fd < 0)
		fprintf(stderr, "workload: %s: %s (serving without a log)\n", SEQ_LOG, strerror(errno));

	srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (srv < 0 || bind(srv, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(srv, 128) < 0) {
		perror("workload: listen");
		return 1;
	}
	start_thread(count_thread, NULL);
	start_thread(append_thread, NULL);
	/* The line the boot-time measurements wait for. */
	printf("workload listening on %d pid %d seq %llu uptime %.2f\n", PORT, (int)getpid(),
	       (unsigned long long)seq, uptime_s());
	fflush(stdout);
	for (;;) {
		int fd = accept4(srv, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EINTR)
				sleep_ms(10);
			continue;
		}
		start_thread(conn_thread, (void *)(intptr_t)fd);
	}
}
