/*
 * probe: the C side of drover's benchmarks (see bench/README.md).
 *
 *   probe spawn   N STAMP DIR   bare posix_spawn of STAMP, N times
 *   probe fork    N STAMP DIR   bare fork + execve of STAMP, N times
 *   probe respawn N STAMP DIR [GAP_MS]
 *                               the floor of a restart: SIGKILL the running
 *                               STAMP, waitpid, posix_spawn a new one, N times;
 *                               with GAP_MS, each kill comes GAP_MS after the
 *                               last start, as `probe kill` spaces its kills
 *                               of a supervisor's child (a child killed after
 *                               sitting idle exits slower than one killed at
 *                               once: cold caches, a halted vCPU to wake)
 *   probe refork  N STAMP DIR [GAP_MS]
 *                               the same floor with fork + execve instead of
 *                               posix_spawn
 *   probe burst   N STAMP DIR   bare posix_spawn of STAMP, N times back to
 *                               back without waiting for any to run, as a
 *                               supervisor starts its children; prints one
 *                               line: t0 (before the first spawn) to the
 *                               latest of the N stamps, in ns
 *   probe kill    N DIR TIMEOUT_MS GAP_MS
 *                               drive an external supervisor: SIGKILL the
 *                               newest STAMP child found in DIR/stamps and wait
 *                               for its replacement's stamp, N times
 *
 * With PROBE_EXTRA_FDS=K in the environment, the probe first opens K more
 * file descriptors (close-on-exec pipe ends), as a supervisor holding the
 * log pipes of K/2 children does: every spawn copies the fd table and the
 * child closes them again, so this shows what that costs by itself.
 *
 * With PROBE_BALLAST_MIB=M in the environment, the probe first maps M MiB
 * of anonymous memory, advises MADV_NOHUGEPAGE on it and memsets every byte,
 * so that it holds M MiB of touched, 4 KiB-paged memory, as a large
 * supervisor does: fork() then has M*256 page-table entries to copy, and
 * the child's exec as many to tear down. (Transparent huge pages would
 * make that 512 times fewer entries, and the fork nearly free; with
 * PROBE_BALLAST_THP=1 the probe advises MADV_HUGEPAGE instead, to show
 * that.) Whenever PROBE_BALLAST_MIB is set (0 included), the probe reports
 * its own memory once, before the first start, on stderr as one line:
 *   probe-memory: mib=M advice=nohugepage Rss=… Anonymous=… AnonHugePages=…
 * (kB, from /proc/self/smaps_rollup).
 *
 * STAMP is the stamp program, DIR the directory whose "stamps" file it
 * appends "<pid> <CLOCK_MONOTONIC ns>" to. Each mode prints one latency in
 * nanoseconds per line on stdout: from t0 (CLOCK_MONOTONIC read just before
 * posix_spawn / fork / kill) to the timestamp the new child wrote.
 *
 * The probe waits for stamps with inotify (no polling), never longer than a
 * timeout, and exits non-zero with a message on stderr when something does
 * not happen. Children it started itself are SIGKILLed and reaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "probe: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *msg) {
    fprintf(stderr, "probe: %s\n", msg);
    exit(1);
}

/* ---- reading DIR/stamps as it grows ---- */

static int stamps_fd = -1;
static int inotify_fd = -1;
static char pending[8192];
static size_t pending_len = 0;

static void stamps_open(const char *dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/stamps", dir);
    /* Create it if nobody did, so that the watch can be set up first. */
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        die(path);
    inotify_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (inotify_fd < 0)
        die("inotify_init1");
    if (inotify_add_watch(inotify_fd, path, IN_MODIFY) < 0)
        die("inotify_add_watch");
    stamps_fd = fd;
}

/* Next complete line as (pid, ns); 0 when none is available right now. */
static int stamps_next(int *pid, long long *ns) {
    for (;;) {
        char *nl = memchr(pending, '\n', pending_len);
        if (nl != NULL) {
            *nl = '\0';
            if (sscanf(pending, "%d %lld", pid, ns) != 2)
                fail("malformed line in stamps");
            size_t used = (size_t)(nl - pending) + 1;
            memmove(pending, pending + used, pending_len - used);
            pending_len -= used;
            return 1;
        }
        if (pending_len == sizeof pending)
            fail("line too long in stamps");
        ssize_t n = read(stamps_fd, pending + pending_len, sizeof pending - pending_len);
        if (n < 0)
            die("read stamps");
        if (n == 0)
            return 0;
        pending_len += (size_t)n;
    }
}

/*
 * Waits for a stamp line satisfying want(pid, arg); returns its timestamp
 * and stores its pid. Lines that do not match are skipped. Fails after
 * timeout_ms.
 */
static long long stamps_wait(int (*want)(int, int), int arg, int *pid_out, int timeout_ms) {
    long long deadline = now_ns() + (long long)timeout_ms * 1000000LL;
    for (;;) {
        int pid;
        long long ns;
        while (stamps_next(&pid, &ns)) {
            if (want(pid, arg)) {
                *pid_out = pid;
                return ns;
            }
        }
        long long left = deadline - now_ns();
        if (left <= 0) {
            fprintf(stderr, "probe: no stamp after %d ms\n", timeout_ms);
            exit(1);
        }
        struct pollfd p = {.fd = inotify_fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(left / 1000000LL) + 1);
        if (r < 0 && errno != EINTR)
            die("poll");
        char buf[4096];
        while (read(inotify_fd, buf, sizeof buf) > 0) {
        }
    }
}

static int is_pid(int pid, int arg) { return pid == arg; }
static int is_not_pid(int pid, int arg) { return pid != arg; }

/* ---- starting the stamp program ---- */

static char *stamp_argv[2];

static void setup_child(const char *stamp, const char *dir) {
    if (setenv("STAMP_DIR", dir, 1) != 0)
        die("setenv");
    stamp_argv[0] = (char *)stamp;
    stamp_argv[1] = NULL;
}

static pid_t start_spawn(void) {
    pid_t pid;
    int rc = posix_spawn(&pid, stamp_argv[0], NULL, NULL, stamp_argv, environ);
    if (rc != 0) {
        errno = rc;
        die("posix_spawn");
    }
    return pid;
}

static pid_t start_fork(void) {
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        execve(stamp_argv[0], stamp_argv, environ);
        _exit(127);
    }
    return pid;
}

static void kill_and_reap(pid_t pid) {
    if (kill(pid, SIGKILL) != 0)
        die("kill");
    if (waitpid(pid, NULL, 0) != pid)
        die("waitpid");
}

static const int TIMEOUT_MS = 5000;

/* ---- PROBE_BALLAST_MIB: a parent holding touched memory ---- */

static void ballast_setup(void) {
    const char *mib_text = getenv("PROBE_BALLAST_MIB");
    if (mib_text == NULL)
        return;
    long mib = atol(mib_text);
    const char *thp_text = getenv("PROBE_BALLAST_THP");
    int thp = thp_text != NULL && strcmp(thp_text, "1") == 0;
    unsetenv("PROBE_BALLAST_MIB");
    unsetenv("PROBE_BALLAST_THP");
    const char *advice = "none";
    if (mib > 0) {
        size_t len = (size_t)mib << 20;
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap (PROBE_BALLAST_MIB)");
        /* Before the first touch: the advice decides how the faults map it. */
        if (madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0)
            die("madvise (PROBE_BALLAST_MIB)");
        advice = thp ? "hugepage" : "nohugepage";
        memset(p, 1, len);
        /* The compiler must assume the memory is used: keep the stores. */
        __asm__ volatile("" : : "r"(p) : "memory");
    }
    long rss = -1, anon = -1, huge = -1;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (f != NULL) {
        char line[256];
        while (fgets(line, sizeof line, f) != NULL) {
            sscanf(line, "Rss: %ld kB", &rss);
            sscanf(line, "Anonymous: %ld kB", &anon);
            sscanf(line, "AnonHugePages: %ld kB", &huge);
        }
        fclose(f);
    }
    fprintf(stderr, "probe-memory: mib=%ld advice=%s Rss=%ld Anonymous=%ld AnonHugePages=%ld\n",
            mib, advice, rss, anon, huge);
}

/* `probe burst`: n spawns back to back, then the stamps of all of them. */
static void burst(int n) {
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    char *seen = calloc((size_t)n, 1);
    if (pids == NULL || seen == NULL)
        die("calloc");
    long long t0 = now_ns();
    for (int i = 0; i < n; i++)
        pids[i] = start_spawn();
    long long last = 0;
    long long deadline = now_ns() + (long long)TIMEOUT_MS * 1000000LL * 4;
    for (int left = n; left > 0;) {
        int pid;
        long long ns;
        while (left > 0 && stamps_next(&pid, &ns)) {
            for (int i = 0; i < n; i++) {
                if (pids[i] == pid && !seen[i]) {
                    seen[i] = 1;
                    left--;
                    if (ns > last)
                        last = ns;
                    break;
                }
            }
        }
        if (left == 0)
            break;
        long long wait = deadline - now_ns();
        if (wait <= 0) {
            fprintf(stderr, "probe: %d of %d stamps missing after the burst\n", left, n);
            exit(1);
        }
        struct pollfd p = {.fd = inotify_fd, .events = POLLIN};
        if (poll(&p, 1, (int)(wait / 1000000LL) + 1) < 0 && errno != EINTR)
            die("poll");
        char buf[4096];
        while (read(inotify_fd, buf, sizeof buf) > 0) {
        }
    }
    printf("%lld\n", last - t0);
    for (int i = 0; i < n; i++)
        kill(pids[i], SIGKILL);
    for (int i = 0; i < n; i++)
        waitpid(pids[i], NULL, 0);
    free(pids);
    free(seen);
}

static int usage(void) {
    fprintf(stderr,
            "usage: probe spawn|fork|burst N STAMP DIR\n"
            "       probe respawn|refork N STAMP DIR [GAP_MS]\n"
            "       probe kill N DIR TIMEOUT_MS GAP_MS\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return usage();
    const char *mode = argv[1];
    int n = atoi(argv[2]);
    if (n <= 0)
        return usage();
    setvbuf(stdout, NULL, _IOLBF, 0);

    const char *extra = getenv("PROBE_EXTRA_FDS");
    if (extra != NULL) {
        int k = atoi(extra);
        for (int i = 0; i + 1 < k; i += 2) {
            int p[2];
            if (pipe2(p, O_CLOEXEC) != 0)
                die("pipe2 (PROBE_EXTRA_FDS)");
        }
        unsetenv("PROBE_EXTRA_FDS");
    }
    ballast_setup();

    if (strcmp(mode, "spawn") == 0 || strcmp(mode, "fork") == 0) {
        if (argc != 5)
            return usage();
        setup_child(argv[3], argv[4]);
        stamps_open(argv[4]);
        int use_fork = strcmp(mode, "fork") == 0;
        for (int i = 0; i < n; i++) {
            long long t0 = now_ns();
            pid_t pid = use_fork ? start_fork() : start_spawn();
            int got;
            long long ns = stamps_wait(is_pid, pid, &got, TIMEOUT_MS);
            printf("%lld\n", ns - t0);
            kill_and_reap(pid);
        }
        return 0;
    }

    if (strcmp(mode, "burst") == 0) {
        if (argc != 5)
            return usage();
        setup_child(argv[3], argv[4]);
        stamps_open(argv[4]);
        burst(n);
        return 0;
    }

    if (strcmp(mode, "respawn") == 0 || strcmp(mode, "refork") == 0) {
        if (argc != 5 && argc != 6)
            return usage();
        int gap_ms = argc == 6 ? atoi(argv[5]) : 0;
        setup_child(argv[3], argv[4]);
        stamps_open(argv[4]);
        pid_t (*start)(void) = strcmp(mode, "refork") == 0 ? start_fork : start_spawn;
        pid_t cur = start();
        int got;
        stamps_wait(is_pid, cur, &got, TIMEOUT_MS);
        for (int i = 0; i < n; i++) {
            struct timespec gap = {gap_ms / 1000, (long)(gap_ms % 1000) * 1000000L};
            if (gap_ms > 0)
                nanosleep(&gap, NULL);
            long long t0 = now_ns();
            kill_and_reap(cur);
            cur = start();
            long long ns = stamps_wait(is_pid, cur, &got, TIMEOUT_MS);
            printf("%lld\n", ns - t0);
        }
        kill_and_reap(cur);
        return 0;
    }

    if (strcmp(mode, "kill") == 0) {
        if (argc != 6)
            return usage();
        int timeout_ms = atoi(argv[4]);
        int gap_ms = atoi(argv[5]);
        stamps_open(argv[3]);
        /* The current child is the one that stamped last. */
        int cur = 0, pid;
        long long ns;
        stamps_wait(is_not_pid, 0, &cur, timeout_ms);
        while (stamps_next(&pid, &ns))
            cur = pid;
        for (int i = 0; i < n; i++) {
            struct timespec gap = {gap_ms / 1000, (long)(gap_ms % 1000) * 1000000L};
            nanosleep(&gap, NULL);
            /* A late stamp from the last round would be mistaken for a reply. */
            while (stamps_next(&pid, &ns))
                cur = pid;
            long long t0 = now_ns();
            if (kill(cur, SIGKILL) != 0)
                die("kill");
            int next;
            ns = stamps_wait(is_not_pid, cur, &next, timeout_ms);
            printf("%lld\n", ns - t0);
            cur = next;
        }
        return 0;
    }
    return usage();
}
