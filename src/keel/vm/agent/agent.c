/* keel-vm guest agent: PID 1 of every keel-vm guest.
 *
 * Boots the guest (proc, sys, dev, modules), mounts the virtiofs share, then
 * serves the host over the virtio-serial port "keel.ctl" with the typed frames
 * of keel agent protocol 1 (src/keel/vm/protocol.py is the reference; the
 * numbers below must match it). It creates the container process stopped
 * before its exec, starts it, runs extra processes, relays stdio, forwards
 * signals and reports wait statuses. Small and static because the guest has
 * nothing else: no libc, no shell, and an emulated CPU that makes every
 * start-up millisecond count.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/capability.h>
#include <net/if.h>
#include <net/route.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define PROTOCOL_VERSION 1
#define MAX_FRAME (16u << 20)
#define MAX_PROCS 64
#define SHARE "/keel/share"
#define CGROUP "/sys/fs/cgroup/container" /* the container's cgroup in the guest (one per VM) */

/* message types */
enum { M_CREATE = 1, M_START = 2, M_EXEC = 3, M_STDIN = 4, M_CLOSE_STDIN = 5, M_SIGNAL = 6,
       M_RESIZE = 7, M_SHUTDOWN = 8, M_UPDATE = 9, M_PS = 10,
       M_HELLO = 64, M_READY = 65, M_STARTED = 66, M_OUTPUT = 67, M_EXIT = 68, M_ERROR = 69, M_DONE = 70 };
/* field keys */
enum { K_ID = 1, K_ARGS, K_ENV, K_CWD, K_UID, K_GID, K_GROUPS, K_ROOTFS, K_READONLY, K_HOSTNAME,
       K_NSFLAGS, K_MNT_TYPE, K_MNT_SRC, K_MNT_DST, K_MNT_FLAGS, K_MNT_DATA, K_RL_TYPE, K_RL_SOFT,
       K_RL_HARD, K_CAP_BND, K_CAP_EFF, K_CAP_PRM, K_CAP_INH, K_CAP_AMB, K_NNP, K_TERMINAL,
       K_MASKED, K_RO_PATHS, K_SYSCTL_KEY, K_SYSCTL_VAL, K_DATA, K_STREAM, K_SIGNAL, K_ALL,
       K_ROWS, K_COLS, K_PID, K_STATUS, K_MESSAGE, K_VERSION, K_KERNEL, K_DEV_PATH, K_DEV_SPEC,
       K_MNT_PROP, K_UMASK, K_CG_KEY, K_CG_VAL, K_NET_ADDR, K_NET_GW, K_NET_MTU, K_PS_PID, K_PS_ARGS, K_MAX };
enum { T_INT = 'i', T_BYTES = 'b', T_LIST = 'l', T_INTS = 'n' };

struct field { int kind; const unsigned char *p; uint32_t len; uint32_t count; int64_t i; };
struct msg { int type; struct field f[K_MAX]; };

struct proc {
    uint32_t id; pid_t pid; int in_fd, out_fd, err_fd, pty;
    int go_fd;   /* write 's' to start the created process; close to abandon it */
    int fail_fd; /* the child's error pipe: EOF at a successful exec */
    int started, used;
};
static struct proc procs[MAX_PROCS];
static int ctl = -1;
static pid_t init_pid; /* the container's first process, for exec to join */

static void logmsg(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) { (void)!write(fd, buf, n); close(fd); }
}

/* ---- frames ---- */
static unsigned char *out_buf; static size_t out_len, out_cap;

static void put(const void *p, size_t n)
{
    if (out_len + n > out_cap) {
        out_cap = (out_len + n) * 2 + 256;
        out_buf = realloc(out_buf, out_cap);
        if (!out_buf) _exit(120);
    }
    memcpy(out_buf + out_len, p, n); out_len += n;
}
static void put32(uint32_t v) { unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v }; put(b, 4); }
static void begin(int type) { out_len = 0; put32(0); unsigned char t = type; put(&t, 1); }
static void f_int(int key, int64_t v)
{
    unsigned char h[2] = { key, T_INT }; put(h, 2);
    put32((uint64_t)v >> 32); put32((uint32_t)v);
}
static void f_bytes(int key, const void *p, size_t n)
{
    unsigned char h[2] = { key, T_BYTES }; put(h, 2); put32(n); put(p, n);
}
static void send_frame(void)
{
    uint32_t n = out_len - 4;
    out_buf[0] = n >> 24; out_buf[1] = n >> 16; out_buf[2] = n >> 8; out_buf[3] = n;
    size_t off = 0;
    while (off < out_len) {
        ssize_t w = write(ctl, out_buf + off, out_len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd p = { ctl, POLLOUT, 0 }; poll(&p, 1, -1); continue; }
            logmsg("keel-agent: write to host: %s", strerror(errno));
            return;
        }
        off += w;
    }
}
static void send_error(uint32_t id, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    begin(M_ERROR); f_int(K_ID, id); f_bytes(K_MESSAGE, buf, strlen(buf)); send_frame();
}

static uint32_t get32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

/* Parse one frame payload; every length is checked against the payload's end. */
static int parse(const unsigned char *p, uint32_t n, struct msg *m)
{
    memset(m, 0, sizeof *m);
    if (n < 1) return -1;
    m->type = p[0];
    const unsigned char *e = p + n;
    p++;
    while (p < e) {
        if (e - p < 2) return -1;
        int key = p[0], kind = p[1];
        p += 2;
        struct field f = { kind, 0, 0, 0, 0 };
        if (kind == T_INT) {
            if (e - p < 8) return -1;
            f.i = (int64_t)((uint64_t)get32(p) << 32 | get32(p + 4)); p += 8;
        } else if (kind == T_BYTES) {
            if (e - p < 4) return -1;
            f.len = get32(p); p += 4;
            if ((uint32_t)(e - p) < f.len) return -1;
            f.p = p; p += f.len;
        } else if (kind == T_LIST) {
            if (e - p < 4) return -1;
            f.count = get32(p); p += 4; f.p = p;
            for (uint32_t i = 0; i < f.count; i++) {
                if (e - p < 4) return -1;
                uint32_t l = get32(p); p += 4;
                if ((uint32_t)(e - p) < l) return -1;
                p += l;
            }
            f.len = p - f.p;
        } else if (kind == T_INTS) {
            if (e - p < 4) return -1;
            f.count = get32(p); p += 4;
            if ((uint64_t)(e - p) < (uint64_t)f.count * 8) return -1;
            f.p = p; p += f.count * 8;
        } else return -1;
        if (key > 0 && key < K_MAX) m->f[key] = f; /* unknown keys: ignored (newer hosts) */
    }
    return 0;
}

static int64_t iget(struct msg *m, int key, int64_t dflt) { return m->f[key].kind == T_INT ? m->f[key].i : dflt; }
static int64_t ints_at(struct field *f, uint32_t i) { const unsigned char *q = f->p + i * 8; return (int64_t)((uint64_t)get32(q) << 32 | get32(q + 4)); }

/* A NUL-terminated copy of a bytes field (or "" when absent). */
static char *sget(struct msg *m, int key)
{
    struct field *f = &m->f[key];
    char *s = malloc(f->len + 1);
    if (!s) _exit(120);
    if (f->kind == T_BYTES && f->len) memcpy(s, f->p, f->len);
    s[f->kind == T_BYTES ? f->len : 0] = 0;
    return s;
}
/* A NULL-terminated array of NUL-terminated copies of a list field; strings with NULs are refused. */
static char **lget(struct msg *m, int key, uint32_t *count)
{
    struct field *f = &m->f[key];
    uint32_t n = f->kind == T_LIST ? f->count : 0;
    char **v = calloc(n + 1, sizeof *v);
    if (!v) _exit(120);
    const unsigned char *p = f->p;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t l = get32(p); p += 4;
        if (memchr(p, 0, l)) { free(v); return NULL; }
        v[i] = malloc(l + 1);
        if (!v[i]) _exit(120);
        memcpy(v[i], p, l); v[i][l] = 0; p += l;
    }
    if (count) *count = n;
    return v;
}

/* ---- guest boot ---- */
static void load_modules(void)
{
    FILE *f = fopen("/lib/modules/keel.order", "r");
    char line[256];
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line) continue;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { logmsg("keel-agent: %s: %s", line, strerror(errno)); continue; }
        if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
            logmsg("keel-agent: load %s: %s", line, strerror(errno));
        close(fd);
    }
    fclose(f);
}

static int find_port(const char *name, char *dev, size_t devlen)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d))) {
        char path[300], buf[64];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0; buf[strcspn(buf, "\n")] = 0;
        if (!strcmp(buf, name)) { snprintf(dev, devlen, "/dev/%s", e->d_name); closedir(d); return 0; }
    }
    closedir(d);
    return -1;
}

static void boot(void)
{
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mkdir("/dev/pts", 0755);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
    mkdir("/keel", 0755); mkdir(SHARE, 0755);
    /* cgroup v2 for the container's resource limits inside the guest */
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    static const char *ctrls[] = { "+cpu", "+memory", "+pids", "+io" };
    for (size_t i = 0; i < sizeof ctrls / sizeof ctrls[0]; i++) {
        int fd = open("/sys/fs/cgroup/cgroup.subtree_control", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) { (void)!write(fd, ctrls[i], strlen(ctrls[i])); close(fd); }
    }
    load_modules();
    char dev[64];
    for (int i = 0; i < 2000; i++) { /* the port appears once virtio_console has probed */
        if (find_port("keel.ctl", dev, sizeof dev) == 0 && (ctl = open(dev, O_RDWR | O_CLOEXEC)) >= 0) break;
        usleep(5000);
    }
    if (ctl < 0) { logmsg("keel-agent: no keel.ctl port"); reboot(RB_POWER_OFF); }
    for (int i = 0; i < 400; i++) {
        if (mount("keel", SHARE, "virtiofs", MS_NOSUID | MS_NODEV, NULL) == 0) break;
        usleep(5000);
    }
}

/* ---- the container process ---- */
static struct proc *proc_by_id(uint32_t id)
{
    for (int i = 0; i < MAX_PROCS; i++) if (procs[i].used && procs[i].id == id) return &procs[i];
    return NULL;
}
static struct proc *proc_new(uint32_t id)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (!procs[i].used) {
            memset(&procs[i], 0, sizeof procs[i]);
            procs[i].used = 1; procs[i].id = id;
            procs[i].in_fd = procs[i].out_fd = procs[i].err_fd = procs[i].pty = procs[i].go_fd = procs[i].fail_fd = -1;
            return &procs[i];
        }
    return NULL;
}

/* The child reports a failure on its error pipe as text, then exits. */
static int errfd = -1;
static void fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1) n = sizeof buf - 1;
    if (errfd >= 0) (void)!write(errfd, buf, n);
    _exit(127);
}

static void mkdirs(const char *path, mode_t mode)
{
    char buf[4096];
    /* most mount points exist already: one call, not one per component (each can be a round
     * trip to virtiofsd) */
    if (mkdir(path, mode) == 0 || errno == EEXIST) return;
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = 0; mkdir(buf, mode); *p = '/'; }
    mkdir(buf, mode);
}

static void join(char *out, size_t n, const char *root, const char *path)
{
    snprintf(out, n, "%s/%s", root, path[0] == '/' ? path + 1 : path);
}

static void do_mounts(struct msg *m, const char *root)
{
    uint32_t n = 0, n2 = 0, n3 = 0, n4 = 0;
    char **types = lget(m, K_MNT_TYPE, &n), **srcs = lget(m, K_MNT_SRC, &n2), **dsts = lget(m, K_MNT_DST, &n3);
    char **datas = lget(m, K_MNT_DATA, &n4);
    struct field *flags = &m->f[K_MNT_FLAGS], *props = &m->f[K_MNT_PROP];
    if (!types || !srcs || !dsts || !datas || n2 != n || n3 != n || n4 != n || flags->count != n || props->count != n)
        fail("mounts: malformed message");
    for (uint32_t i = 0; i < n; i++) {
        char dst[4096];
        join(dst, sizeof dst, root, dsts[i]);
        unsigned long fl = ints_at(flags, i);
        int bind = fl & MS_BIND;
        struct stat st;
        if (bind && stat(srcs[i], &st) == 0 && !S_ISDIR(st.st_mode)) {
            char parent[4096];
            snprintf(parent, sizeof parent, "%s", dst);
            char *slash = strrchr(parent, '/');
            if (slash) { *slash = 0; mkdirs(parent, 0755); }
            int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0) close(fd);
        } else {
            mkdirs(dst, 0755);
        }
        const char *type = types[i][0] ? types[i] : NULL;
        if (mount(srcs[i], dst, bind ? NULL : type, fl & ~(bind ? MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC : 0), datas[i]) < 0) {
            /* /sys in a container without its own network namespace: as runc, fall back to a bind */
            if (type && !strcmp(type, "sysfs") && (errno == EPERM || errno == EBUSY)) {
                if (mount("/sys", dst, NULL, MS_BIND | MS_REC, NULL) < 0) fail("mount sysfs on %s: %s", dsts[i], strerror(errno));
                mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
                continue;
            }
            fail("mount %s on %s (%s): %s", srcs[i], dsts[i], type ? type : "bind", strerror(errno));
        }
        if (bind && (fl & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)))
            if (mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | (fl & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_REC)), NULL) < 0)
                fail("remount %s read-only: %s", dsts[i], strerror(errno));
        unsigned long pf = ints_at(props, i);
        if (pf && mount(NULL, dst, NULL, pf, NULL) < 0) fail("propagation of %s: %s", dsts[i], strerror(errno));
    }
}

static void do_devices(struct msg *m, const char *root)
{
    char path[4096];
    static const char *links[][2] = { { "/proc/self/fd", "dev/fd" }, { "/proc/self/fd/0", "dev/stdin" },
        { "/proc/self/fd/1", "dev/stdout" }, { "/proc/self/fd/2", "dev/stderr" }, { "pts/ptmx", "dev/ptmx" } };
    uint32_t n = 0;
    char **paths = lget(m, K_DEV_PATH, &n);
    struct field *spec = &m->f[K_DEV_SPEC];
    if (!paths || spec->count != n * 6) fail("devices: malformed message");
    for (uint32_t i = 0; i < n; i++) {
        int64_t type = ints_at(spec, i * 6), maj = ints_at(spec, i * 6 + 1), min = ints_at(spec, i * 6 + 2);
        int64_t mode = ints_at(spec, i * 6 + 3), uid = ints_at(spec, i * 6 + 4), gid = ints_at(spec, i * 6 + 5);
        join(path, sizeof path, root, paths[i]);
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", path);
        char *slash = strrchr(parent, '/');
        if (slash) { *slash = 0; mkdirs(parent, 0755); }
        unlink(path);
        mode_t kind = type == 'b' ? S_IFBLK : type == 'p' ? S_IFIFO : S_IFCHR;
        if (mknod(path, kind | (mode & 07777), makedev(maj, min)) < 0) fail("mknod %s: %s", paths[i], strerror(errno));
        chmod(path, mode & 07777);
        if (chown(path, uid, gid) < 0) fail("chown %s: %s", paths[i], strerror(errno));
    }
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        join(path, sizeof path, root, links[i][1]);
        struct stat st;
        if (lstat(path, &st) == 0) continue;
        (void)!symlink(links[i][0], path);
    }
}

static void do_masks(struct msg *m)
{
    uint32_t n = 0;
    char **masked = lget(m, K_MASKED, &n);
    for (uint32_t i = 0; masked && i < n; i++) {
        struct stat st;
        if (stat(masked[i], &st) < 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (mount("tmpfs", masked[i], "tmpfs", MS_RDONLY, "size=0") < 0) fail("mask %s: %s", masked[i], strerror(errno));
        } else if (mount("/dev/null", masked[i], NULL, MS_BIND, NULL) < 0) fail("mask %s: %s", masked[i], strerror(errno));
    }
    char **ro = lget(m, K_RO_PATHS, &n);
    for (uint32_t i = 0; ro && i < n; i++) {
        if (mount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL) < 0) { if (errno == ENOENT) continue; fail("readonly %s: %s", ro[i], strerror(errno)); }
        if (mount(NULL, ro[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, NULL) < 0) fail("readonly %s: %s", ro[i], strerror(errno));
    }
}

static void do_sysctls(struct msg *m)
{
    uint32_t n = 0, n2 = 0;
    char **k = lget(m, K_SYSCTL_KEY, &n), **v = lget(m, K_SYSCTL_VAL, &n2);
    if (!k || !v || n != n2) fail("sysctls: malformed message");
    for (uint32_t i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof path, "/proc/sys/%s", k[i]);
        for (char *p = path + 10; *p; p++) if (*p == '.') *p = '/';
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, v[i], strlen(v[i])) < 0) fail("sysctl %s: %s", k[i], strerror(errno));
        close(fd);
    }
}

static const char *getenv_in(char **env, const char *name)
{
    size_t l = strlen(name);
    for (; env && *env; env++) if (!strncmp(*env, name, l) && (*env)[l] == '=') return *env + l + 1;
    return NULL;
}

/* A new network namespace starts with lo down; containers expect it up (as runc does). */
static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    if (s >= 0) close(s);
}

/* The NIC that mirrors the container's network (hostnet.py): address, MTU, up, default route,
 * in the guest's own network namespace, which the container then uses. */
static int net_setup(struct msg *m, uint32_t id)
{
    char *addr = sget(m, K_NET_ADDR), *gw = sget(m, K_NET_GW);
    if (!*addr) return 0;
    char ifname[IFNAMSIZ] = "";
    for (int i = 0; i < 400 && !*ifname; i++) { /* virtio_net may still be probing */
        DIR *d = opendir("/sys/class/net");
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.' && strcmp(e->d_name, "lo")) { snprintf(ifname, sizeof ifname, "%s", e->d_name); break; }
        if (d) closedir(d);
        if (!*ifname) usleep(5000);
    }
    if (!*ifname) { send_error(id, "network: the VM has no network interface"); return -1; }
    char *slash = strchr(addr, '/');
    int prefix = slash ? atoi(slash + 1) : 32;
    if (slash) *slash = 0;
    struct sockaddr_in sin = { .sin_family = AF_INET };
    if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1 || prefix < 0 || prefix > 32) {
        send_error(id, "network: bad address %s", addr); return -1;
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    int64_t mtu = iget(m, K_NET_MTU, 0);
    if (mtu > 0) { ifr.ifr_mtu = mtu; ioctl(s, SIOCSIFMTU, &ifr); }
    memcpy(&ifr.ifr_addr, &sin, sizeof sin);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0) { send_error(id, "network: set %s on %s: %s", addr, ifname, strerror(errno)); close(s); return -1; }
    sin.sin_addr.s_addr = prefix ? htonl(~0u << (32 - prefix)) : 0;
    memcpy(&ifr.ifr_netmask, &sin, sizeof sin);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) { send_error(id, "network: netmask on %s: %s", ifname, strerror(errno)); close(s); return -1; }
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) { ifr.ifr_flags |= IFF_UP | IFF_RUNNING; ioctl(s, SIOCSIFFLAGS, &ifr); }
    if (*gw) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst, *mask = (struct sockaddr_in *)&rt.rt_genmask;
        struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
        dst->sin_family = mask->sin_family = g->sin_family = AF_INET;
        if (inet_pton(AF_INET, gw, &g->sin_addr) != 1) { send_error(id, "network: bad gateway %s", gw); close(s); return -1; }
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = ifname;
        if (ioctl(s, SIOCADDRT, &rt) < 0) { send_error(id, "network: default route via %s: %s", gw, strerror(errno)); close(s); return -1; }
    }
    close(s);
    return 0;
}

/* HOME from the container's /etc/passwd when the config sets none (as runc), else "/". */
static char **with_home(char **env, uid_t uid)
{
    if (getenv_in(env, "HOME")) return env;
    static char home[4200];
    snprintf(home, sizeof home, "HOME=/");
    FILE *f = fopen("/etc/passwd", "re");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char *fields[7] = { 0 }, *p = line;
        int n = 0;
        line[strcspn(line, "\n")] = 0;
        while (n < 7) { fields[n++] = p; p = strchr(p, ':'); if (!p) break; *p++ = 0; }
        if (n >= 6 && fields[2] && (uid_t)strtoul(fields[2], NULL, 10) == uid && fields[5][0]) {
            snprintf(home, sizeof home, "HOME=%s", fields[5]);
            break;
        }
    }
    if (f) fclose(f);
    size_t n = 0;
    while (env[n]) n++;
    char **out = calloc(n + 2, sizeof *out);
    if (!out) _exit(120);
    memcpy(out, env, n * sizeof *out);
    out[n] = home;
    return out;
}

/* exec.LookPath as runc does it: the container's PATH, executable regular files only. */
static char *lookpath(const char *arg0, char **env)
{
    static char buf[4096];
    struct stat st;
    if (strchr(arg0, '/')) {
        if (stat(arg0, &st) < 0) fail("exec: \"%s\": stat %s: %s", arg0, arg0, strerror(errno));
        if (S_ISDIR(st.st_mode) || access(arg0, X_OK) < 0) fail("exec: \"%s\": permission denied", arg0);
        return (char *)arg0;
    }
    const char *path = getenv_in(env, "PATH");
    if (!path) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    while (*path) {
        size_t l = strcspn(path, ":");
        snprintf(buf, sizeof buf, "%.*s/%s", (int)l, l ? path : ".", arg0);
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0) return buf;
        path += l; if (*path) path++;
    }
    fail("exec: \"%s\": executable file not found in $PATH", arg0);
    return NULL;
}

/* The container's terminal comes from its own devpts (as with runc), so the child makes the
 * pty after its mounts and hands the master to the agent over a socketpair. */
static void make_console(int sock)
{
    char pts[64];
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, pts, sizeof pts))
        fail("open a pty in the container (/dev/ptmx): %s", strerror(errno));
    int s = open(pts, O_RDWR);
    if (s < 0) fail("open %s: %s", pts, strerror(errno));
    if (ioctl(s, TIOCSCTTY, 0) < 0) fail("make %s the controlling terminal: %s", pts, strerror(errno));
    dup2(s, 0); dup2(s, 1); dup2(s, 2);
    if (s > 2) close(s);
    char c = 'm';
    struct iovec iov = { &c, 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr mh = { 0 };
    mh.msg_iov = &iov; mh.msg_iovlen = 1; mh.msg_control = u.buf; mh.msg_controllen = sizeof u.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS; cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &m, sizeof(int));
    if (sendmsg(sock, &mh, 0) < 0) fail("pass the pty master: %s", strerror(errno));
    close(m);
    close(sock);
}

static int recv_console(int sock)
{
    char c;
    struct iovec iov = { &c, 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr mh = { 0 };
    mh.msg_iov = &iov; mh.msg_iovlen = 1; mh.msg_control = u.buf; mh.msg_controllen = sizeof u.buf;
    if (recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) <= 0) return -1;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    if (!cm || cm->cmsg_type != SCM_RIGHTS) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    return fd;
}

static void set_caps(struct msg *m)
{
    uint64_t bnd = iget(m, K_CAP_BND, 0), eff = iget(m, K_CAP_EFF, 0), prm = iget(m, K_CAP_PRM, 0);
    uint64_t inh = iget(m, K_CAP_INH, 0), amb = iget(m, K_CAP_AMB, 0);
    for (int c = 0; c < 64; c++)
        if (!(bnd & (1ull << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno == EINVAL) break;
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = { { eff, prm, inh }, { eff >> 32, prm >> 32, inh >> 32 } };
    if (syscall(SYS_capset, &h, d) < 0) fail("capset: %s", strerror(errno));
    for (int c = 0; c < 64; c++)
        if ((amb & (1ull << c)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0 && errno == EINVAL) break;
}

/* In the child: everything up to the exec. Returns the resolved path; the caller waits for start. */
static char *setup_child(struct msg *m, int exec_join, char **args, char ***envp, int console_sock)
{
    uint32_t ng = 0;
    struct field *groups = &m->f[K_GROUPS];
    if (!exec_join) {
        loopback_up();
        char *rootfs = sget(m, K_ROOTFS);
        char root[4096];
        snprintf(root, sizeof root, SHARE "/%s", rootfs);
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) fail("make / private: %s", strerror(errno));
        if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0) fail("bind rootfs: %s", strerror(errno));
        do_mounts(m, root);
        do_devices(m, root);
        if (chdir(root) < 0) fail("chdir rootfs: %s", strerror(errno));
        /* initramfs cannot be pivoted away from: move the root over / and chroot (runc's --no-pivot) */
        if (mount(root, "/", NULL, MS_MOVE, NULL) < 0) fail("move rootfs: %s", strerror(errno));
        if (chroot(".") < 0) fail("chroot: %s", strerror(errno));
        if (chdir("/") < 0) fail("chdir /: %s", strerror(errno));
        do_masks(m);
        if (iget(m, K_READONLY, 0) && mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
            fail("remount / read-only: %s", strerror(errno));
        char *hostname = sget(m, K_HOSTNAME);
        if (*hostname && sethostname(hostname, strlen(hostname)) < 0) fail("sethostname: %s", strerror(errno));
        do_sysctls(m);
    }
    if (console_sock >= 0) make_console(console_sock);
    struct field *rt = &m->f[K_RL_TYPE], *rs = &m->f[K_RL_SOFT], *rh = &m->f[K_RL_HARD];
    if (rt->count != rs->count || rt->count != rh->count) fail("rlimits: malformed message");
    for (uint32_t i = 0; i < rt->count; i++) {
        struct rlimit rl = { ints_at(rs, i), ints_at(rh, i) };
        if (setrlimit(ints_at(rt, i), &rl) < 0) fail("setrlimit %d: %s", (int)ints_at(rt, i), strerror(errno));
    }
    gid_t gl[256];
    ng = groups->count > 256 ? 256 : groups->count;
    for (uint32_t i = 0; i < ng; i++) gl[i] = ints_at(groups, i);
    prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
    if (setgroups(ng, gl) < 0) fail("setgroups: %s", strerror(errno));
    if (setresgid(iget(m, K_GID, 0), iget(m, K_GID, 0), iget(m, K_GID, 0)) < 0) fail("setgid: %s", strerror(errno));
    if (setresuid(iget(m, K_UID, 0), iget(m, K_UID, 0), iget(m, K_UID, 0)) < 0) fail("setuid: %s", strerror(errno));
    char *cwd = sget(m, K_CWD);
    if (chdir(*cwd ? cwd : "/") < 0) fail("chdir to cwd (\"%s\") set in config.json failed: %s", cwd, strerror(errno));
    umask(iget(m, K_UMASK, 022));
    set_caps(m);
    if (iget(m, K_NNP, 0) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail("no_new_privs: %s", strerror(errno));
    *envp = with_home(*envp, iget(m, K_UID, 0));  /* read in the container's root */
    return lookpath(args[0], *envp);
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* linux.resources as cgroup files of the container's cgroup; an ERROR is sent on failure. */
static int write_cgroup(struct msg *m, uint32_t id)
{
    uint32_t nk = 0, nv = 0;
    char **keys = lget(m, K_CG_KEY, &nk), **vals = lget(m, K_CG_VAL, &nv);
    if (!keys || !vals || nk != nv) { send_error(id, "cgroup: malformed message"); return -1; }
    for (uint32_t i = 0; i < nk; i++) {
        char path[512];
        if (strchr(keys[i], '/') || keys[i][0] == '.' || !keys[i][0]) {
            send_error(id, "cgroup file %s: not a plain name", keys[i]); return -1;
        }
        snprintf(path, sizeof path, CGROUP "/%s", keys[i]);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, vals[i], strlen(vals[i])) < 0) {
            send_error(id, "linux.resources: write %s to %s in the guest: %s", vals[i], keys[i], strerror(errno));
            if (fd >= 0) close(fd);
            return -1;
        }
        close(fd);
    }
    return 0;
}

/* CREATE (stopped before exec, waits for START) and EXEC (runs at once, in the init's namespaces). */
static void spawn(struct msg *m, int is_exec)
{
    uint32_t id = iget(m, K_ID, 0);
    if (proc_by_id(id)) { send_error(id, "process %u already exists", id); return; }
    if (is_exec && (init_pid <= 0 || kill(init_pid, 0) < 0)) { send_error(id, "the container is not running"); return; }
    if (!is_exec && init_pid > 0) { send_error(id, "the container already exists"); return; }
    char **args = lget(m, K_ARGS, NULL), **env = lget(m, K_ENV, NULL);
    if (!args || !env) { send_error(id, "args or env hold a NUL byte"); return; }
    if (!args[0]) { send_error(id, "args must not be empty"); return; }
    struct proc *p = proc_new(id);
    if (!p) { send_error(id, "too many processes"); return; }
    int terminal = iget(m, K_TERMINAL, 0);
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, rdy[2], go[2], errp[2];
    int tsock[2] = { -1, -1 };
    if (terminal) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, tsock) < 0) {
            send_error(id, "socketpair: %s", strerror(errno)); p->used = 0; return;
        }
    } else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        send_error(id, "pipe: %s", strerror(errno)); p->used = 0; return;
    }
    if (pipe2(rdy, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        send_error(id, "pipe: %s", strerror(errno)); p->used = 0; return;
    }
    if (!is_exec) {
        if (mkdir(CGROUP, 0755) < 0 && errno != EEXIST) {
            send_error(id, "cgroup %s: %s", CGROUP, strerror(errno)); p->used = 0; return;
        }
        if (write_cgroup(m, id) < 0) { p->used = 0; return; }
        if (net_setup(m, id) < 0) { p->used = 0; return; }
    }
    int nsflags = is_exec ? 0 : iget(m, K_NSFLAGS, 0);
    int cgroupns = nsflags & CLONE_NEWCGROUP;
    nsflags &= ~CLONE_NEWCGROUP; /* unshared after joining the cgroup: it becomes the ns root */
    int root_fd = -1;
    if (is_exec) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/root", init_pid);
        root_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    /* raw clone: a new pid namespace applies to the child itself only this way */
    pid_t pid = syscall(SYS_clone, SIGCHLD | nsflags, NULL, NULL, NULL, 0);
    if (pid < 0) { send_error(id, "clone: %s", strerror(errno)); p->used = 0; return; }
    if (pid == 0) {
        errfd = errp[1];
        close(rdy[0]); close(go[1]); close(errp[0]);
        sigset_t all; sigemptyset(&all); sigprocmask(SIG_SETMASK, &all, NULL);
        for (int s = 1; s < 32; s++) signal(s, SIG_DFL);
        int cfd = open(CGROUP "/cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (cfd < 0 || write(cfd, "0", 1) < 0) fail("join the container's cgroup: %s", strerror(errno));
        close(cfd);
        if (cgroupns && unshare(CLONE_NEWCGROUP) < 0) fail("cgroup namespace: %s", strerror(errno));
        if (is_exec) {
            static const char *nss[] = { "ipc", "uts", "net", "pid", "cgroup", "mnt" };
            for (size_t i = 0; i < sizeof nss / sizeof nss[0]; i++) {
                char path[64];
                snprintf(path, sizeof path, "/proc/%d/ns/%s", init_pid, nss[i]);
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0) fail("join %s namespace: %s", nss[i], strerror(errno));
                if (setns(fd, 0) < 0) fail("join %s namespace: %s", nss[i], strerror(errno));
                close(fd);
            }
            if (root_fd < 0 || fchdir(root_fd) < 0 || chroot(".") < 0) fail("enter the container root: %s", strerror(errno));
            /* joining a pid namespace applies to children: fork once more and mirror its end */
            pid_t c = fork();
            if (c < 0) fail("fork: %s", strerror(errno));
            if (c > 0) {
                int st;
                close(errp[1]); close(rdy[1]);
                if (!terminal) { close(in[0]); close(out[1]); close(err[1]); }
                while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
                if (WIFSIGNALED(st)) { signal(WTERMSIG(st), SIG_DFL); kill(getpid(), WTERMSIG(st)); }
                _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 255);
            }
            prctl(PR_SET_PDEATHSIG, SIGKILL);
        }
        setsid();
        if (terminal) close(tsock[0]);
        else { dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2); }
        char *path = setup_child(m, is_exec, args, &env, terminal ? tsock[1] : -1);
        if (!is_exec) {
            /* tell the agent we are ready, then wait for START (EOF: abandoned before start) */
            char c = 0;
            (void)!write(rdy[1], "r", 1);
            close(rdy[1]);
            if (read(go[0], &c, 1) != 1 || c != 's') _exit(137);
        }
        execve(path, args, env);
        fail("exec: \"%s\": %s", args[0], strerror(errno));
    }
    close(rdy[1]); close(go[0]); close(errp[1]);
    if (root_fd >= 0) close(root_fd);
    p->pid = pid;
    if (terminal) close(tsock[1]);
    else {
        close(in[0]); close(out[1]); close(err[1]);
        p->in_fd = in[1]; p->out_fd = out[0]; p->err_fd = err[0];
        set_nonblock(p->out_fd); set_nonblock(p->err_fd);
    }
    char buf[1024];
    if (!is_exec) {
        char c;
        ssize_t r;
        do r = read(rdy[0], &c, 1); while (r < 0 && errno == EINTR);
        close(rdy[0]);
        if (r != 1) {
            ssize_t n = read(errp[0], buf, sizeof buf - 1);
            buf[n > 0 ? n : 0] = 0;
            close(errp[0]); close(go[1]);
            if (terminal) close(tsock[0]);
            /* the child has exited: its EXIT frame follows this ERROR once it is reaped */
            send_error(id, "%s", n > 0 ? buf : "the container process failed before start");
            return;
        }
        p->go_fd = go[1];
        p->fail_fd = errp[0];
        if (terminal) {
            p->pty = recv_console(tsock[0]);
            close(tsock[0]);
            if (p->pty < 0) { send_error(id, "the container's pty did not arrive"); kill(pid, SIGKILL); return; }
            set_nonblock(p->pty);
        }
        init_pid = pid;
        begin(M_READY); f_int(K_ID, id); f_int(K_PID, pid); send_frame();
    } else {
        close(rdy[0]); close(go[1]);
        ssize_t n = read(errp[0], buf, sizeof buf - 1);
        close(errp[0]);
        if (terminal) {
            p->pty = recv_console(tsock[0]);
            close(tsock[0]);
            if (p->pty >= 0) set_nonblock(p->pty);
        }
        if (n > 0) { buf[n] = 0; send_error(id, "%s", buf); return; }
        p->started = 1;
        begin(M_STARTED); f_int(K_ID, id); f_int(K_PID, pid); send_frame();
    }
}

static void start(struct msg *m)
{
    uint32_t id = iget(m, K_ID, 0);
    struct proc *p = proc_by_id(id);
    if (!p || p->go_fd < 0 || p->started) { send_error(id, "process %u is not waiting for start", id); return; }
    (void)!write(p->go_fd, "s", 1);
    close(p->go_fd); p->go_fd = -1;
    char buf[1024]; ssize_t n = read(p->fail_fd, buf, sizeof buf - 1);
    close(p->fail_fd); p->fail_fd = -1;
    if (n > 0) { buf[n] = 0; send_error(id, "%s", buf); return; }
    p->started = 1;
    begin(M_STARTED); f_int(K_ID, id); f_int(K_PID, p->pid); send_frame();
}

static void signal_all_in_ns(pid_t ref, int sig)
{
    char path[64], want[64], got[64];
    snprintf(path, sizeof path, "/proc/%d/ns/pid", ref);
    ssize_t n = readlink(path, want, sizeof want - 1);
    if (n <= 0) return;
    want[n] = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        pid_t pid = atoi(e->d_name);
        if (pid <= 1) continue;
        snprintf(path, sizeof path, "/proc/%d/ns/pid", pid);
        n = readlink(path, got, sizeof got - 1);
        if (n <= 0) continue;
        got[n] = 0;
        if (!strcmp(got, want)) kill(pid, sig);
    }
    if (d) closedir(d);
}

/* PS: every process in the container's pid namespace, as (pid there, command line). */
static void send_ps(uint32_t id)
{
    char path[64], want[64], got[64];
    if (init_pid <= 0) { send_error(id, "the container is not running"); return; }
    snprintf(path, sizeof path, "/proc/%d/ns/pid", init_pid);
    ssize_t n = readlink(path, want, sizeof want - 1);
    if (n <= 0) { send_error(id, "the container is not running"); return; }
    want[n] = 0;
    int64_t pids[1024]; static char cmds[1024][256]; uint32_t count = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d)) && count < 1024) {
        pid_t pid = atoi(e->d_name);
        if (pid <= 1) continue;
        snprintf(path, sizeof path, "/proc/%d/ns/pid", pid);
        n = readlink(path, got, sizeof got - 1);
        if (n <= 0) continue;
        got[n] = 0;
        if (strcmp(got, want)) continue;
        /* its pid as the container sees it: the last NSpid field */
        char status[4096]; int64_t nspid = pid;
        snprintf(path, sizeof path, "/proc/%d/status", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t r = read(fd, status, sizeof status - 1);
            close(fd);
            status[r > 0 ? r : 0] = 0;
            char *l = strstr(status, "\nNSpid:");
            if (l) { l += 8; char *end = strchr(l, '\n'); if (end) *end = 0; char *last = strrchr(l, '\t'); nspid = atoll(last ? last + 1 : l); }
        }
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t r = fd >= 0 ? read(fd, cmds[count], sizeof cmds[count] - 1) : 0;
        if (fd >= 0) close(fd);
        if (r < 0) r = 0;
        for (ssize_t i = 0; i < r; i++) if (!cmds[count][i]) cmds[count][i] = ' ';
        while (r > 0 && cmds[count][r - 1] == ' ') r--;
        cmds[count][r] = 0;
        pids[count++] = nspid;
    }
    if (d) closedir(d);
    begin(M_DONE); f_int(K_ID, id);
    unsigned char h[2] = { K_PS_PID, T_INTS }; put(h, 2); put32(count);
    for (uint32_t i = 0; i < count; i++) { put32((uint64_t)pids[i] >> 32); put32((uint32_t)pids[i]); }
    unsigned char h2[2] = { K_PS_ARGS, T_LIST }; put(h2, 2); put32(count);
    for (uint32_t i = 0; i < count; i++) { put32(strlen(cmds[i])); put(cmds[i], strlen(cmds[i])); }
    send_frame();
}

static void drain(struct proc *p, int fd, int stream)
{
    static char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        begin(M_OUTPUT); f_int(K_ID, p->id); f_int(K_STREAM, stream); f_bytes(K_DATA, buf, n); send_frame();
        if (n < (ssize_t)sizeof buf) return;
    }
}

static void reaped(struct proc *p, int status)
{
    if (p->pty >= 0) { drain(p, p->pty, 1); close(p->pty); p->pty = -1; }
    if (p->out_fd >= 0) { drain(p, p->out_fd, 1); close(p->out_fd); p->out_fd = -1; }
    if (p->err_fd >= 0) { drain(p, p->err_fd, 2); close(p->err_fd); p->err_fd = -1; }
    if (p->in_fd >= 0) { close(p->in_fd); p->in_fd = -1; }
    if (p->go_fd >= 0) { close(p->go_fd); p->go_fd = -1; }
    if (p->fail_fd >= 0) { close(p->fail_fd); p->fail_fd = -1; }
    /* No sync() here: without a writeback cache every write() through virtiofs has reached the
     * host before it returns, and a guest syncfs would make virtiofsd syncfs the host's whole
     * filesystem (tens of milliseconds on a busy host) at every exit. */
    begin(M_EXIT); f_int(K_ID, p->id); f_int(K_STATUS, status); send_frame();
    if (p->pid == init_pid) init_pid = -1;
    p->used = 0;
}

static void handle(struct msg *m)
{
    uint32_t id = iget(m, K_ID, 0);
    struct proc *p;
    switch (m->type) {
    case M_CREATE: spawn(m, 0); break;
    case M_EXEC: spawn(m, 1); break;
    case M_START: start(m); break;
    case M_STDIN:
        if ((p = proc_by_id(id))) {
            int fd = p->pty >= 0 ? p->pty : p->in_fd;
            const unsigned char *d = m->f[K_DATA].p; size_t n = m->f[K_DATA].len, off = 0;
            while (fd >= 0 && off < n) {
                ssize_t w = write(fd, d + off, n - off);
                if (w < 0 && errno == EINTR) continue;
                if (w < 0 && errno == EAGAIN) { struct pollfd q = { fd, POLLOUT, 0 }; poll(&q, 1, 100); continue; }
                if (w <= 0) break;
                off += w;
            }
        }
        break;
    case M_CLOSE_STDIN:
        if ((p = proc_by_id(id))) {
            if (p->in_fd >= 0) { close(p->in_fd); p->in_fd = -1; }
            else if (p->pty >= 0) { char eot = 4; (void)!write(p->pty, &eot, 1); }
        }
        break;
    case M_SIGNAL:
        if ((p = proc_by_id(id))) {
            int sig = iget(m, K_SIGNAL, SIGTERM);
            if (!p->started && sig == SIGKILL && p->go_fd >= 0) { close(p->go_fd); p->go_fd = -1; }
            if (iget(m, K_ALL, 0)) signal_all_in_ns(p->pid, sig);
            kill(p->pid, sig);
        }
        break;
    case M_RESIZE:
        if ((p = proc_by_id(id)) && p->pty >= 0) {
            struct winsize ws = { iget(m, K_ROWS, 24), iget(m, K_COLS, 80), 0, 0 };
            ioctl(p->pty, TIOCSWINSZ, &ws);
        }
        break;
    case M_PS:
        send_ps(id);
        break;
    case M_UPDATE:
        if (write_cgroup(m, id) == 0) { begin(M_DONE); f_int(K_ID, id); send_frame(); }
        break;
    case M_SHUTDOWN:
        sync();
        reboot(RB_POWER_OFF);
        break;
    default:
        send_error(id, "unknown message type %d", m->type);
    }
}

int main(void)
{
    boot();
    sigset_t mask; sigemptyset(&mask); sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    struct utsname u; uname(&u);
    begin(M_HELLO); f_int(K_VERSION, PROTOCOL_VERSION); f_bytes(K_KERNEL, u.release, strlen(u.release)); send_frame();

    unsigned char *in = malloc(65536); size_t in_len = 0, in_cap = 65536;
    for (;;) {
        struct pollfd pf[2 + MAX_PROCS * 2]; struct proc *who[2 + MAX_PROCS * 2]; int stream[2 + MAX_PROCS * 2];
        int n = 0;
        pf[n].fd = ctl; pf[n].events = POLLIN; who[n] = NULL; n++;
        pf[n].fd = sfd; pf[n].events = POLLIN; who[n] = NULL; n++;
        for (int i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &procs[i];
            if (!p->used) continue;
            int fds[3] = { p->pty, p->out_fd, p->err_fd }, st[3] = { 1, 1, 2 };
            for (int k = 0; k < 3; k++) if (fds[k] >= 0) { pf[n].fd = fds[k]; pf[n].events = POLLIN; who[n] = p; stream[n] = st[k]; n++; }
        }
        if (poll(pf, n, -1) < 0) { if (errno == EINTR) continue; logmsg("keel-agent: poll: %s", strerror(errno)); break; }
        for (int i = 2; i < n; i++) {
            if (!pf[i].revents) continue;
            struct proc *p = who[i];
            static char buf[65536];
            ssize_t r = read(pf[i].fd, buf, sizeof buf);
            if (r > 0) { begin(M_OUTPUT); f_int(K_ID, p->id); f_int(K_STREAM, stream[i]); f_bytes(K_DATA, buf, r); send_frame(); }
            else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                /* EOF (or EIO on a pty whose last holder closed it): stop polling that fd */
                if (pf[i].fd == p->out_fd) { close(p->out_fd); p->out_fd = -1; }
                else if (pf[i].fd == p->err_fd) { close(p->err_fd); p->err_fd = -1; }
                else if (pf[i].fd == p->pty) { close(p->pty); p->pty = -1; }
            }
        }
        if (pf[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
            int status; pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
                for (int i = 0; i < MAX_PROCS; i++)
                    if (procs[i].used && procs[i].pid == pid) { reaped(&procs[i], status); break; }
        }
        if (pf[0].revents & POLLIN) {
            if (in_cap - in_len < 65536) { in_cap *= 2; in = realloc(in, in_cap); if (!in) _exit(120); }
            ssize_t r = read(ctl, in + in_len, in_cap - in_len);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { usleep(10000); continue; } /* host side not connected: wait for it */
            in_len += r;
            while (in_len >= 4) {
                uint32_t len = get32(in);
                if (len > MAX_FRAME) { logmsg("keel-agent: frame of %u bytes refused", len); sync(); reboot(RB_POWER_OFF); }
                if (in_len < 4 + len) {
                    if (in_cap < 4 + len) { in_cap = 4 + len; in = realloc(in, in_cap); if (!in) _exit(120); }
                    break;
                }
                struct msg m;
                if (parse(in + 4, len, &m) < 0) send_error(0, "malformed frame");
                else handle(&m);
                memmove(in, in + 4 + len, in_len - 4 - len);
                in_len -= 4 + len;
            }
        } else if (pf[0].revents & (POLLHUP | POLLERR)) {
            usleep(10000); /* host disconnected; the port stays, wait for a new connection */
        }
    }
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
