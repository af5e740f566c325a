"""Readers of /proc: what the kernel says about one process or the machine.

Every reader of a process returns None (or an empty value) when the process
is gone, since the processes measured here come and go all the time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Stat(NamedTuple):
    """The fields of /proc/PID/stat the bench uses."""

    name: str
    state: str
    ppid: int
    session: int
    cpu_ticks: int  # utime + stime of all threads, in clock ticks
    start_time: int  # clock ticks since boot: tells a pid from a reused one


def stat(pid: int) -> Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2 :].split()
    name = text[text.index("(") + 1 : text.rindex(")")]
    return Stat(name, f[0], int(f[1]), int(f[3]), int(f[11]) + int(f[12]), int(f[19]))


def pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def children(ppid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is ppid, zombies included."""
    out = []
    for pid in pids():
        st = stat(pid)
        if st and st.ppid == ppid:
            out.append((pid, st.state))
    return sorted(out)


def live_children(ppid: int) -> list[int]:
    return [pid for pid, state in children(ppid) if state not in "ZX"]


def session_members(sid: int) -> list[int]:
    """Every live process of session sid (zombies have nothing left to kill)."""
    out = []
    for pid in pids():
        st = stat(pid)
        if st and st.session == sid and st.state not in "ZX":
            out.append(pid)
    return out


def same_process(pid: int, start_time: int | None) -> bool:
    """pid is still the live process that started at start_time."""
    st = stat(pid)
    return st is not None and st.state not in "ZX" and st.start_time == start_time


def status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status, values as text; {} when gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def status_kb(pid: int, key: str) -> int:
    """One kB field of /proc/PID/status (VmRSS, RssAnon, VmHWM, ...); 0 when absent."""
    value = status(pid).get(key)
    return int(value.split()[0]) if value else 0


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup (Rss, Pss, AnonHugePages, ...)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


def memory(pid: int) -> dict:
    """A supervisor's memory: VmRSS, RssAnon, RssFile, PSS and huge pages (kB)."""
    st = status(pid)
    rollup = smaps_rollup(pid)

    def kb(name: str) -> int:
        return int(st[name].split()[0])

    return {
        "rss_kb": kb("VmRSS"),
        "anon_kb": kb("RssAnon"),
        "file_kb": kb("RssFile"),
        "pss_kb": rollup.get("Pss"),
        # Transparent huge pages: a fork copies one entry per 2 MiB of them
        # instead of 512, so they hide what a supervisor's size costs a fork.
        "anon_huge_kb": rollup.get("AnonHugePages"),
        "threads": int(st["Threads"]),
    }


def context_switches(pid: int) -> int:
    """voluntary + nonvoluntary context switches summed over every thread:
    each time a thread sleeps and is woken again it counts one."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # a thread that just ended
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    """The first 80 characters of a process's command line."""
    return b" ".join(argv(pid)).decode(errors="replace")[:80] or "?"


def environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def machine_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of all CPUs from /proc/stat; busy
    leaves steal out (time the hypervisor gave to other guests)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq, steal, total


def cpu_by_process() -> dict[int, tuple[str, int]]:
    """pid -> (name, CPU ticks so far) of every process."""
    out = {}
    for pid in pids():
        st = stat(pid)
        if st:
            out[pid] = (st.name, st.cpu_ticks)
    return out
