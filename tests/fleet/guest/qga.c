/* A minimal qemu-guest-agent for the fleet's test guest (busybox initramfs): enough of the agent's
 * JSON protocol for the collection's in-guest health gate - guest-sync, guest-sync-delimited,
 * guest-ping, guest-info, and guest-exec / guest-exec-status of a program without its output.
 * It finds the virtio-serial port named org.qemu.guest_agent.0 under /sys/class/virtio-ports, or
 * takes a device as its argument or from GMFS_QGA (init.c sets it from gmfs.qga= on the kernel's
 * cmdline, e.g. /dev/ttyS1: a VM whose channel is an ISA serial port); "-": stdin and stdout, as
 * the unit tests run it. A serial port is put in raw mode at 115200.
 * Built static by tests/fleet/fleet.py build_guest; started by /init (init.c) from /etc/gmfs-services. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define PORT_NAME "org.qemu.guest_agent.0"
#define MAX_LINE 65536
#define MAX_ARGS 16
#define MAX_JOBS 64

static int in_fd = -1, out_fd = -1;
static struct { int pid, status, exited; } jobs[MAX_JOBS];

static void say(const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(out_fd, s, n);
    if (w < 0) { if (errno == EINTR || errno == EAGAIN) { usleep(10000); continue; } return; }
    s += w; n -= (size_t)w;
  }
}

static int find_port(char *dev, size_t len) {
  DIR *d = opendir("/sys/class/virtio-ports");
  struct dirent *e;
  if (!d) return -1;
  while ((e = readdir(d))) {
    char path[512], name[128] = "";
    FILE *f;
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
    if (!(f = fopen(path, "r"))) continue;
    if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
    fclose(f);
    if (!strcmp(name, PORT_NAME)) { snprintf(dev, len, "/dev/%s", e->d_name); closedir(d); return 0; }
  }
  closedir(d);
  return -1;
}

/* A serial port carries the protocol's bytes as they are: no echo, no line editing, no CR/LF
 * translation (0xFF and every byte of a command pass), 8N1 at 115200, modem lines ignored. */
static int raw_tty(int fd) {
  struct termios t;
  if (tcgetattr(fd, &t)) return -1;
  cfmakeraw(&t);
  t.c_cflag |= CLOCAL | CREAD;
  t.c_cflag &= ~(tcflag_t)(CRTSCTS | HUPCL);
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  cfsetispeed(&t, B115200);
  cfsetospeed(&t, B115200);
  return tcsetattr(fd, TCSANOW, &t);
}

/* The value of "key" in a flat JSON object: a string (copied into out) or a number (returned). */
static const char *after_key(const char *json, const char *key) {
  char pat[64];
  const char *p;
  snprintf(pat, sizeof pat, "\"%s\"", key);
  if (!(p = strstr(json, pat))) return NULL;
  p += strlen(pat);
  while (*p == ' ' || *p == ':') p++;
  return p;
}

static int string_at(const char *p, char *out, size_t len) {
  size_t i = 0;
  if (!p || *p != '"') return -1;
  for (p++; *p && *p != '"' && i + 1 < len; p++) {
    if (*p == '\\' && p[1]) p++;
    out[i++] = *p;
  }
  out[i] = 0;
  return *p == '"' ? 0 : -1;
}

static void reap(void) {
  int status, pid, i;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
    for (i = 0; i < MAX_JOBS; i++)
      if (jobs[i].pid == pid) { jobs[i].status = status; jobs[i].exited = 1; }
}

static void guest_exec(const char *line) {
  char path[256], args[MAX_ARGS][256], reply[128];
  char *argv[MAX_ARGS + 2];
  const char *p = after_key(line, "arguments");
  int n = 0, pid, slot;
  if (!p || string_at(after_key(p, "path"), path, sizeof path)) {
    say("{\"error\": {\"class\": \"GenericError\", \"desc\": \"guest-exec needs a path\"}}\n");
    return;
  }
  argv[n++] = path;
  if ((p = after_key(p, "arg")) && *p == '[') {
    for (p++; *p && *p != ']' && n <= MAX_ARGS;) {
      while (*p == ' ' || *p == ',') p++;
      if (*p != '"' || string_at(p, args[n - 1], sizeof args[0])) break;
      argv[n] = args[n - 1];
      n++;
      for (p++; *p && *p != '"'; p++) if (*p == '\\' && p[1]) p++;
      if (*p) p++;
    }
  }
  argv[n] = NULL;
  reap();
  for (slot = 0; slot < MAX_JOBS && jobs[slot].pid && !jobs[slot].exited; slot++) ;
  if (slot == MAX_JOBS) { say("{\"error\": {\"class\": \"GenericError\", \"desc\": \"too many jobs\"}}\n"); return; }
  if ((pid = fork()) == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
    execv(path, argv);
    _exit(127);
  }
  if (pid < 0) { say("{\"error\": {\"class\": \"GenericError\", \"desc\": \"fork failed\"}}\n"); return; }
  jobs[slot].pid = pid; jobs[slot].exited = 0; jobs[slot].status = 0;
  snprintf(reply, sizeof reply, "{\"return\": {\"pid\": %d}}\n", pid);
  say(reply);
}

static void guest_exec_status(const char *line) {
  const char *p = after_key(line, "pid");
  int pid = p ? atoi(p) : -1, i;
  char reply[160];
  reap();
  for (i = 0; i < MAX_JOBS; i++) {
    if (jobs[i].pid != pid) continue;
    if (!jobs[i].exited) { say("{\"return\": {\"exited\": false}}\n"); return; }
    if (WIFSIGNALED(jobs[i].status))
      snprintf(reply, sizeof reply, "{\"return\": {\"exited\": true, \"signal\": %d}}\n", WTERMSIG(jobs[i].status));
    else
      snprintf(reply, sizeof reply, "{\"return\": {\"exited\": true, \"exitcode\": %d}}\n", WEXITSTATUS(jobs[i].status));
    jobs[i].pid = 0;
    say(reply);
    return;
  }
  say("{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such guest-exec pid\"}}\n");
}

static void handle(const char *line) {
  char execute[64], reply[256];
  const char *id;
  if (string_at(after_key(line, "execute"), execute, sizeof execute)) {
    say("{\"error\": {\"class\": \"GenericError\", \"desc\": \"no execute\"}}\n");
    return;
  }
  if (!strcmp(execute, "guest-sync") || !strcmp(execute, "guest-sync-delimited")) {
    id = after_key(line, "id");
    snprintf(reply, sizeof reply, "%s{\"return\": %lld}\n", strcmp(execute, "guest-sync") ? "\xff" : "",
             id ? atoll(id) : 0LL);
    say(reply);
  } else if (!strcmp(execute, "guest-ping")) {
    say("{\"return\": {}}\n");
  } else if (!strcmp(execute, "guest-info")) {
    say("{\"return\": {\"version\": \"gmfs-qga 1\", \"supported_commands\": ["
        "{\"name\": \"guest-sync\", \"enabled\": true}, {\"name\": \"guest-sync-delimited\", \"enabled\": true}, "
        "{\"name\": \"guest-ping\", \"enabled\": true}, {\"name\": \"guest-info\", \"enabled\": true}, "
        "{\"name\": \"guest-exec\", \"enabled\": true}, {\"name\": \"guest-exec-status\", \"enabled\": true}]}}\n");
  } else if (!strcmp(execute, "guest-exec")) {
    guest_exec(line);
  } else if (!strcmp(execute, "guest-exec-status")) {
    guest_exec_status(line);
  } else {
    snprintf(reply, sizeof reply, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"%.64s\"}}\n", execute);
    say(reply);
  }
}

int main(int argc, char **argv) {
  static char line[MAX_LINE];
  size_t used = 0;
  int depth = 0, quoted = 0, escaped = 0;
  char dev[300];
  if (argc > 1 && !strcmp(argv[1], "-")) {
    in_fd = 0; out_fd = 1;
  } else {
    const char *named = argc > 1 ? argv[1] : getenv("GMFS_QGA");
    if (named && named[0]) snprintf(dev, sizeof dev, "%s", named);
    else while (find_port(dev, sizeof dev)) sleep(1);  /* virtio_console may probe late */
    /* O_NONBLOCK: a serial port's open must not wait for a carrier; reads block again below. */
    while ((in_fd = open(dev, O_RDWR | O_NOCTTY | O_NONBLOCK)) < 0) sleep(1);
    fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) & ~O_NONBLOCK);
    if (isatty(in_fd) && raw_tty(in_fd)) { perror(dev); return 1; }
    out_fd = in_fd;
  }
  for (;;) {
    char c;
    ssize_t r = read(in_fd, &c, 1);
    if (r == 0) {
      if (in_fd == 0) return 0;
      usleep(200000);  /* a virtio-serial port reads 0 while no host side is connected */
      continue;
    }
    if (r < 0) { if (errno == EINTR || errno == EAGAIN) continue; usleep(200000); continue; }
    if ((unsigned char)c == 0xff) { used = 0; depth = 0; quoted = escaped = 0; continue; }  /* a reset */
    if (!depth && c != '{') continue;  /* whitespace between commands */
    if (used + 1 < sizeof line) line[used++] = c;
    /* one command is one JSON object: count its braces outside strings */
    if (escaped) escaped = 0;
    else if (quoted && c == '\\') escaped = 1;
    else if (c == '"') quoted = !quoted;
    else if (!quoted && c == '{') depth++;
    else if (!quoted && c == '}' && --depth == 0) {
      line[used] = 0;
      handle(line);
      used = 0;
    }
  }
}
