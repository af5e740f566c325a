"""Tests of drover_worker.py on its own, without drover (run by tests/python.rs).

    python3 -m unittest src/start/python/test_drover_worker.py
"""
import array
import ast
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import textwrap
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


# Output buffered as by default (the tests' environment may say otherwise).
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def socket_inode(sock):
    return "socket:[%d]" % os.fstat(sock.fileno()).st_ino


class Template:
    """A template (or server) run as drover runs it: requests on fd 3."""

    def __init__(self, cwd, mode, module, function, preload=(), stdout=None, env=None):
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = socket_inode(theirs)
        fd = theirs.fileno()
        argv = [sys.executable, "-c", BOOTSTRAP, mode, module, function, *preload]
        if fd != 3:
            # The template holds stdio and fd 3, nothing else (as under drover).
            argv = ["sh", "-c", 'exec 3<&%d %d<&-; exec "$@"' % (fd, fd), "sh", *argv]
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=stdout, env=dict(BUFFERED, **(env or {})), pass_fds=(fd,)
        )
        theirs.close()
        self.ours.settimeout(60)
        self.seq = 0

    def ready(self):
        return json.loads(self.ours.recv(4096))

    def start(self, fds, env, queues=None):
        """Asks for a worker with `fds` (stdin, stdout, stderr, queues...)."""
        self.seq += 1
        request = {"seq": self.seq, "env": env, "queues": queues or {}}
        self.ours.sendmsg(
            [json.dumps(request).encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
        )
        return json.loads(self.ours.recv(4096))

    def close(self):
        """Closes drover's end; returns the template's exit code."""
        self.ours.close()
        return self.process.wait(timeout=60)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
        for name, text in [("mod.py", MODULE), ("opener.py", OPENER), ("inspect_fds.py", INSPECT), ("chatty.py", CHATTY)]:
            with open(os.path.join(self.dir.name, name), "w") as f:
                f.write(text)
        self.templates = []

    def tearDown(self):
        for template in self.templates:
            template.kill()
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
        self.assertEqual(template.ready(), {"ready": True})
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        reply = template.start([null, w, w], {"DROVER_INDEX": "0"})
        os.close(w)
        os.close(null)
        self.assertEqual(reply["seq"], 1)
        loaded_in, worker = read_all(r).split()
        self.assertEqual(int(worker), reply["pid"])
        self.assertEqual(int(loaded_in), template.process.pid, "imported once, by the template")
        self.assertEqual(template.close(), 0, "exits when drover's end closes")

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
        self.assertEqual(template.ready(), {"ready": True})
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
            self.assertIn("pid", reply, reply)
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
        self.assertEqual(template.ready(), {"ready": True})
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        for index in range(2):
            self.assertIn("pid", template.start([null, w, w], {"DROVER_INDEX": str(index)}))
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
                self.assertEqual(template.ready(), {"ready": True})
                pid = template.process.pid
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    self.assertEqual(f.read(), b"%s workers mod:title\0" % kind.encode())
                with open("/proc/%d/comm" % pid, "rb") as f:
                    self.assertEqual(f.read(), b"workers[%s]\n" % tag.encode())
                r, w = os.pipe()
                null = os.open(os.devnull, os.O_RDONLY)
                self.assertIn("pid", template.start([null, w, w], dict(group, DROVER_INDEX="1")))
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
                request = {"seq": 1, "env": {"DROVER_INDEX": "0"}, "queues": {}}
                pid, go = drover_worker.start_worker(theirs, request, [null, w, w], "mod", "ok")
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
        self.assertEqual(template.ready(), {"ready": True})
        null = os.open(os.devnull, os.O_RDONLY)
        reply = template.start([null, null, null], {}, {"DROVER_IN_JOBS": 3})
        os.close(null)
        self.assertEqual(reply["seq"], 1)
        self.assertIn("error", reply)
        self.assertEqual(template.close(), 0, "and the template serves on")


if __name__ == "__main__":
    unittest.main()
