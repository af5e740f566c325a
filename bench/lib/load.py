"""The machine a run is measured on: its description, its git state, and the
CPU that other processes use while the bench runs.

Other load skews every latency: the report says how busy the machine was
before and after the run and during each measurement that can see it.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from pathlib import Path

from . import ROOT, proc

QUIET_PCT = 5.0  # above this share of all CPUs used by others, the machine is busy


def own_cpu_seconds() -> float:
    """CPU seconds of the bench and of every descendant it has reaped."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class OthersCpu:
    """CPU used by *other* processes while something is measured: busy time
    from /proc/stat minus what the bench's own process tree used (getrusage
    of itself and of its reaped descendants: drover, its children, the
    probes, all reaped by the end of a measurement). In percent of all CPUs;
    /proc/stat counts in 10 ms ticks, and interrupts on behalf of the bench
    count as "other", so a quiet machine reads 0-3%."""

    def __init__(self):
        self.busy, _, self.total = proc.machine_cpu()
        self.own = own_cpu_seconds()

    def pct(self) -> float:
        busy, _, total = proc.machine_cpu()
        if total == self.total:
            return 0.0
        others = (busy - self.busy) / proc.CLK_TCK - (own_cpu_seconds() - self.own)
        return max(0.0, 100 * others / ((total - self.total) / proc.CLK_TCK))


def background_load(seconds: float = 1.0) -> dict:
    """CPU use of everything else on the machine while the bench sleeps, and
    the busiest processes over that time."""
    p0 = proc.cpu_by_process()
    b0, s0, t0 = proc.machine_cpu()
    time.sleep(seconds)
    b1, s1, t1 = proc.machine_cpu()
    p1 = proc.cpu_by_process()
    total = max(1, t1 - t0)
    used = sorted(
        ((ticks - p0[pid][1], name) for pid, (name, ticks) in p1.items()
         if pid in p0 and ticks > p0[pid][1] and pid != os.getpid()),
        reverse=True,
    )
    return {
        "busy_pct": 100 * (b1 - b0) / total,
        "steal_pct": 100 * (s1 - s0) / total,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "top": [f"{name} {100 * ticks / proc.CLK_TCK / seconds:.0f}% of a core" for ticks, name in used[:3]],
    }


def wait_quiet(max_wait: float, say=print) -> dict:
    """The background load, after giving a busy machine up to max_wait
    seconds to calm down (a build or a test run that is about to end)."""
    load = background_load()
    deadline = time.monotonic() + max_wait
    if load["busy_pct"] > QUIET_PCT and max_wait > 0:
        say(f"  the machine is busy ({load['busy_pct']:.0f}% CPU: {', '.join(load['top']) or '?'}); "
            f"waiting up to {max_wait:g} s for it to calm down")
        while load["busy_pct"] > QUIET_PCT and time.monotonic() < deadline:
            load = background_load()
    return load


def describe(load: dict) -> str:
    """One line: how busy, the load average and the busiest processes."""
    return (f"{load['busy_pct']:.1f}% (steal {load['steal_pct']:.1f}%), loadavg {' '.join(load['loadavg'])}"
            + (f" (busiest: {', '.join(load['top'])})" if load["top"] else ""))


def machine() -> dict:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nproc": os.cpu_count(),
        "model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile": f"{soft} (hard {hard})",
        "thp": thp_mode(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git_state(),
    }


def thp_mode() -> str:
    """Transparent huge pages: the kernel's setting, e.g. `enabled=madvise, defrag=madvise`."""
    base = Path("/sys/kernel/mm/transparent_hugepage")

    def chosen(name: str) -> str:
        try:
            text = (base / name).read_text()
        except OSError:
            return "?"
        return next((w[1:-1] for w in text.split() if w.startswith("[")), text.strip())

    return f"enabled={chosen('enabled')}, defrag={chosen('defrag')}"


def git_state() -> str:
    """The commit the working tree is at, and which files outside bench/ differ
    from it (drover's sources, wherever the workspace keeps them)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", ".", ":(exclude)bench"],
            capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "git state unknown"
    files = ", ".join(line[3:] for line in dirty[:5]) + (", …" if len(dirty) > 5 else "")
    return f"commit {head}" + (f" + uncommitted changes in {files}" if dirty else "")
