/*
 * stamp: the tiny child program of drover's benchmarks.
 *
 * On start it appends one line "<pid> <CLOCK_MONOTONIC ns>\n" to
 * $STAMP_DIR/stamps with a single write(2) on an O_APPEND descriptor (atomic
 * for a line this short, so many children may share the file), then waits
 * in pause() until a signal kills it. The timestamp is the moment the
 * program "reached running": after exec, the dynamic loader and libc start-up.
 *
 * Safety net for the benchmark's cleanup: PR_SET_PDEATHSIG makes it die
 * with SIGKILL when the process that started it (drover, supervisord, the
 * probe) goes away, so a crashed benchmark leaves nothing behind. That is one
 * extra system call after the timestamp is taken.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    pid_t pid = getpid();

    const char *dir = getenv("STAMP_DIR");
    if (dir == NULL || *dir == '\0') {
        fprintf(stderr, "stamp: STAMP_DIR is not set\n");
        return 2;
    }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/stamps", dir) >= (int)sizeof path) {
        fprintf(stderr, "stamp: STAMP_DIR is too long\n");
        return 2;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror("stamp: open");
        return 2;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%d %lld\n", (int)pid, ns);
    if (write(fd, line, (size_t)n) != n) {
        perror("stamp: write");
        return 2;
    }
    close(fd);

    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* the parent died before prctl took effect */
        return 0;
    for (;;)
        pause();
}
