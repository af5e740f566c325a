"""The timestamps every measured child writes first thing when it runs.

A child (bench/c/stamp.c, or a Python worker in bench/workers/) appends
"<pid> <CLOCK_MONOTONIC ns>\\n" with one write(2), atomic for a line this
short, to a stamps file (or a FIFO). The bench reads t0 from the same clock
(time.monotonic_ns()), so a latency is a plain difference, without skew.
Waits block in inotify or poll(), never spin, so that the bench steals no
CPU from the process being measured.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import time
from pathlib import Path

from . import BenchError

IN_MODIFY = 0x00000002
_libc = ctypes.CDLL(None, use_errno=True)


def read_stamps(path: Path) -> dict[int, int]:
    """pid -> ns of every complete line of a stamps file."""
    out: dict[int, int] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for line in data.split(b"\n")[:-1]:  # the last piece is "" or incomplete
        pid, ns = line.split()
        out[int(pid)] = int(ns)
    return out


class Inotify:
    """A non-blocking inotify fd on one path: wait for a change without polling."""

    def __init__(self, path: Path, mask: int = IN_MODIFY):
        self.fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path}")
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)

    def wait(self, timeout_s: float) -> None:
        """Blocks until an event arrives (or the timeout), then drains the queue."""
        if self.poll.poll(max(0, int(timeout_s * 1000))):
            try:
                while os.read(self.fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)


class StampFile:
    """Reads a stamps file incrementally: (pid, ns) of every new complete line."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()
        self.offset = 0
        self.partial = b""
        self.all: dict[int, int] = {}
        self.ino = Inotify(path)

    def new(self) -> list[tuple[int, int]]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        out = []
        for line in lines:
            pid, ns = (int(x) for x in line.split())
            out.append((pid, ns))
            self.all[pid] = ns
        return out

    def wait_new(self, count: int, timeout: float, alive) -> list[tuple[int, int]]:
        """Waits until `count` new stamps have arrived; alive() raises when
        the process that should start them died."""
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            got += self.new()
            if len(got) >= count:
                return got
            alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:g} s: {len(got)} of {count} new stamps in {self.path}")
            self.ino.wait(min(left, 0.5))

    def close(self) -> None:
        self.ino.close()


class StampFifo:
    """A FIFO the Python workers write their stamps to. The bench holds a
    write end too, so that its reader never sees EOF between workers."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            path.unlink()
        os.mkfifo(path)
        self.r = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.w = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self.buf = b""

    def _fill(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.r], [], [], max(0.0, timeout_s))
        if ready:
            try:
                self.buf += os.read(self.r, 65536)
            except BlockingIOError:
                pass

    def _pop(self) -> tuple[int, int] | None:
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        pid, ns = map(int, line.split())
        return pid, ns

    def next(self, timeout_s: float, what: str, skip=()) -> tuple[int, int]:
        """The next stamp not from a pid in skip (the worker just killed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            item = self._pop()
            if item is not None:
                if item[0] in skip:
                    continue
                return item
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no stamp after {timeout_s:.0f} s: {what}")
            self._fill(left)

    def drain(self) -> list[tuple[int, int]]:
        """Every stamp already there, without waiting."""
        self._fill(0)
        got = []
        while (item := self._pop()) is not None:
            got.append(item)
        return got

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


def run_probe(probe: Path, args: list, timeout: float, env: dict | None = None) -> tuple[list[int], dict]:
    """Runs bench/c/probe.c: its latencies (ns, one a line on stdout) and its
    `probe-memory:` report on stderr (empty without PROBE_BALLAST_MIB)."""
    r = subprocess.run(
        [str(probe), *map(str, args)],
        env={**os.environ, **env} if env else None,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    if r.returncode != 0:
        raise BenchError(f"probe {' '.join(map(str, args[:2]))} failed: {r.stderr.strip()}")
    mem: dict = {}
    for line in r.stderr.splitlines():
        if line.startswith("probe-memory:"):
            for word in line.split()[1:]:
                k, _, v = word.partition("=")
                mem[k] = int(v) if v.lstrip("-").isdigit() else v
    return [int(x) for x in r.stdout.split()], mem
