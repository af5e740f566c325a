"""Tests of drover_worker.py on its own, without drover (run by tests/python.rs).

    python3 -m unittest src/start/python/test_drover_worker.py
"""
import array
import ast
import collections
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
# drover_worker is imported too, for its pure functions; no .pyc beside it.
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
with open(os.path.join(HERE, "drover_worker.py")) as f:
    BOOTSTRAP = f.read()

MODULE = textwrap.dedent(
    """
    import os, sys
    LOADED_IN = os.getpid()
    def ok(): print("ok", os.environ.get("DROVER_INDEX"), flush=True)
    def fail(): raise RuntimeError("boom")
    def code(): sys.exit(5)
    def message(): sys.exit("bye")
    def where(): print(LOADED_IN, os.getpid(), flush=True)
    def title():
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read()
        with open("/proc/self/comm", "rb") as f:
            comm = f.read()
        print(repr((cmdline, comm)), flush=True)
    """
)

# Opens a file while it is imported (by the fork template, or by the
# forkserver as a preload), as a module that logs to a file does.
OPENER = textwrap.dedent(
    """
    import os
    LOG = open("log.txt", "a", buffering=1)
    """
)

# What a worker holds: every open fd with its target, where its log and
# queues are, written on stdout; then a line in the log and a message on
# its queue.
INSPECT = textwrap.dedent(
    """
    import json, os, socket
    from opener import LOG

    def inspect():
        held = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                held[name] = os.readlink("/proc/self/fd/" + name)
            except OSError:
                pass  # the directory listed
        queues = {k: v for k, v in os.environ.items() if k.startswith("DROVER_IN_") or k.startswith("DROVER_OUT_")}
        print(json.dumps({"held": held, "log": LOG.fileno(), "queues": queues}), flush=True)
        LOG.write("from worker %s\\n" % os.environ["DROVER_INDEX"])
        out = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
        out.send(b"result %s" % os.environ["DROVER_INDEX"].encode())
    """
)

# Prints while imported, without a newline: the text sits in the buffer of
# sys.stdout when the template forks.
CHATTY = textwrap.dedent(
    """
    import sys
    print("imported!", end="")
    def hello(): print("hello", flush=True)
    """
)


# What glibc's fork() leaves right in a child, checked in a worker: its
# parent, the TID glibc caches in its thread descriptor, its robust futex
# list, Python's fork handlers (os.register_at_fork), its exit code.
FORKCHECK = textwrap.dedent(
    """
    import ctypes, json, os, sys, threading, time
    AFTER = []
    os.register_at_fork(after_in_child=lambda: AFTER.append(os.getpid()))
    if os.environ.get("FORKCHECK_THREAD"):
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()

    def check():
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
        offset = (ctypes.c_uint32 * 3).in_dll(libc, "_thread_db_pthread_tid")[2]
        head, length = ctypes.c_void_p(), ctypes.c_size_t()
        libc.syscall(274, 0, ctypes.byref(head), ctypes.byref(length))  # get_robust_list, x86_64
        print(json.dumps({
            "ppid": os.getppid(),
            "cached_tid": ctypes.c_int.from_address(libc.pthread_self() + offset).value,
            "tid": threading.get_native_id(),
            "robust_list": head.value,
            "after_fork": AFTER[-1:] == [os.getpid()],
        }), flush=True)
        sys.exit(9)
    """
)


# Fails opening a file while imported: an OSError, with an errno.
OPENS_MISSING = textwrap.dedent(
    """
    open("missing.txt")
    """
)


# Output buffered as by default (the tests' environment may say otherwise).
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def socket_inode(sock):
    return "socket:[%d]" % os.fstat(sock.fileno()).st_ino


# drover's side of the protocol (see drover_worker's docstring).
Reply = collections.namedtuple("Reply", "seq errno pid text")
HELLO = Reply(0, 0, 0, "")


def field(data):
    """One field: its u32 length, then its bytes."""
    data = data.encode() if isinstance(data, str) else data
    return struct.pack("<I", len(data)) + data


def count(n):
    """A count field."""
    return field(struct.pack("<I", n))


def encode_request(seq, env, queues=None):
    """A request: seq, then the counted KEY=VALUE and NAME=INDEX fields."""
    packet = struct.pack("<Q", seq)
    for pairs in (env, queues or {}):
        packet += count(len(pairs)) + b"".join(field("%s=%s" % pair) for pair in pairs.items())
    return packet


def decode_reply(packet):
    """A reply packet as a Reply; its text must be UTF-8."""
    seq, number, pid = struct.unpack_from("<Qii", packet)
    return Reply(seq, number, pid, packet[struct.calcsize("<Qii") :].decode())


def kill_worker(pid):
    """Kills worker `pid` if it still runs (and the number is not another
    process's by now)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if f.read().startswith(b"drover-worker"):
                os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


class Template:
    """A template (or server) run as drover runs it: requests on fd 3."""

    def __init__(self, cwd, mode, module, function, preload=(), stdout=None, stderr=None, env=None):
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = socket_inode(theirs)
        fd = theirs.fileno()
        argv = [sys.executable, "-c", BOOTSTRAP, mode, module, function, *preload]
        if fd != 3:
            # The template holds stdio and fd 3, nothing else (as under drover).
            argv = ["sh", "-c", 'exec 3<&%d %d<&-; exec "$@"' % (fd, fd), "sh", *argv]
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=stdout, stderr=stderr, env=dict(BUFFERED, **(env or {})), pass_fds=(fd,)
        )
        theirs.close()
        self.ours.settimeout(60)
        self.seq = 0
        self.workers = []

    def next_seq(self):
        self.seq += 1
        return self.seq

    def send(self, packet, fds=()):
        """Sends one packet, `fds` riding along as SCM_RIGHTS."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.ours.sendmsg([packet], rights)

    def reply(self):
        """The next reply (the hello first)."""
        reply = decode_reply(self.ours.recv(4096))
        if reply.seq and not reply.errno:
            self.workers.append(reply.pid)
        return reply

    def start(self, fds, env, queues=None):
        """Asks for a worker with `fds` (stdin, stdout, stderr, queues...)."""
        self.send(encode_request(self.next_seq(), env, queues), fds)
        return self.reply()

    def close(self):
        """Closes drover's end; returns the template's exit code."""
        self.ours.close()
        return self.process.wait(timeout=60)

    def kill(self):
        """Kills the template and the workers it started that still run."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.ours.close()
        for pid in self.workers:
            kill_worker(pid)


def read_all(fd, timeout=60):
    """Everything written to pipe `fd` until its writers close it."""
    deadline = time.monotonic() + timeout
    out = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the pipe stayed open %d s: %r so far" % (timeout, out))
            chunk = os.read(fd, 65536)
            if not chunk:
                return out.decode()
            out += chunk
    finally:
        os.close(fd)


class BootstrapTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        for name, text in [("mod.py", MODULE), ("opener.py", OPENER), ("inspect_fds.py", INSPECT), ("chatty.py", CHATTY),
                           ("forkcheck.py", FORKCHECK)]:
            with open(os.path.join(self.dir.name, name), "w") as f:
                f.write(text)
        self.templates = []
        self.workers = []

    def tearDown(self):
        for template in self.templates:
            template.kill()
        for pid in self.workers:
            kill_worker(pid)
        self.dir.cleanup()

    def template(self, *args, **kw):
        template = Template(self.dir.name, *args, **kw)
        self.templates.append(template)
        return template

    def spawn(self, function, env=None):
        return subprocess.run(
            [sys.executable, "-c", BOOTSTRAP, "spawn", "mod", function],
            cwd=self.dir.name, capture_output=True, text=True, timeout=60,
            env=dict(os.environ, **(env or {})),
        )

    def test_spawn_maps_outcomes_to_exit_codes(self):
        self.assertEqual(self.spawn("ok").returncode, 0)
        failed = self.spawn("fail")
        self.assertEqual(failed.returncode, 1)
        self.assertIn("RuntimeError: boom", failed.stderr)
        self.assertEqual(self.spawn("code").returncode, 5)
        message = self.spawn("message")
        self.assertEqual((message.returncode, message.stderr.strip()), (1, "bye"))

    def test_a_template_forks_workers_that_share_its_import(self):
        template = self.template("fork", "mod", "where")
        self.assertEqual(template.reply(), HELLO)
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        reply = template.start([null, w, w], {"DROVER_INDEX": "0"})
        os.close(w)
        os.close(null)
        self.assertEqual((reply.seq, reply.errno, reply.text), (1, 0, ""))
        loaded_in, worker = read_all(r).split()
        self.assertEqual(int(worker), reply.pid)
        self.assertEqual(int(loaded_in), template.process.pid, "imported once, by the template")
        self.assertEqual(template.close(), 0, "exits when drover's end closes")

    def forkcheck(self, env=None):
        """What a `forkcheck` worker of a fork template reports (FORKCHECK),
        and the worker's pid."""
        template = self.template("fork", "forkcheck", "check", env=env)
        self.assertEqual(template.reply(), HELLO)
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        reply = template.start([null, w, w], {"DROVER_INDEX": "0"})
        os.close(w)
        os.close(null)
        self.assertEqual((reply.seq, reply.errno, reply.text), (1, 0, ""))
        return json.loads(read_all(r)), reply.pid

    def test_a_worker_is_forked_once_as_its_templates_sibling_like_a_real_fork(self):
        """The fast path (SiblingFork): the worker is the child of the
        template's parent (here this test, as drover under drover), which
        reaps its exit code; glibc's state is that of a fork() child."""
        if os.uname().machine != "x86_64" or not os.confstr("CS_GNU_LIBC_VERSION"):
            self.skipTest("the check reads glibc's thread descriptor with x86_64's syscall numbers")
        report, pid = self.forkcheck()
        self.assertEqual(report["ppid"], os.getpid(), "the template's sibling, forked once")
        self.assertEqual(report["cached_tid"], report["tid"], "glibc's cached TID is the worker's")
        self.assertTrue(report["robust_list"], "the robust futex list is registered again")
        self.assertTrue(report["after_fork"], "os.register_at_fork handlers ran in the worker")
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 9, "its exit code reaches its parent")

    def test_the_double_fork_is_the_fallback_when_forced_or_with_threads(self):
        """DROVER_PYTHON_DOUBLE_FORK=1, or a template running a second
        thread (whose locks a raw clone would copy held): the worker is
        double-forked, so its parent is not the template's parent (drover
        adopts it as a subreaper; this test is none), and it runs as well."""
        for env in [{"DROVER_PYTHON_DOUBLE_FORK": "1"}, {"FORKCHECK_THREAD": "1"}]:
            with self.subTest(env=env):
                report, pid = self.forkcheck(env)
                self.assertNotEqual(report["ppid"], os.getpid(), "double-forked")
                self.assertEqual(report["cached_tid"], report["tid"])
                self.assertTrue(report["after_fork"])
                self.workers.append(pid)

    def spares(self):
        """This process's children that are spares (their title)."""
        found = []
        for name in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                with open("/proc/%s/cmdline" % name, "rb") as f:
                    title = f.read()
            except (OSError, ValueError):
                continue
            if ppid == os.getpid() and title.startswith(b"drover-spare"):
                found.append(int(name))
        return found

    def wait_spare(self, other_than=()):
        """The pid of this process's one spare child, not one of `other_than`."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [pid for pid in self.spares() if pid not in other_than]
            if found:
                self.assertEqual(len(found), 1, found)
                return found[0]
            time.sleep(0.01)
        self.fail("no spare within 60 s")

    def start_ok(self, template, index):
        """Starts an `ok` worker; its reply and what it printed."""
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        reply = template.start([null, w, w], {"DROVER_INDEX": str(index)})
        os.close(w)
        os.close(null)
        return reply, read_all(r)

    def test_a_spare_forked_ahead_becomes_the_next_worker(self):
        """With SiblingFork the template forks the next worker before its
        request (a spare, the template's sibling, titled drover-spare); the
        request hands it its fds and variables, and a new spare follows."""
        if not os.confstr("CS_GNU_LIBC_VERSION") or os.uname().machine not in ("x86_64", "aarch64"):
            self.skipTest("spares need SiblingFork")
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        for index in range(3):
            spare = self.wait_spare()
            reply, printed = self.start_ok(template, index)
            self.assertEqual((reply.errno, reply.pid, printed), (0, spare, "ok %d\n" % index))
            self.assertEqual(os.waitpid(spare, 0), (spare, 0), "our child, exit 0")
        self.assertEqual(template.close(), 0)

    def test_a_spare_exits_when_its_template_is_gone(self):
        if not os.confstr("CS_GNU_LIBC_VERSION") or os.uname().machine not in ("x86_64", "aarch64"):
            self.skipTest("spares need SiblingFork")
        for how in ("close", "kill"):
            with self.subTest(how=how):
                template = self.template("fork", "mod", "ok")
                self.assertEqual(template.reply(), HELLO)
                spare = self.wait_spare()
                if how == "close":
                    self.assertEqual(template.close(), 0)
                else:
                    template.kill()
                self.assertEqual(os.waitpid(spare, 0), (spare, 0), "it ran nothing and exited 0")

    def test_a_dead_spare_is_replaced_by_a_fork_at_the_request(self):
        if not os.confstr("CS_GNU_LIBC_VERSION") or os.uname().machine not in ("x86_64", "aarch64"):
            self.skipTest("spares need SiblingFork")
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        spare = self.wait_spare()
        os.kill(spare, signal.SIGKILL)
        os.waitpid(spare, 0)
        reply, printed = self.start_ok(template, 4)
        self.assertEqual((reply.errno, printed), (0, "ok 4\n"))
        self.assertNotEqual(reply.pid, spare)
        self.assertEqual(os.waitpid(reply.pid, 0), (reply.pid, 0))
        self.wait_spare(other_than=(spare,))
        self.assertEqual(template.close(), 0)

    def test_sibling_fork_is_used_only_where_it_is_known_to_be_sound(self):
        """The checks of SiblingFork.sound: one thread, no loaded object that
        could register pthread_atfork handlers."""
        import drover_worker

        sibling = drover_worker.sibling_fork()
        if sibling is None:
            self.skipTest("no SiblingFork here (not glibc, or another machine)")
        self.assertTrue(sibling.sound())
        with open(os.path.join(self.dir.name, "atfork.so"), "wb") as f:
            f.write(b"\x7fELF...pthread_atfork...")
        self.assertFalse(drover_worker.SiblingFork.no_atfork(os.path.join(self.dir.name, "atfork.so").encode()))
        self.assertTrue(drover_worker.SiblingFork.no_atfork(b"/lib/x86_64-linux-gnu/libc.so.6"))
        self.assertFalse(drover_worker.SiblingFork.no_atfork(b"/nonexistent/lib.so"), "unreadable: it might")
        sibling.checked[sibling.executable] = False
        sibling.objects = None
        self.assertFalse(sibling.sound(), "a loaded object that names pthread_atfork")
        del sibling.checked[sibling.executable]
        sibling.objects = None
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            self.assertFalse(sibling.sound(), "a second thread")
        finally:
            stop.set()
            thread.join()
        # The thread's task leaves /proc/self/task a moment after join().
        deadline = time.monotonic() + 60
        while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(sibling.sound())

    def test_a_forked_worker_keeps_what_its_template_opened(self):
        """Regression: the worker's queue sockets were put at 3, 4, ... over
        the files the template had opened while importing."""
        # fork: the template imports the target, which imports the opener;
        # forkserver: the server preloads the opener, the worker imports the
        # target, which finds the opener already imported.
        for mode, preload in [("fork", []), ("forkserver", ["opener"])]:
            with self.subTest(mode):
                self.check_worker_fds(mode, preload)

    def check_worker_fds(self, mode, preload):
        log = os.path.join(self.dir.name, "log.txt")
        if os.path.exists(log):
            os.remove(log)
        template = self.template(mode, "inspect_fds", "inspect", preload=preload)
        self.assertEqual(template.reply(), HELLO)
        reports = []
        for index in range(2):
            r, w = os.pipe()
            null = os.open(os.devnull, os.O_RDONLY)
            jobs, jobs_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            results, results_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            passed = {"jobs": socket_inode(jobs_theirs), "results": socket_inode(results_theirs)}
            reply = template.start(
                [null, w, w, jobs_theirs.fileno(), results_theirs.fileno()],
                {"DROVER_INDEX": str(index), "DROVER_IN_JOBS": "3", "DROVER_OUT_RESULTS": "4"},
                {"DROVER_IN_JOBS": 3, "DROVER_OUT_RESULTS": 4},
            )
            self.assertEqual(reply.errno, 0, reply)
            for fd in (w, null, jobs_theirs.fileno(), results_theirs.fileno()):
                os.close(fd)
            jobs_theirs.detach()
            results_theirs.detach()
            report = json.loads(read_all(r))
            results.settimeout(60)
            self.assertEqual(results.recv(100), b"result %d" % index, "the queue carries queue messages")
            jobs.close()
            results.close()
            reports.append((report, passed))
        self.assertEqual(template.close(), 0)

        with open(log) as f:
            self.assertEqual(sorted(f.read().splitlines()), ["from worker 0", "from worker 1"])
        for report, passed in reports:
            held = {int(fd): target for fd, target in report["held"].items()}
            queues = {k: int(v) for k, v in report["queues"].items()}
            log_fd = report["log"]
            self.assertEqual(held.get(log_fd), log, "the template's file stays at its number")
            self.assertEqual(held.get(queues["DROVER_IN_JOBS"]), passed["jobs"])
            self.assertEqual(held.get(queues["DROVER_OUT_RESULTS"]), passed["results"])
            self.assertEqual(
                set(held), {0, 1, 2, log_fd, *queues.values()},
                "nothing else leaks in: not the template's socket, not another worker's fds: %s" % held,
            )
            self.assertNotIn(template.control, held.values())
            self.assertEqual(held[0], "/dev/null")

    def test_import_time_output_is_written_once(self):
        """Regression: text printed while importing sat in the template's
        buffer and every forked worker wrote it again."""
        out_r, out_w = os.pipe()
        template = self.template("fork", "chatty", "hello", stdout=out_w)
        os.close(out_w)
        self.assertEqual(template.reply(), HELLO)
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        for index in range(2):
            self.assertEqual(template.start([null, w, w], {"DROVER_INDEX": str(index)}).errno, 0)
        os.close(w)
        os.close(null)
        workers = read_all(r)
        self.assertEqual(workers, "hello\nhello\n")
        self.assertEqual(template.close(), 0)
        self.assertEqual(read_all(out_r), "imported!")

    def test_every_process_shows_a_short_title(self):
        """ps showed the whole of this file's source as the command line of
        every worker and template, the same for all of them."""
        group = {"DROVER_GROUP": "workers"}
        spawned = self.spawn("title", dict(group, DROVER_INDEX="3"))
        self.assertEqual(
            ast.literal_eval(spawned.stdout), (b"drover-worker workers[3] mod:title\0", b"workers[3]\n"), spawned.stderr
        )
        for mode, kind, tag in [("fork", "drover-template", "tpl"), ("forkserver", "drover-forkserver-template", "srv")]:
            with self.subTest(mode):
                template = self.template(mode, "mod", "title", env=group)
                self.assertEqual(template.reply(), HELLO)
                pid = template.process.pid
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    self.assertEqual(f.read(), b"%s workers mod:title\0" % kind.encode())
                with open("/proc/%d/comm" % pid, "rb") as f:
                    self.assertEqual(f.read(), b"workers[%s]\n" % tag.encode())
                r, w = os.pipe()
                null = os.open(os.devnull, os.O_RDONLY)
                self.assertEqual(template.start([null, w, w], dict(group, DROVER_INDEX="1")).errno, 0)
                os.close(w)
                os.close(null)
                self.assertEqual(ast.literal_eval(read_all(r)), (b"drover-worker workers[1] mod:title\0", b"workers[1]\n"))
                self.assertEqual(template.close(), 0)

    def test_a_long_group_name_keeps_the_index_in_the_process_name(self):
        import drover_worker

        # The kernel keeps 15 bytes of a name: the group is cut, not the tag.
        self.assertEqual(
            drover_worker.worker_title("a_rather_long_group", 12, "m", "f"),
            ("drover-worker a_rather_long_group[12] m:f", "a_rather_lo[12]"),
        )
        self.assertEqual(drover_worker.template_title("fork", "a_rather_long_group", "m", "f")[1], "a_rather_l[tpl]")

    def test_a_title_is_written_only_over_our_own_command_line_and_never_fails(self):
        """set_title writes over the argv area only when it holds the
        bootstrap's source (or a title); without /proc it does nothing."""
        show = "print(repr((open('/proc/self/cmdline', 'rb').read(), open('/proc/self/comm').read())))"
        foreign = "import drover_worker as w; w.set_title('drover-worker x[0] m:f', 'x[0]'); " + show
        out = subprocess.run([sys.executable, "-B", "-c", foreign], cwd=HERE, capture_output=True, text=True, timeout=60)
        cmdline, comm = ast.literal_eval(out.stdout)
        self.assertIn(b"import drover_worker", cmdline, "not our source: left as it was")
        self.assertEqual(comm, "x[0]\n")
        no_proc = (
            "import builtins, os, drover_worker as w\n"
            "def refuse(*a, **kw): raise PermissionError('no /proc here')\n"
            "builtins.open = os.open = refuse\n"
            "w.set_title('drover-worker x[0] m:f', 'x[0]')\n"
            "print('ran on')\n"
        )
        out = subprocess.run([sys.executable, "-B", "-c", no_proc], cwd=HERE, capture_output=True, text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout, out.stderr), (0, "ran on\n", ""))

    def test_a_worker_runs_only_once_its_template_says_go(self):
        """A template killed between forking a worker and telling drover its
        pid left that worker running unsupervised beside its replacement.
        The worker waits for "go", which the template writes only after its
        reply; a template that dies first closes the pipe unwritten."""
        import drover_worker

        cwd = os.getcwd()
        os.chdir(self.dir.name)
        sys.path.insert(0, self.dir.name)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for say_go, expected in [(False, ""), (True, "ok 0\n")]:
                r, w = os.pipe()
                null = os.open(os.devnull, os.O_RDONLY)
                pid, go = drover_worker.start_worker(theirs, [null, w, w], {"DROVER_INDEX": "0"}, {}, "mod", "ok")
                self.workers.append(pid)
                os.close(w)
                os.close(null)
                self.assertGreater(pid, 0)
                if say_go:
                    os.write(go, b"g")
                os.close(go)
                self.assertEqual(read_all(r), expected, "told to go: %s" % say_go)
        finally:
            sys.path.remove(self.dir.name)
            os.chdir(cwd)
            ours.close()
            theirs.close()

    def test_a_request_naming_a_missing_fd_is_refused(self):
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        null = os.open(os.devnull, os.O_RDONLY)
        reply = template.start([null, null, null], {}, {"DROVER_IN_JOBS": 3})
        os.close(null)
        self.assertEqual(reply, Reply(1, errno.EINVAL, 0, reply.text))
        self.assertIn("DROVER_IN_JOBS", reply.text)
        self.assertEqual(template.close(), 0, "and the template serves on")

    def test_a_failing_import_is_a_refused_hello(self):
        with open(os.path.join(self.dir.name, "opens_missing.py"), "w") as f:
            f.write(OPENS_MISSING)
        missing = Reply(0, errno.EIO, 0, "ModuleNotFoundError: No module named 'missing'")
        for mode, module, preload, expected in [
            ("fork", "missing", [], missing),
            ("forkserver", "mod", ["missing"], missing),
            (
                "fork", "opens_missing", [],
                Reply(0, errno.ENOENT, 0, "FileNotFoundError: [Errno 2] No such file or directory: 'missing.txt'"),
            ),
        ]:
            with self.subTest(mode=mode, module=module, preload=preload):
                err_r, err_w = os.pipe()
                template = self.template(mode, module, "ok", preload=preload, stderr=err_w)
                os.close(err_w)
                self.assertEqual(template.reply(), expected)
                self.assertEqual(template.process.wait(timeout=60), 1)
                stderr = read_all(err_r)
                self.assertIn("Traceback (most recent call last):", stderr)
                self.assertIn(expected.text, stderr)

        # drover gone before the hello: the template exits 1 all the same.
        err_r, err_w = os.pipe()
        template = self.template("fork", "missing", "ok", stderr=err_w)
        os.close(err_w)
        template.ours.close()
        self.assertEqual(template.process.wait(timeout=60), 1)
        self.assertEqual(read_all(err_r).count("Traceback"), 1, "the import's, none of the send")

    def test_a_malformed_request_is_refused_and_serving_goes_on(self):
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        good = {"DROVER_INDEX": "0"}

        def raw(seq, *fields):
            return struct.pack("<Q", seq) + b"".join(fields)

        malformed = {
            "no fields": lambda seq: raw(seq),
            "a count not 4 bytes": lambda seq: raw(seq, field(b"\0\0\0"), count(0)),
            "a count over the fields": lambda seq: raw(seq, count(0), count(2), field("DROVER_IN_JOBS=3")),
            "a field cut": lambda seq: encode_request(seq, good)[:-2],
            "a length cut": lambda seq: encode_request(seq, good) + b"\1\0",
            "an extra field": lambda seq: encode_request(seq, good) + field("X=1"),
            "bad UTF-8": lambda seq: raw(seq, count(1), field(b"A=\xff"), count(0)),
            "a KEY without =": lambda seq: raw(seq, count(1), field("DROVER_INDEX"), count(0)),
            "an index out of range": lambda seq: encode_request(seq, good, {"DROVER_IN_JOBS": 3}),
            "an index of stdio": lambda seq: encode_request(seq, good, {"DROVER_IN_JOBS": 2}),
            "an index not an integer": lambda seq: encode_request(seq, good, {"DROVER_IN_JOBS": "x"}),
            "a signed index": lambda seq: encode_request(seq, good, {"DROVER_IN_JOBS": "+3"}),
            "a padded index": lambda seq: encode_request(seq, good, {"DROVER_IN_JOBS": " 3"}),
        }
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            for name, encode in malformed.items():
                with self.subTest(name):
                    r, w = os.pipe()
                    seq = template.next_seq()
                    template.send(encode(seq), [null, w, w])
                    os.close(w)
                    reply = template.reply()
                    self.assertEqual(reply, Reply(seq, errno.EINVAL, 0, reply.text))
                    self.assertTrue(reply.text)
                    self.assertEqual(read_all(r), "", "its fds are closed, no worker holds them")

                    r, w = os.pipe()
                    reply = template.start([null, w, w], good)
                    os.close(w)
                    self.assertEqual((reply.seq, reply.errno), (seq + 1, 0), "the next request is served")
                    self.assertEqual(read_all(r), "ok 0\n")
            with self.subTest("no fds"):
                reply = template.start([], good)
                self.assertEqual(reply, Reply(template.seq, errno.EINVAL, 0, reply.text))
        finally:
            os.close(null)
        self.assertEqual(template.close(), 0)

    def test_a_packet_too_short_for_a_seq_is_ignored(self):
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            for packet in [b"", b"\1", b"\1\0\0\0\0\0\0"]:
                with self.subTest(packet=packet):
                    r, w = os.pipe()
                    template.send(packet, [null, w, w])
                    os.close(w)
                    self.assertEqual(read_all(r), "", "its fds are closed")
                    r, w = os.pipe()
                    reply = template.start([null, w, w], {"DROVER_INDEX": "0"})
                    os.close(w)
                    self.assertEqual((reply.seq, reply.errno), (template.seq, 0), "no reply came before")
                    self.assertEqual(read_all(r), "ok 0\n")
        finally:
            os.close(null)
        self.assertEqual(template.close(), 0)

    def test_replies_come_in_request_order(self):
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        # Every request is sent before any reply is read; the third is refused.
        for seq in range(1, 7):
            queues = {"DROVER_IN_JOBS": 9} if seq == 3 else {}
            template.send(encode_request(seq, {"DROVER_INDEX": str(seq)}, queues), [null, w, w])
        os.close(w)
        os.close(null)
        replies = [template.reply() for _ in range(6)]
        self.assertEqual([reply.seq for reply in replies], [1, 2, 3, 4, 5, 6])
        self.assertEqual([reply.errno for reply in replies], [0, 0, errno.EINVAL, 0, 0, 0])
        pids = [reply.pid for reply in replies if reply.errno == 0]
        self.assertEqual(len(set(pids)), 5, pids)
        self.assertEqual(sorted(read_all(r).splitlines()), ["ok %d" % seq for seq in (1, 2, 4, 5, 6)])
        self.assertEqual(template.close(), 0)

    def test_reply_text_is_cut_on_a_character_boundary(self):
        import drover_worker

        # A 3-byte character at each of its offsets against the 1000-byte limit.
        for prefix in ["", "x", "xx"]:
            with self.subTest(prefix=prefix):
                text = prefix + "\u20ac" * 400
                reply = decode_reply(drover_worker.refusal(7, errno.EINVAL, text))  # UTF-8, or this raises
                self.assertEqual(reply[:3], (7, errno.EINVAL, 0))
                self.assertTrue(text.startswith(reply.text))
                self.assertGreater(len(reply.text.encode()), 1000 - 3)
        # Through a template: a refusal quoting a long field of 2-byte characters.
        template = self.template("fork", "mod", "ok")
        self.assertEqual(template.reply(), HELLO)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            for prefix in ["", "x"]:
                with self.subTest(prefix=prefix):
                    seq = template.next_seq()
                    name = prefix + "\u00e9" * 600
                    template.send(struct.pack("<Q", seq) + count(1) + field(name) + count(0), [null, null, null])
                    reply = template.reply()  # UTF-8, or this raises
                    self.assertEqual(reply[:3], (seq, errno.EINVAL, 0))
                    self.assertIn(len(reply.text.encode()), (999, 1000))
        finally:
            os.close(null)
        self.assertEqual(template.close(), 0)

    def test_a_failure_to_fork_is_refused_with_its_errno(self):
        import drover_worker

        def failing(error):
            def start_worker(*args):
                raise error
            return start_worker

        packet = encode_request(4, {"DROVER_INDEX": "0"})
        saved = drover_worker.start_worker
        try:
            for error, expected in [
                (OSError(errno.EAGAIN, "Resource temporarily unavailable"), errno.EAGAIN),
                (OSError("the worker could not be forked"), errno.EIO),
                (RuntimeError("can't start new thread"), errno.EIO),
            ]:
                with self.subTest(error=error):
                    drover_worker.start_worker = failing(error)
                    reply, go = drover_worker.reply_to(None, packet, [0, 1, 2], "mod", "ok")
                    self.assertEqual((decode_reply(reply), go), (Reply(4, expected, 0, str(error)), None))
        finally:
            drover_worker.start_worker = saved


if __name__ == "__main__":
    unittest.main()
