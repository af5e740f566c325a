"""Tests of drover_worker.py on its own, without drover (run by tests/python.rs).

    python3 -m unittest src/python/test_drover_worker.py
"""
import array
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAP = open(os.path.join(HERE, "drover_worker.py")).read()

MODULE = textwrap.dedent(
    """
    import os, sys
    LOADED_IN = os.getpid()
    def ok(): print("ok", os.environ.get("DROVER_INDEX"), flush=True)
    def fail(): raise RuntimeError("boom")
    def code(): sys.exit(5)
    def message(): sys.exit("bye")
    def where(): print(LOADED_IN, os.getpid(), flush=True)
    """
)


class BootstrapTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        with open(os.path.join(self.dir.name, "mod.py"), "w") as f:
            f.write(MODULE)

    def tearDown(self):
        self.dir.cleanup()

    def spawn(self, function):
        return subprocess.run(
            [sys.executable, "-c", BOOTSTRAP, "spawn", "mod", function],
            cwd=self.dir.name, capture_output=True, text=True, timeout=60,
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
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        template = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, "fork", "mod", "where"],
            cwd=self.dir.name, close_fds=False,
            preexec_fn=lambda: os.dup2(theirs.fileno(), 3),
        )
        theirs.close()
        try:
            ours.settimeout(60)
            self.assertEqual(json.loads(ours.recv(4096)), {"ready": True})
            r, w = os.pipe()
            null = os.open(os.devnull, os.O_RDONLY)
            fds = array.array("i", [null, w, w])
            request = json.dumps({"seq": 1, "env": {"DROVER_INDEX": "0"}}).encode()
            ours.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            os.close(w)
            os.close(null)
            reply = json.loads(ours.recv(4096))
            self.assertEqual(reply["seq"], 1)
            out = b""
            while chunk := os.read(r, 100):
                out += chunk
            loaded_in, worker = out.decode().split()
            self.assertEqual(int(worker), reply["pid"])
            self.assertEqual(int(loaded_in), template.pid, "imported once, by the template")
        finally:
            ours.close()
            self.assertEqual(template.wait(timeout=60), 0, "exits when drover's end closes")


if __name__ == "__main__":
    unittest.main()
