"""Starting processes so that nothing outlives the bench.

Every long-running process (drover, supervisord, a baseline) is started as
the leader of its own session: Ctrl-C reaches the bench only, and at the end
everything still in that session (children, templates, fork servers,
multiprocessing's servers) is SIGKILLed. Stamp children that escaped their
session are found through the stamps files they wrote. Signals end the bench
through every `finally`, like Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from . import BenchError, proc
from .stamps import read_stamps


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or SIGINT: unwind through every `finally`."""


def catch_signals() -> None:
    """SIGTERM / SIGHUP / SIGINT end the bench like Ctrl-C does, also when
    it was started in the background with SIGINT ignored."""

    def interrupt(signum, _frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, interrupt)


def wait_for(what: str, timeout: float, check, interval: float = 0.002, alive=None):
    """Polls check() until it returns something truthy and returns that;
    alive() (if given) raises when the process being waited on died.
    Fails loudly on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if alive:
            alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def interrupt(tool: subprocess.Popen | None, timeout: float = 30) -> None:
    """Ends a measuring tool (perf, strace) the way it writes its report:
    SIGINT, then a wait; SIGKILL if it does not end within `timeout`.
    Nothing to do for None or a tool that has ended."""
    if tool is None or tool.poll() is not None:
        return
    tool.send_signal(signal.SIGINT)
    try:
        tool.wait(timeout)
    except subprocess.TimeoutExpired:
        tool.kill()
        tool.wait()


def kill_if_exe(pid: int, exe: str) -> bool:
    """SIGKILLs pid if it is still a live process running exe (not a reused pid)."""
    if proc.exe(pid) != exe:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


class Procs:
    """Every long-running process the bench starts, for guaranteed cleanup.

    sweep: (directory, executable): at cleanup, every process named in a
    `stamps` file below the directory that still runs the executable is
    SIGKILLed.
    """

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.sweeps: list[tuple[Path, str]] = []
        self.leftovers: list[str] = []

    def start(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def output(self, argv, what: str, timeout: float, **kw) -> str:
        """Runs a command to its end in a session of its own and returns its
        stdout; whatever it leaves behind (a multiprocessing server) is
        killed. Fails loudly, with its stderr, on a timeout or an error."""
        p = self.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: no answer within {timeout:g} s") from None
        finally:
            self.kill_session(p)
        if p.returncode != 0:
            raise BenchError(f"{what} failed ({p.returncode}): {err.decode(errors='replace')[-2000:]}")
        return out.decode()

    def forget(self, p: subprocess.Popen) -> None:
        if p in self.procs:
            self.procs.remove(p)

    def kill_session(self, p: subprocess.Popen) -> list[int]:
        """SIGKILLs everything left in p's session (p included) and reaps p;
        returns what was still running before (p aside)."""
        found = [pid for pid in proc.session_members(p.pid) if pid != p.pid]
        for _ in range(3):
            members = proc.session_members(p.pid)
            if not members and p.poll() is not None:
                break
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.02)
        still = proc.session_members(p.pid)
        if still or p.poll() is None:
            self.leftovers.append(f"{' '.join(map(str, p.args[:2]))}: {still or [p.pid]} survived SIGKILL")
        self.forget(p)
        return found

    def cleanup(self) -> None:
        # A second Ctrl-C / SIGTERM must not cut the cleanup short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            for p in list(self.procs):
                self.kill_session(p)
            for directory, exe in self.sweeps:
                for stamps in directory.glob("**/stamps"):
                    for pid in read_stamps(stamps):
                        kill_if_exe(pid, exe)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
