/* qb: producer, consumer and bare baselines for drover's queue benchmark.
 *
 * Every message is SIZE bytes (SIZE >= 16): [u64 send time, CLOCK_MONOTONIC
 * ns][u64 sequence number][filler]. One packet = one message, as in drover's
 * queues. All sockets here are blocking and use plain send/recv,
 * one message per syscall, for drover's children and the bare pair alike.
 *
 *   qb produce N SIZE RATE READY
 *       fd from $DROVER_OUT_BENCH. Writes its pid to READY.$DROVER_INDEX
 *       (atomically), waits for SIGUSR1 (the orchestrator's go), then sends N
 *       messages: as fast as it can (RATE 0) or paced at RATE messages/s on
 *       an absolute schedule. READY "-": no gate, start at once.
 *   qb consume N SIZE MODE ACK READY RESULT
 *       fd from $DROVER_IN_BENCH. Writes its pid to READY, then receives N
 *       messages, sending the 3-byte packet "ack" after each one when ACK is 1.
 *       MODE tput: elapsed = receipt of the Nth message - send time stamped
 *       in the first one. MODE lat: latency = receipt - stamped send time of
 *       every message. Writes one JSON object to RESULT (tmp + rename), then
 *       waits for the end of the stream (drover's shutdown) before exiting.
 *   qb pair N SIZE MODE RATE RESULT
 *       The bare baseline: a SOCK_SEQPACKET socketpair between two processes
 *       (fork); the child consumes exactly as `consume` does, the parent
 *       produces exactly as `produce` does, once the child is ready.
 *   qb relay N SIZE MODE RATE RESULT
 *       The relay floor: `pair`, but with a third process between producer
 *       and consumer, on two SEQPACKET pairs, that does nothing but move
 *       packets: up to 64 per recvmmsg in, the same batch out in sendmmsg
 *       (blocking; the first packet waited for, the rest taken if there).
 *       What any process that reads and writes every message costs, with
 *       no bookkeeping at all: the floor of a broker like drover's.
 *   Both also write RESULT.cpu: {producer_cpu_s, consumer_cpu_s,
 *   middle_cpu_s}, the CPU time (user + system) of each process (the
 *   middle's is 0 for the pair), so the bench can say what moving a message
 *   costs in CPU on each side, and what the machine's CPUs allow at most.
 *   qb pingpong N SIZE RESULT
 *       Round trip over a bare SEQPACKET pair: the parent sends one message,
 *       the child sends it back; N round trips, each timed.
 *   qb produce-confirm N SIZE WINDOW READY RESULT
 *       A producer of a `confirm = true` queue (fd from $DROVER_OUT_BENCH):
 *       like `produce` (flat out, after the SIGUSR1 gate; READY "-": none),
 *       but pipelined against drover's replies: it keeps at most WINDOW
 *       messages unconfirmed, and whenever the window is full it blocks for
 *       one reply and then takes every other reply already there before it
 *       sends again. Writes one JSON object to RESULT once every message was
 *       answered: ok / refused counts, and elapsed = last reply - first send.
 *   qb first SIZE READY RESULT
 *       A consumer that times its first message (fd from $DROVER_IN_BENCH):
 *       reads CLOCK_MONOTONIC first thing in main() (as stamp.c does),
 *       writes its pid to READY, receives one message, reads the clock
 *       again and writes {started_ns, first_ns, seq, size} to RESULT. It
 *       never acks: it keeps reading (and holding) what drover sends until
 *       the stream ends, so an at-least-once queue keeps its messages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "qb: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int env_fd(const char *name)
{
    const char *v = getenv(name);
    if (!v) {
        fprintf(stderr, "qb: $%s is not set\n", name);
        exit(2);
    }
    return atoi(v);
}

/* Writes `text` to `path` atomically (tmp file + rename). */
static void write_file(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        die(tmp);
    fputs(text, f);
    if (fclose(f) != 0)
        die(tmp);
    if (rename(tmp, path) != 0)
        die(path);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted values. */
static uint64_t pct(const uint64_t *v, size_t n, double q)
{
    size_t rank = (size_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

static void latency_json(char *out, size_t cap, uint64_t *lat, size_t n)
{
    qsort(lat, n, sizeof *lat, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)lat[i];
    snprintf(out, cap,
             "\"samples\": %zu, \"p50_ns\": %" PRIu64 ", \"p90_ns\": %" PRIu64
             ", \"p99_ns\": %" PRIu64 ", \"p999_ns\": %" PRIu64 ", \"min_ns\": %" PRIu64
             ", \"max_ns\": %" PRIu64 ", \"mean_ns\": %.0f",
             n, pct(lat, n, 0.50), pct(lat, n, 0.90), pct(lat, n, 0.99), pct(lat, n, 0.999),
             lat[0], lat[n - 1], sum / (double)n);
}

/* ------------------------------------------------------------ producer */

static void produce(int fd, long n, size_t size, double rate)
{
    char *buf = calloc(1, size);
    if (!buf)
        die("calloc");
    memset(buf + 16, 'x', size - 16);
    uint64_t interval = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
    uint64_t next = now_ns();
    for (long i = 0; i < n; i++) {
        if (interval) {
            next += interval;
            struct timespec ts = {(time_t)(next / 1000000000ull), (long)(next % 1000000000ull)};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
        }
        uint64_t t = now_ns(), seq = (uint64_t)i;
        memcpy(buf, &t, 8);
        memcpy(buf + 8, &seq, 8);
        for (;;) {
            ssize_t r = send(fd, buf, size, MSG_NOSIGNAL);
            if (r == (ssize_t)size)
                break;
            if (r < 0 && errno == EINTR)
                continue;
            die("send");
        }
    }
    free(buf);
}

/* Stays until drover closes the queue socket `fd` (its shutdown). */
static void wait_closed(int fd)
{
    for (;;) {
        char c[16];
        ssize_t r = recv(fd, c, sizeof c, 0);
        if (r == 0 || (r < 0 && errno != EINTR))
            return;
    }
}

/* Waits for SIGUSR1 after announcing our pid in `ready`. */
static void gate(const char *ready)
{
    if (strcmp(ready, "-") == 0)
        return;
    /* Several producers of one group: one ready file each. */
    char path[4096];
    const char *index = getenv("DROVER_INDEX");
    snprintf(path, sizeof path, "%s%s%s", ready, index ? "." : "", index ? index : "");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    char text[64];
    snprintf(text, sizeof text, "%d\n", (int)getpid());
    write_file(path, text);
    int sig;
    while (sigwait(&set, &sig) != 0)
        ;
}

/* ------------------------------------------------------------ consumer */

/* Receives n messages; returns a JSON object (malloc'ed). */
static char *consume(int fd, long n, size_t size, int lat_mode, int ack)
{
    size_t cap = size > 65536 ? size + 1 : 65537;
    char *buf = malloc(cap);
    uint64_t *lat = lat_mode ? malloc(sizeof(uint64_t) * (size_t)n) : NULL;
    if (!buf || (lat_mode && !lat))
        die("malloc");
    uint64_t first_sent = 0, first_recv = 0, last_recv = 0;
    long got = 0, bad_size = 0, out_of_order = 0;
    uint64_t expect = 0;
    const char *error = NULL;
    while (got < n) {
        ssize_t r = recv(fd, buf, cap, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            error = "recv failed";
            break;
        }
        if (r == 0) {
            error = "end of stream before N messages";
            break;
        }
        uint64_t t = now_ns(), sent, seq;
        memcpy(&sent, buf, 8);
        memcpy(&seq, buf + 8, 8);
        if ((size_t)r != size)
            bad_size++;
        if (seq != expect)
            out_of_order++;
        expect = seq + 1;
        if (got == 0) {
            first_sent = sent;
            first_recv = t;
        }
        if (lat_mode)
            lat[got] = t - sent;
        last_recv = t;
        got++;
        if (ack) {
            while (send(fd, "ack", 3, MSG_NOSIGNAL) < 0) {
                if (errno != EINTR) {
                    error = "send of ack failed";
                    break;
                }
            }
            if (error)
                break;
        }
    }
    char *out = malloc(4096);
    if (!out)
        die("malloc");
    char extra[1024] = "";
    if (lat_mode && got > 0)
        latency_json(extra, sizeof extra, lat, (size_t)got);
    else if (got > 1)
        snprintf(extra, sizeof extra,
                 "\"elapsed_ns\": %" PRIu64 ", \"from_first_recv_ns\": %" PRIu64
                 ", \"msgs_per_s\": %.1f, \"steady_msgs_per_s\": %.1f",
                 last_recv - first_sent, last_recv - first_recv,
                 (double)got * 1e9 / (double)(last_recv - first_sent),
                 (double)(got - 1) * 1e9 / (double)(last_recv - first_recv));
    snprintf(out, 4096,
             "{\"received\": %ld, \"size\": %zu, \"bad_size\": %ld, \"out_of_order\": %ld, "
             "\"error\": %s%s%s%s%s}\n",
             got, size, bad_size, out_of_order, error ? "\"" : "", error ? error : "null",
             error ? "\"" : "", extra[0] ? ", " : "", extra);
    free(buf);
    free(lat);
    return out;
}

/* ------------------------------------------------------------ confirms */

/* Sends n messages keeping at most `window` of them unconfirmed; returns a
 * JSON object (malloc'ed). Replies come one per packet, in order. */
static char *produce_confirm(int fd, long n, size_t size, long window)
{
    char *buf = calloc(1, size);
    if (!buf)
        die("calloc");
    memset(buf + 16, 'x', size - 16);
    long sent = 0, ok = 0, refused = 0;
    uint64_t first_sent = 0, last_reply = 0;
    char first_refusal[128] = "";
    const char *error = NULL;
    while (ok + refused < n && !error) {
        while (sent < n && sent - (ok + refused) < window) {
            uint64_t t = now_ns(), seq = (uint64_t)sent;
            if (sent == 0)
                first_sent = t;
            memcpy(buf, &t, 8);
            memcpy(buf + 8, &seq, 8);
            ssize_t r = send(fd, buf, size, MSG_NOSIGNAL);
            if (r < 0 && errno == EINTR)
                continue;
            if (r != (ssize_t)size) {
                error = "send failed";
                break;
            }
            sent++;
        }
        /* One reply, blocking; then whatever else is already there. */
        int flags = 0;
        while (!error && ok + refused < sent) {
            char reply[128];
            ssize_t r = recv(fd, reply, sizeof reply - 1, flags);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (flags && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                error = "recv of a reply failed";
                break;
            }
            if (r == 0) {
                error = "end of stream before every reply";
                break;
            }
            if (r == 2 && memcmp(reply, "ok", 2) == 0) {
                ok++;
            } else {
                if (!refused) {
                    reply[r] = 0;
                    for (ssize_t i = 0; i < r; i++)
                        if (reply[i] == '"' || reply[i] == '\\' || (unsigned char)reply[i] < 32)
                            reply[i] = '?';
                    memcpy(first_refusal, reply, (size_t)r + 1);
                }
                refused++;
            }
            last_reply = now_ns();
            flags = MSG_DONTWAIT;
        }
    }
    char *out = malloc(1024);
    if (!out)
        die("malloc");
    double secs = (double)(last_reply - first_sent) / 1e9;
    snprintf(out, 1024,
             "{\"sent\": %ld, \"ok\": %ld, \"refused\": %ld, \"first_refusal\": \"%s\", \"size\": %zu, "
             "\"window\": %ld, \"error\": %s%s%s, \"elapsed_ns\": %" PRIu64 ", \"msgs_per_s\": %.1f}\n",
             sent, ok, refused, first_refusal, size, window, error ? "\"" : "", error ? error : "null",
             error ? "\"" : "", last_reply > first_sent ? last_reply - first_sent : 0,
             secs > 0 ? (double)ok / secs : 0.0);
    free(buf);
    return out;
}

/* The first message after a (re)start: see `qb first` above. */
static void first(int fd, size_t size, uint64_t started, const char *ready, const char *result)
{
    char text[64];
    snprintf(text, sizeof text, "%d\n", (int)getpid());
    write_file(ready, text);
    size_t cap = size > 65536 ? size + 1 : 65537;
    char *buf = malloc(cap);
    if (!buf)
        die("malloc");
    ssize_t r;
    while ((r = recv(fd, buf, cap, 0)) < 0 && errno == EINTR)
        ;
    uint64_t t = now_ns();
    if (r < 16) {
        fprintf(stderr, "qb first: %s\n", r < 0 ? strerror(errno) : "no message (end of stream or short)");
        exit(1);
    }
    uint64_t seq;
    memcpy(&seq, buf + 8, 8);
    char out[512];
    snprintf(out, sizeof out,
             "{\"started_ns\": %" PRIu64 ", \"first_ns\": %" PRIu64 ", \"seq\": %" PRIu64
             ", \"size\": %zd, \"expected_size\": %zu}\n",
             started, t, seq, r, size);
    write_file(result, out);
    /* Hold every message drover sends (no ack) until the stream ends. */
    for (;;) {
        r = recv(fd, buf, cap, 0);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    free(buf);
}

/* ------------------------------------------------------------ baselines */

static double cpu_s(const struct rusage *r)
{
    return (double)(r->ru_utime.tv_sec + r->ru_stime.tv_sec) +
           (double)(r->ru_utime.tv_usec + r->ru_stime.tv_usec) / 1e6;
}

/* Waits for `pid` and returns its CPU time (user + system, seconds) in
 * *cpu; fails unless it exited 0. */
static void reap(pid_t pid, const char *what, double *cpu)
{
    int status;
    struct rusage r;
    while (wait4(pid, &status, 0, &r) < 0)
        if (errno != EINTR)
            die("wait4");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "qb: %s failed (status %d)\n", what, status);
        exit(1);
    }
    *cpu = cpu_s(&r);
}

/* Writes RESULT.cpu: the CPU time each process of a baseline used (user +
 * system, seconds), so the bench can say what a message costs in CPU on
 * each side. The producer's figure is this process's own, read right after
 * its last send; the middle's is 0 for the pair. */
static void write_cpu(const char *result, double producer, double consumer, double middle)
{
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s.cpu", result);
    snprintf(text, sizeof text,
             "{\"producer_cpu_s\": %.6f, \"consumer_cpu_s\": %.6f, \"middle_cpu_s\": %.6f}\n",
             producer, consumer, middle);
    write_file(path, text);
}

static double self_cpu(void)
{
    struct rusage r;
    if (getrusage(RUSAGE_SELF, &r) != 0)
        die("getrusage");
    return cpu_s(&r);
}

/* A SOCK_SEQPACKET pair between this process and a forked child, which dies
 * with its parent. Returns the child's pid (0 in the child); the parent keeps
 * sv[0], the child sv[1]. */
static pid_t fork_pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        die("socketpair");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(sv[0]);
    } else {
        close(sv[1]);
    }
    return pid;
}

static void pair(long n, size_t size, int lat_mode, double rate, const char *result)
{
    int sv[2], ready[2];
    if (pipe(ready) != 0)
        die("pipe");
    pid_t pid = fork_pair(sv);
    if (pid == 0) {
        close(ready[0]);
        if (write(ready[1], "r", 1) != 1)
            die("write");
        close(ready[1]);
        char *out = consume(sv[1], n, size, lat_mode, 0);
        write_file(result, out);
        _exit(0);
    }
    close(ready[1]);
    char c;
    if (read(ready[0], &c, 1) != 1)
        die("read ready");
    close(ready[0]);
    produce(sv[0], n, size, rate);
    double producer = self_cpu(), consumer;
    reap(pid, "pair consumer", &consumer);
    close(sv[0]);
    write_cpu(result, producer, consumer, 0);
}

/* The relay: packets from `in` to `out`, in batches, until `in` ends. */
static void forward(int in, int out, size_t size)
{
    enum { BATCH = 64 };
    size_t cap = size + 1;
    char *buf = malloc(cap * BATCH);
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    if (!buf)
        die("malloc");
    for (;;) {
        memset(m, 0, sizeof m);
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){buf + (size_t)i * cap, cap};
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(in, m, BATCH, MSG_WAITFORONE, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("recvmmsg");
        }
        /* A zero-length packet is the end of the stream (producers never
         * send one). */
        int end = 0;
        while (end < got && m[end].msg_len > 0) {
            iov[end].iov_len = m[end].msg_len;
            end++;
        }
        for (int sent = 0; sent < end;) {
            int r = sendmmsg(out, m + sent, (unsigned)(end - sent), MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                die("sendmmsg");
            }
            sent += r;
        }
        if (end < got || got == 0) {
            free(buf);
            return;
        }
    }
}

static void relay(long n, size_t size, int lat_mode, double rate, const char *result)
{
    int in[2], out[2], ready[2];
    if (pipe(ready) != 0)
        die("pipe");
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, in) != 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, out) != 0)
        die("socketpair");
    pid_t consumer = fork();
    if (consumer < 0)
        die("fork");
    if (consumer == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(ready[0]);
        if (write(ready[1], "r", 1) != 1)
            die("write");
        close(ready[1]);
        char *text = consume(out[1], n, size, lat_mode, 0);
        write_file(result, text);
        _exit(0);
    }
    pid_t relayer = fork();
    if (relayer < 0)
        die("fork");
    if (relayer == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(in[0]);
        close(out[1]);
        close(ready[0]);
        close(ready[1]);
        forward(in[1], out[0], size);
        _exit(0);
    }
    close(in[1]);
    close(out[0]);
    close(out[1]);
    close(ready[1]);
    char c;
    if (read(ready[0], &c, 1) != 1)
        die("read ready");
    close(ready[0]);
    produce(in[0], n, size, rate);
    double producer = self_cpu(), consumed, middle;
    close(in[0]);
    reap(consumer, "relay consumer", &consumed);
    reap(relayer, "relay", &middle);
    write_cpu(result, producer, consumed, middle);
}

static void pingpong(long n, size_t size, const char *result)
{
    int sv[2];
    char *buf = calloc(1, size > 65536 ? size : 65536);
    uint64_t *rtt = malloc(sizeof(uint64_t) * (size_t)n);
    if (!buf || !rtt)
        die("alloc");
    pid_t pid = fork_pair(sv);
    if (pid == 0) {
        for (;;) {
            ssize_t r = recv(sv[1], buf, 65536, 0);
            if (r <= 0)
                _exit(0);
            if (send(sv[1], buf, (size_t)r, MSG_NOSIGNAL) != r)
                _exit(1);
        }
    }
    /* A few warm-up round trips, not timed. */
    for (long i = 0; i < n + 100; i++) {
        uint64_t t0 = now_ns();
        if (send(sv[0], buf, size, MSG_NOSIGNAL) != (ssize_t)size)
            die("send");
        if (recv(sv[0], buf, 65536, 0) != (ssize_t)size)
            die("recv");
        if (i >= 100)
            rtt[i - 100] = now_ns() - t0;
    }
    close(sv[0]);
    waitpid(pid, NULL, 0);
    char extra[1024], out[2048];
    latency_json(extra, sizeof extra, rtt, (size_t)n);
    snprintf(out, sizeof out, "{\"size\": %zu, %s}\n", size, extra);
    write_file(result, out);
}

/* ------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr, "usage: qb produce N SIZE RATE READY\n"
                    "       qb consume N SIZE tput|lat ACK READY RESULT\n"
                    "       qb pair N SIZE tput|lat RATE RESULT\n"
                    "       qb relay N SIZE tput|lat RATE RESULT\n"
                    "       qb pingpong N SIZE RESULT\n"
                    "       qb produce-confirm N SIZE WINDOW READY RESULT\n"
                    "       qb first SIZE READY RESULT\n");
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t started = now_ns(); /* for `first`: the moment the program runs */
    if (argc == 5 && strcmp(argv[1], "first") == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        size_t size = (size_t)atol(argv[2]);
        if (size < 16)
            usage();
        first(env_fd("DROVER_IN_BENCH"), size, started, argv[3], argv[4]);
        return 0;
    }
    if (argc < 4)
        usage();
    const char *mode = argv[1];
    long n = atol(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    if (n < 1 || size < 16)
        usage();
    if (strcmp(mode, "produce") == 0 && argc == 6) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive drover */
        int fd = env_fd("DROVER_OUT_BENCH");
        gate(argv[5]);
        produce(fd, n, size, atof(argv[4]));
        return 0;
    }
    if (strcmp(mode, "consume") == 0 && argc == 8) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = env_fd("DROVER_IN_BENCH");
        int lat_mode = strcmp(argv[4], "lat") == 0;
        char text[64];
        snprintf(text, sizeof text, "%d\n", (int)getpid());
        write_file(argv[6], text);
        char *out = consume(fd, n, size, lat_mode, atoi(argv[5]));
        write_file(argv[7], out);
        /* Stay until drover closes the queue (shutdown), as a real worker
         * does: exiting right after the last ack races drover's reading of
         * that ack with its handling of our exit. */
        wait_closed(fd);
        return 0;
    }
    if (strcmp(mode, "produce-confirm") == 0 && argc == 7) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = env_fd("DROVER_OUT_BENCH");
        const char *confirm = getenv("DROVER_CONFIRM_BENCH");
        if (!confirm || strcmp(confirm, "1") != 0) {
            fprintf(stderr, "qb: queue bench has no `confirm = true` (DROVER_CONFIRM_BENCH is not 1)\n");
            return 2;
        }
        long window = atol(argv[4]);
        if (window < 1)
            usage();
        gate(argv[5]);
        char *out = produce_confirm(fd, n, size, window);
        write_file(argv[6], out);
        /* Stay until drover closes the queue, like the consumer. */
        wait_closed(fd);
        return 0;
    }
    if (strcmp(mode, "pair") == 0 && argc == 7) {
        pair(n, size, strcmp(argv[4], "lat") == 0, atof(argv[5]), argv[6]);
        return 0;
    }
    if (strcmp(mode, "relay") == 0 && argc == 7) {
        relay(n, size, strcmp(argv[4], "lat") == 0, atof(argv[5]), argv[6]);
        return 0;
    }
    if (strcmp(mode, "pingpong") == 0 && argc == 5) {
        pingpong(n, size, argv[4]);
        return 0;
    }
    usage();
    return 2;
}
