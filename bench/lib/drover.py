"""drover and supervisord under the bench's control: configs, start, status, stop.

Each runs in its own session (see procs), with its stdout and stderr in
files of its directory, and every wait names what it waited for and the
tail of the supervisor's log when it fails.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from . import BenchError, proc
from .procs import Procs, wait_for
from .stamps import read_stamps


class StatusTimeout(BenchError):
    """drover did not answer a status request in time (its loop was blocked)."""


def toml_list(items) -> str:
    """A TOML array of strings (a JSON string is a TOML basic string)."""
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


def stamp_group(stamp: Path, processes: int, stamp_dir: Path, start_method: str | None = None) -> str:
    """A config with one group of `stamp` children, restarted at once when they
    die: start_secs is the shortest drover allows, so that a kill 120 ms after
    a start is a crash of a running child, restarted without backoff."""
    return (
        "[group.stamp]\n"
        f"command = {toml_list([stamp])}\n"
        f"processes = {processes}\n"
        + (f"start_method = {json.dumps(start_method)}\n" if start_method else "")
        + 'start_secs = "100ms"\n'
        'restart = "always"\n'
        f"env = {{ STAMP_DIR = {json.dumps(str(stamp_dir))} }}\n"
    )


def children(status: dict, group: str | None = None) -> list[dict]:
    """The children `drover status --json` lists, of one group or of all."""
    return [c for g in status["groups"] if group in (None, g["name"]) for c in g["children"]]


def running_count(status: dict) -> int:
    return sum(1 for c in children(status) if c["state"] == "running" and c["pid"] is not None)


def forkserver_of(drover_pid: int) -> int | None:
    """The pid of drover's fork server: its child whose argv[0] is drover-forkserver."""
    for pid in proc.live_children(drover_pid):
        if proc.argv(pid)[:1] == [b"drover-forkserver"]:
            return pid
    return None


class Drover:
    """One `drover run CONFIG --socket DIR/drover.sock`, logs in DIR.

    config: the file or directory drover runs, written by the caller.
    drover watches the config's directory and that directory's parent: a
    file the bench writes in either (a log, stamps) wakes drover's watcher
    threads with every write, during the very restarts being timed.
    """

    def __init__(self, binary: Path, procs: Procs, dir: Path, config: Path, *, args=(),
                 env: dict | None = None, preexec_fn=None):
        self.binary = binary
        self.procs = procs
        self.dir = dir
        self.config = config
        self.socket = dir / "drover.sock"
        self.stderr_path = dir / "stderr.log"
        self.args = list(args)
        self.env = env
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen | None = None
        self.t0 = 0

    def start(self) -> None:
        """Starts drover; t0 (CLOCK_MONOTONIC ns) is read just before."""
        with open(self.dir / "stdout.log", "wb") as out, open(self.stderr_path, "wb") as err:
            self.t0 = time.monotonic_ns()
            self.proc = self.procs.start(
                [self.binary, "run", self.config, "--socket", self.socket, *self.args],
                stdout=out, stderr=err, env=self.env, preexec_fn=self.preexec_fn,
            )
        self.pid = self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def alive(self) -> None:
        """Raises, with the tail of drover's log, when drover has exited."""
        if not self.is_running():
            raise BenchError(f"drover exited with status {self.proc.returncode}: {self.stderr_tail()}")

    def stderr_lines(self, n: int) -> list[str]:
        try:
            return self.stderr_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(self.stderr_lines(lines)) or "(no stderr)"

    def ctl(self, *cmd, timeout: float = 10) -> subprocess.CompletedProcess:
        """One drover CLI command against this drover's socket."""
        try:
            return subprocess.run(
                [str(self.binary), *map(str, cmd), "--socket", str(self.socket)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=self.env,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"`drover {' '.join(map(str, cmd))}` got no answer within {timeout:g} s: "
                             f"{self.stderr_tail()}") from None

    def status(self, timeout: float = 10) -> dict:
        """What `drover status --json` prints."""
        r = self.ctl("status", "--json", timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"drover status failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def status_socket(self, timeout: float = 10) -> dict:
        """The same status, read from the control socket directly (one JSON
        line each way): no process start per request."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(self.socket))
                s.sendall(b'{"cmd":"status"}\n')
                chunks = []
                while chunk := s.recv(1 << 16):
                    chunks.append(chunk)
            except TimeoutError as e:
                raise StatusTimeout(f"no answer to status within {timeout:g} s") from e
            except OSError as e:
                raise BenchError(f"status over {self.socket}: {e}") from e
        reply = json.loads(b"".join(chunks))
        if not reply.get("ok") or "status" not in reply:
            raise BenchError(f"status over {self.socket}: {reply}")
        return reply["status"]

    def wait_socket(self, timeout: float = 10) -> None:
        wait_for("drover's control socket", timeout, self.socket.exists, alive=self.alive)

    def stop(self, timeout: float = 30) -> dict:
        """`drover shutdown`, then SIGKILL whatever is left in its session.

        Returns exit (drover's status, or why there is none), shutdown_ms
        (from the command to drover's exit) and leftovers (processes still in
        drover's session once it had exited)."""
        info: dict = {"exit": None, "shutdown_ms": None, "leftovers": []}
        if self.proc is None:
            return info
        if self.is_running():
            t = time.monotonic()
            try:
                r = self.ctl("shutdown")
                if r.returncode != 0:
                    info["exit"] = f"`drover shutdown` failed: {r.stderr.strip()}"
                else:
                    info["exit"] = self.proc.wait(timeout)
                    info["shutdown_ms"] = (time.monotonic() - t) * 1000
            except (subprocess.TimeoutExpired, BenchError):
                info["exit"] = f"no exit within {timeout:g} s of `drover shutdown`"
        else:
            info["exit"] = self.proc.returncode
        info["leftovers"] = self.procs.kill_session(self.proc)
        return info


def supervisord_config(d: Path, stamp: Path, processes: int) -> str:
    """supervisord (foreground, default log level) with one program of
    `processes` stamp instances, restarted at once when they die."""
    return (
        "[supervisord]\n"
        "nodaemon=true\n"
        f"logfile={d}/supervisord.log\n"
        f"pidfile={d}/supervisord.pid\n"
        f"childlogdir={d}\n"
        "\n[unix_http_server]\n"
        f"file={d}/supervisor.sock\n"
        "\n[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "\n[supervisorctl]\n"
        f"serverurl=unix://{d}/supervisor.sock\n"
        "\n[program:stamp]\n"
        f"command={stamp}\n"
        f"numprocs={processes}\n"
        "process_name=%(program_name)s_%(process_num)02d\n"
        "autostart=true\n"
        "autorestart=true\n"
        "startsecs=0\n"
        "startretries=1000\n"
        f'environment=STAMP_DIR="{d}"\n'
        "stdout_logfile=NONE\n"
        "stderr_logfile=NONE\n"
        "stopwaitsecs=5\n"
    )


class Supervisord:
    """One supervisord run in the foreground with config DIR/supervisord.conf,
    its output in DIR/stdout.log; supervisorctl is next to supervisord."""

    def __init__(self, binary: Path, procs: Procs, dir: Path):
        self.binary = binary
        self.procs = procs
        self.dir = dir
        self.config = dir / "supervisord.conf"
        self.log = dir / "stdout.log"
        self.proc: subprocess.Popen | None = None
        self.t0 = 0

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.t0 = time.monotonic_ns()
            self.proc = self.procs.start([self.binary, "-c", self.config], stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            log = self.log.read_text(errors="replace").strip()[-500:]
            raise BenchError(f"supervisord exited with status {self.proc.returncode}: {log}")

    def ctl(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.binary.parent / "supervisorctl"), "-c", str(self.config), *cmd],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )

    def status(self) -> dict[str, tuple[str, int | None]]:
        """name -> (state, pid) from `supervisorctl status`."""
        out = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            pid = int(parts[parts.index("pid") + 1].rstrip(",")) if "pid" in parts else None
            out[parts[0]] = (parts[1], pid)
        return out

    def stop(self) -> None:
        """SIGTERM, as an init system would; then nothing may be left."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("supervisord did not exit within 30 s of SIGTERM") from None
        self.procs.kill_session(self.proc)


class StampDrover(Drover):
    """drover with one group of `processes` stamp children. The stamps file
    the children append to and drover's log are in DIR; the config is
    DIR/conf/drover/drover.toml, so that neither its directory nor that
    directory's parent (both watched) sees those writes."""

    def __init__(self, binary: Path, procs: Procs, dir: Path, stamp: Path, processes: int, *,
                 start_method: str | None = None, args=(), preexec_fn=None):
        config = dir / "conf" / "drover" / "drover.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(stamp_group(stamp, processes, dir, start_method))
        super().__init__(binary, procs, dir, config, args=args, preexec_fn=preexec_fn)
        self.processes = processes
        self.stamps = dir / "stamps"
        self.stamps.touch()

    def wait_stamps(self, n: int, timeout: float) -> dict[int, int]:
        """Until n children have stamped; pid -> ns of every stamp."""
        def enough():
            stamps = read_stamps(self.stamps)
            return stamps if len(stamps) >= n else None

        return wait_for(f"{n} stamps from drover's children", timeout, enough, alive=self.alive)
