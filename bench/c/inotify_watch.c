/*
 * inotify_watch: the raw-inotify baseline of the reload benchmark.
 *
 *   inotify_watch DIR NAME
 *
 * Watches DIR (not recursive) with the same event mask as the `notify`
 * crate's inotify backend, prints "ready" once the watch is in place, then
 * blocks in read(2). For every batch of events that contains IN_MOVED_TO of
 * NAME (a file renamed into place), it prints the CLOCK_MONOTONIC time at
 * which read(2) returned, in ns, one line per rename, unbuffered. The writer
 * (bench/suites/reload.py) takes t0 just before rename(2); the difference is
 * what the kernel and one wake-up of a blocked reader cost: the floor of any
 * config watcher.
 *
 * It dies with its parent (PR_SET_PDEATHSIG), and exits when its stdout
 * is gone; the bench also kills it when done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void say(const char *line) {
    size_t n = strlen(line);
    if (write(1, line, n) != (ssize_t)n)
        exit(1); /* the bench went away */
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: inotify_watch DIR NAME\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0) {
        perror("inotify_init1");
        return 1;
    }
    /* The mask of notify 8's inotify backend (src/inotify.rs, add_watch). */
    uint32_t mask = IN_ATTRIB | IN_CREATE | IN_OPEN | IN_DELETE | IN_CLOSE_WRITE | IN_MODIFY |
                    IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF;
    if (inotify_add_watch(fd, argv[1], mask) < 0) {
        perror("inotify_add_watch");
        return 1;
    }
    say("ready\n");
    char buf[64 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
        __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        long long t = now_ns();
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("read");
            return 1;
        }
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if ((ev->mask & IN_MOVED_TO) && ev->len > 0 && strcmp(ev->name, argv[2]) == 0) {
                char line[32];
                snprintf(line, sizeof line, "%lld\n", t);
                say(line);
            }
            if (ev->mask & IN_Q_OVERFLOW)
                say("overflow\n");
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
}
