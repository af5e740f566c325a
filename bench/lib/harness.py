"""What a suite declares, and what it is given when it runs.

A suite is a module of bench/suites/ with:

- TITLE: one line, the heading of its part of the report;
- NEEDS: what must be built first: names of bench/c/ helpers, and
  "supervisord", "numpy" or "cargo";
- OPTIONS: its command-line options (Option), each with its default and
  the smaller value `--quick` uses;
- run(ctx) -> dict: measures, returns the raw numbers (JSON-able);
- report(r, header) -> list[str]: its markdown, from those numbers alone
  (r["options"] holds the options it ran with), so that a saved
  results.json can be reported again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import OUT
from .drover import StampDrover
from .procs import Procs


class Option(NamedTuple):
    flag: str
    type: type
    default: Any
    quick: Any
    help: str


# Options that mean the same in several suites.
RESTARTS = Option("--restarts", int, 200, 20, "core, methods: restarts (kills) measured per case, and "
                  "starts per baseline")
GAP_MS = Option("--gap-ms", int, 120, 120, "core, methods, python: pause between a replacement running and "
                "the next kill (above start_secs = 100ms: a child killed sooner is a failed start, which backs off)")


class Context:
    """What a suite's run() gets: the binaries, its options, its directory,
    the process registry, and where its progress and notes go."""

    def __init__(self, opts, drover: Path | None, bins: dict[str, Path], venv_bin: dict[str, Path | None],
                 procs: Procs, python: str):
        self.opts = opts
        self.drover = drover
        self.bins = bins
        self.supervisord = venv_bin["supervisord"] / "supervisord" if venv_bin.get("supervisord") else None
        self.numpy_python = venv_bin["numpy"] / "python" if venv_bin.get("numpy") else None
        self.procs = procs
        self.python = python
        self.began = time.monotonic()
        self.suite = ""
        self.notes: list[str] = []

    def enter(self, suite: str) -> None:
        """Starts a suite: a fresh directory target/bench/run/SUITE, no notes."""
        self.suite = suite
        self.notes = []
        self.root = OUT / "run" / suite
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)

    def dir(self, name: str) -> Path:
        """A fresh directory for one phase of the suite (configs, stamps, logs)."""
        d = self.root / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def stamp_drover(self, name: str, processes: int, **kw) -> StampDrover:
        """drover with one group of stamp children, in a fresh directory `name`."""
        return StampDrover(self.drover, self.procs, self.dir(name), self.bins["stamp"], processes, **kw)

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {self.suite}: {text}", flush=True)

    def note(self, text: str) -> None:
        """Something the report must point out (a sanity check that failed,
        a busy machine): printed now, listed under the suite's notes."""
        print(f"  note: {text}", flush=True)
        self.notes.append(text)
