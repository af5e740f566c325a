#!/usr/bin/env python3
"""drover's Python function workers against Python's own multiprocessing.

Run it through `bash bench/python/run.sh`, which builds drover first; see the
"Python function workers" section of bench/README.md for what each number
means. Standard library only.

Phases, all with the heavy module (bench/python/heavy.py: ~300 ms import,
~200 MiB resident):
  1. anchors: bare os.fork() (from a process that imported heavy, and from
     an empty one), the restart floor (kill + waitpid + fork) and a double
     fork as drover's template does it (baselines.py);
  2. Python's multiprocessing, start() -> first result, per start method
     (baselines.py mp), and the same with a light target for reference;
  3. drover restart latency per method: one worker, start_secs = "100ms",
     restart = "always"; SIGKILL -> the replacement's timestamp;
  4. drover with 8 workers per method: PSS from /proc/PID/smaps_rollup;
  5. optionally the same restarts with a numpy target (a venv made by run.sh).

Everything it creates lives under target/bench/python/. Every process it
starts runs in its own session; at the end (success, error, Ctrl-C or
SIGTERM) drover is asked to shut down and then every process still in one of
those sessions is SIGKILLed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = ROOT / "target" / "bench" / "python"
RUN = OUT / "run"

# Python's multiprocessing, start() -> first result, as quoted in the issue
# for this machine (light target).
ISSUE_MP = {"fork": 2.2, "forkserver+preload": 5.4, "forkserver": 12.0, "spawn": 37.0}
ISSUE_NUMPY = {"spawn": 95.0, "fork": 3.3}

# drover variants: name -> (start_method, preload the target?)
VARIANTS = {
    "spawn": ("spawn", False),
    "fork": ("fork", False),
    "forkserver+preload": ("forkserver", True),
    "forkserver": ("forkserver", False),
}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def session_members(sid: int) -> list[int]:
    """PIDs of every process whose session is `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def children_of(ppid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == ppid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def zombie(pid: int) -> bool:
    """True for a zombie (or a process that is gone): nothing left to kill."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def ppid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


class Procs:
    """Every process the bench starts, each the leader of its own session."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.leftovers: list[str] = []

    def start(self, argv, **kw) -> subprocess.Popen:
        p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill_session(self, p: subprocess.Popen, what: str) -> None:
        """SIGKILLs everything left in p's session (p included)."""
        for _ in range(3):
            members = session_members(p.pid)
            if not members:
                break
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if p.poll() is None:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.05)
        still = [pid for pid in session_members(p.pid) if not zombie(pid)]
        if still:
            self.leftovers.append(f"{what}: {still} survived SIGKILL")

    def cleanup(self) -> None:
        # A second Ctrl-C / SIGTERM must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for p in self.procs:
            self.kill_session(p, " ".join(map(str, p.args[:3])))
        self.procs.clear()


PROCS = Procs()


# ---------------------------------------------------------------- stamps


class Stamps:
    """The FIFO every worker writes "<pid> <ns>\\n" to (one write(2), so
    lines never interleave). The bench holds a write end too, so readers never
    see EOF between workers. Reading blocks in poll(), never spins."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            path.unlink()
        os.mkfifo(path)
        self.r = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.w = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self.buf = b""
        self.seen: list[tuple[int, int]] = []

    def _fill(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.r], [], [], max(0.0, timeout_s))
        if ready:
            try:
                self.buf += os.read(self.r, 65536)
            except BlockingIOError:
                pass

    def _pop(self):
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        pid, ns = map(int, line.split())
        self.seen.append((pid, ns))
        return pid, ns

    def next(self, timeout_s: float, what: str, skip=()) -> tuple[int, int]:
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


# ---------------------------------------------------------------- memory, stats


def smaps(pid: int) -> dict[str, int]:
    """kB fields of /proc/PID/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            out[parts[0][:-1]] = int(parts[1])
    return out


def nearest_rank(sorted_xs: list[float], p: float) -> float:
    return sorted_xs[max(1, math.ceil(p * len(sorted_xs))) - 1]


def summary(ns: list[int]) -> dict:
    ms = sorted(x / 1e6 for x in ns)
    return {
        "n": len(ms),
        "median": statistics.median(ms),
        "p90": nearest_rank(ms, 0.90),
        "min": ms[0],
        "max": ms[-1],
    }


def fmt_ms(x) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_mb(kb) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_x(r) -> str:
    return "–" if r is None else (f"{r:.1f}×" if r >= 10 else f"{r:.2f}×")


# ---------------------------------------------------------------- load


def cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq + steal, total


def own_cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def busy_pct(seconds: float = 1.0) -> float:
    b0, t0 = cpu_times()
    time.sleep(seconds)
    b1, t1 = cpu_times()
    return 100 * (b1 - b0) / max(1, t1 - t0)


class OthersCpu:
    """CPU used by other processes during the run: /proc/stat busy time minus
    the bench's own tree (getrusage of itself and of its reaped descendants:
    drover and everything drover reaped, the baselines processes). In percent
    of all CPUs; a quiet machine reads a few %."""

    def __init__(self):
        self.busy, self.total = cpu_times()
        self.own = own_cpu_seconds()

    def pct(self) -> float:
        busy, total = cpu_times()
        hz = os.sysconf("SC_CLK_TCK")
        if total == self.total:
            return 0.0
        others = (busy - self.busy) / hz - (own_cpu_seconds() - self.own)
        return max(0.0, 100 * others / ((total - self.total) / hz))


def wait_quiet(max_wait: float, threshold: float) -> tuple[float, float]:
    """Waits (up to max_wait s) until the machine is below threshold % busy.
    Returns (busy % at the start, busy % when the bench starts)."""
    first = busy_pct()
    cur = first
    deadline = time.monotonic() + max_wait
    while cur > threshold and time.monotonic() < deadline:
        log(f"  machine {cur:.0f}% busy (others' work); waiting for it to calm down ...")
        time.sleep(4)
        cur = busy_pct()
    return first, cur


# ---------------------------------------------------------------- drover


class Drover:
    """One `drover run` with one group `w` of `processes` Python workers."""

    def __init__(self, args, phase: str, variant: str, processes: int, *, module="heavy", python=None, extra_env=None):
        self.args = args
        self.dir = RUN / phase
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.socket = self.dir / "drover.sock"
        self.stamps = Stamps(self.dir / "stamps.fifo")
        method, preload = VARIANTS[variant]
        env = {"STAMP_PATH": str(self.stamps.path)}
        env.update(extra_env or {})
        lines = [
            "[group.w]",
            f'python = "{module}:main"',
            f"python_executable = {json.dumps(python or args.python)}",
            f'start_method = "{method}"',
        ]
        if preload:
            lines.append(f'preload = ["{module}"]')
        lines += [
            f"processes = {processes}",
            'start_secs = "100ms"',
            'restart = "always"',
            'stop_timeout = "5s"',
            f"cwd = {json.dumps(str(HERE))}",
            "env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }",
        ]
        # The config in a directory of its own: drover watches the config's
        # directory, and the stamps FIFO and the log files written next to
        # it would wake its watcher thread on every restart.
        (self.dir / "config").mkdir()
        self.config = self.dir / "config" / "drover.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.stdout = open(self.dir / "drover.stdout", "wb")
        self.stderr = open(self.dir / "drover.stderr", "wb")
        self.t_launch = time.monotonic_ns()
        self.proc = PROCS.start(
            [args.drover, "run", self.config, "--socket", self.socket], stdout=self.stdout, stderr=self.stderr
        )
        self.pid = self.proc.pid

    def tail(self) -> str:
        self.stderr.flush()
        text = (self.dir / "drover.stderr").read_text(errors="replace").splitlines()
        return "\n".join(text[-15:])

    def next_stamp(self, what: str, timeout_s: float, skip=()) -> tuple[int, int]:
        try:
            return self.stamps.next(timeout_s, what, skip)
        except BenchError as e:
            raise BenchError(f"{e}\n--- drover stderr ({self.dir}):\n{self.tail()}") from None

    def ctl(self, *cmd, timeout=10) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [str(self.args.drover), *cmd, "--socket", str(self.socket)],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"`drover {' '.join(cmd)}` got no answer within {timeout} s\n{self.tail()}") from None

    def status(self) -> dict:
        r = self.ctl("status", "--json")
        if r.returncode != 0:
            raise BenchError(f"drover status failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def children(self) -> list[dict]:
        return self.status()["groups"][0]["children"]

    def wait_socket(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise BenchError(f"drover exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError("drover's control socket did not appear")
            time.sleep(0.002)

    def stop(self) -> dict:
        """Shuts drover down; returns {exit, secs, leftovers}."""
        info = {"exit": None, "secs": None}
        if self.proc.poll() is None:
            t0 = time.monotonic()
            try:
                self.ctl("shutdown", timeout=10)
                info["exit"] = self.proc.wait(15)
                info["secs"] = time.monotonic() - t0
            except (subprocess.TimeoutExpired, BenchError):
                info["exit"] = "no exit within 25 s of `drover shutdown`"
        else:
            info["exit"] = self.proc.returncode
        left = [pid for pid in session_members(self.pid) if not zombie(pid)]
        info["leftovers"] = left
        PROCS.kill_session(self.proc, f"drover {self.dir.name}")
        PROCS.procs.remove(self.proc)
        self.stamps.close()
        self.stdout.close()
        self.stderr.close()
        return info


def helper_pids(d: Drover, workers: set[int]) -> list[int]:
    """drover's children that are not workers: the template / server."""
    return [pid for pid in children_of(d.pid) if pid not in workers]


def restart_phase(args, variant: str, kills: int, starts: int, *, module="heavy", python=None, tag="") -> dict:
    phase = f"restart{tag}-{variant.replace('+', '-')}"
    log(f"drover restart latency: {variant}{tag} ({kills} kills, {starts} stop/starts)")
    d = Drover(args, phase, variant, 1, module=module, python=python)
    res: dict = {"variant": variant, "notes": []}
    try:
        pid, ns = d.next_stamp(f"{variant}: first start", 120)
        res["first_start_ms"] = (ns - d.t_launch) / 1e6
        cur = pid
        helpers_before = helper_pids(d, {cur})
        lat = []
        for i in range(kills):
            time.sleep(args.gap_ms / 1000)
            late = d.stamps.drain()
            if late:
                res["notes"].append(f"unexpected stamps before kill {i}: {late}")
                cur = late[-1][0]
            t0 = time.monotonic_ns()
            os.kill(cur, signal.SIGKILL)
            pid, ns = d.next_stamp(f"{variant}: replacement after kill {i + 1}", 60, skip={cur})
            lat.append(ns - t0)
            cur = pid
        res["restart"] = summary(lat)
        res["raw_ms"] = [x / 1e6 for x in lat]
        # sanity: drover is the worker's parent, counted every restart, right env
        time.sleep(0.2)
        kids = d.children()
        if kids[0]["pid"] != cur:
            res["notes"].append(f"status lists pid {kids[0]['pid']}, the last stamp came from {cur}")
        if kids[0]["restarts"] != kills:
            res["notes"].append(f"status counts {kids[0]['restarts']} restarts for {kills} kills")
        if ppid_of(cur) != d.pid:
            res["notes"].append(f"the worker's parent is {ppid_of(cur)}, not drover ({d.pid})")
        environ = Path(f"/proc/{cur}/environ").read_bytes().split(b"\0")
        want = f"DROVER_START_METHOD={VARIANTS[variant][0]}".encode()
        if want not in environ:
            res["notes"].append(f"the worker has no {want.decode()}")
        res["worker_pss_kb"] = smaps(cur).get("Pss")
        helpers = helper_pids(d, {cur})
        if helpers != helpers_before:
            res["notes"].append(f"drover's other children changed during the kills: {helpers_before} -> {helpers} (template replaced?)")
        res["helper_pss_kb"] = sum(smaps(p).get("Pss", 0) for p in helpers) if helpers else None

        # Starts, without a kill: `drover stop w`, wait until the worker is
        # gone, then t0 -> `drover start w` -> the new worker's stamp. The
        # CLI's own cost is the idle `drover status` round trip.
        rtt = []
        for _ in range(5):
            t = time.monotonic_ns()
            d.ctl("status")
            rtt.append(time.monotonic_ns() - t)
        res["cli_rtt"] = summary(rtt)
        lat = []
        for i in range(starts):
            r = d.ctl("stop", "w")
            if r.returncode != 0:
                raise BenchError(f"drover stop w failed: {r.stderr.strip()}")
            deadline = time.monotonic() + 15
            while Path(f"/proc/{cur}").exists():
                if time.monotonic() > deadline:
                    raise BenchError(f"{variant}: worker {cur} still there 15 s after `drover stop w`")
                time.sleep(0.001)
            time.sleep(args.gap_ms / 1000)
            t0 = time.monotonic_ns()
            r = d.ctl("start", "w")
            if r.returncode != 0:
                raise BenchError(f"drover start w failed: {r.stderr.strip()}")
            cur, ns = d.next_stamp(f"{variant}: worker after `drover start w` {i + 1}", 60)
            lat.append(ns - t0)
        res["start"] = summary(lat)
        res["start_raw_ms"] = [x / 1e6 for x in lat]
        if helper_pids(d, {cur}) != helpers_before:
            res["notes"].append(f"drover's other children changed during stop/start: {helpers_before} -> {helper_pids(d, {cur})}")
    finally:
        res["stop"] = d.stop()
    return res


def memory_phase(args, variant: str, n: int) -> dict:
    phase = f"pss-{variant.replace('+', '-')}"
    log(f"drover {n} workers: {variant}")
    d = Drover(args, phase, variant, n)
    res: dict = {"variant": variant, "notes": []}
    try:
        # One status call issued as soon as the socket exists: its round
        # trip shows whether drover's loop answers while the group starts.
        d.wait_socket()
        t = time.monotonic_ns()
        st = d.ctl("status", "--json", timeout=300)
        res["status_answered_ms"] = (time.monotonic_ns() - d.t_launch) / 1e6
        res["status_asked_ms"] = (t - d.t_launch) / 1e6
        if st.returncode != 0:
            res["notes"].append(f"status during start failed: {st.stderr.strip()}")
        pids = set()
        stamps = []
        while len(pids) < n:
            pid, ns = d.next_stamp(f"{variant}: {n} workers running (have {len(pids)})", 120)
            pids.add(pid)
            stamps.append(ns)
        res["all_running_ms"] = (max(stamps) - d.t_launch) / 1e6
        res["first_running_ms"] = (min(stamps) - d.t_launch) / 1e6
        time.sleep(args.settle)
        listed = {c["pid"] for c in d.children()}
        if listed != pids:
            res["notes"].append(f"status lists {sorted(listed)}, stamps came from {sorted(pids)}")
        mem = {pid: smaps(pid) for pid in pids}
        res["workers_pss_kb"] = sum(m["Pss"] for m in mem.values())
        res["workers_rss_kb"] = sum(m["Rss"] for m in mem.values())
        res["workers_private_kb"] = sum(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for m in mem.values())
        helpers = helper_pids(d, pids)
        res["helpers"] = len(helpers)
        res["helper_pss_kb"] = sum(smaps(p)["Pss"] for p in helpers) if helpers else 0
        res["drover_pss_kb"] = smaps(d.pid)["Pss"]
        late = d.stamps.drain()
        if late:
            res["notes"].append(f"extra stamps (restarts?) while measuring: {late}")
    finally:
        res["stop"] = d.stop()
    return res


# ---------------------------------------------------------------- Python side


def baseline(args, label: str, argv: list[str], python=None, timeout=240) -> dict:
    log(f"python: {label}")
    p = PROCS.start([python or args.python, HERE / "baselines.py", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{label}: no answer within {timeout} s") from None
    finally:
        PROCS.kill_session(p, label)
        PROCS.procs.remove(p)
    if p.returncode != 0:
        raise BenchError(f"{label} failed ({p.returncode}):\n{err.decode(errors='replace')[-2000:]}")
    data = json.loads(out)
    res = {
        "label": label,
        "to_child": summary([s[0] for s in data["samples"]]),
        "first_to_child_ms": data["first"][0] / 1e6,
    }
    if data["samples"][0][1] is not None:
        res["to_result"] = summary([s[1] for s in data["samples"]])
        res["first_to_result_ms"] = data["first"][1] / 1e6
    return res


MP_VARIANTS = {  # name -> extra argv of `baselines.py mp`
    "spawn": ["spawn"],
    "fork": ["fork"],
    "forkserver+preload": ["forkserver", "preload"],
    "forkserver": ["forkserver"],
}


def mp_phase(args, module: str, variants, runs_fast: int, runs_slow: int, python=None) -> dict:
    out = {}
    for v in variants:
        extra = MP_VARIANTS[v]
        slow = module != "light" and v in ("spawn", "forkserver")
        runs = runs_slow if slow else runs_fast
        argv = ["mp", extra[0], module, str(runs), *extra[1:]]
        out[v] = baseline(args, f"multiprocessing {v}, target {module} ({runs} starts)", argv, python=python)
    return out


# ---------------------------------------------------------------- report


def git(*cmd) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def header(args, load) -> list[str]:
    dirty = git("status", "--porcelain", "--", "src")
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    pyver = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True).stdout.strip()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip() if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists() else "?"
    lines = [
        "# drover: Python function workers vs Python's multiprocessing",
        "",
        f"- machine: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, THP `{thp}`",
        f"- Python {pyver} (`{args.python}`); drover `{args.drover_label}` at commit {git('rev-parse', '--short', 'HEAD')}"
        + (" **with uncommitted changes in src/**" if dirty else ""),
        f"- heavy module: import sleeps {args.sleep_ms} ms, then holds {args.mib} MiB touched (bytearray, 4 KiB pages)",
        f"- other load: {load['before']:.0f}% of the CPUs busy before the run"
        + (f" (waited; {load['start']:.0f}% at start)" if load["start"] != load["before"] else "")
        + f", {load['during']:.0f}% used by other processes during it, {load['after']:.0f}% after;"
        + f" load average before {load['loadavg_before']}, after {load['loadavg_after']}",
    ]
    if max(load["during"], load["start"]) > 15:
        lines.append(
            f"- **WARNING: the machine was busy ({load['during']:.0f}% of the CPUs used by others during the run);"
            " absolute numbers are inflated and noisy, re-run on a quiet machine.**"
        )
    lines.append(f"- runtime: {load['runtime_s']:.0f} s")
    return lines


def at_most(r: float | None, target: float) -> str:
    if r is None:
        return "–"
    return "met" if r <= target else f"MISSED (+{100 * (r / target - 1):.0f}%)"


def at_least(r: float | None, target: float) -> str:
    if r is None:
        return "–"
    return "met" if r >= target else f"MISSED (−{100 * (1 - r / target):.0f}%)"


def report(args, R: dict, load: dict) -> str:
    L = header(args, load)
    med = lambda d, k="restart": d[k]["median"] if d and k in d else None  # noqa: E731
    A = R["anchors"]
    bare = A["fork heavy"]["to_child"]["median"]
    floor = A["refork heavy"]["to_child"]["median"]
    one = R["restart"]["spawn"].get("worker_pss_kb")
    W = args.workers

    L += ["", "## drover: restart and start latency per method (heavy module)", ""]
    L += [
        "*restart*: SIGKILL of the running worker → its replacement's first line (one worker, `start_secs = \"100ms\"`, "
        "`restart = \"always\"`). *start*: `drover start w` issued (after `drover stop w` and the worker gone) → the "
        "worker's first line; includes the CLI's own round trip (*cli*: an idle `drover status`). *first start*: "
        "`drover run` launched → the first worker running, i.e. with the template's / server's interpreter start and "
        "imports, which happen once.",
        "",
        "| method | restart n | median ms | p90 ms | max ms | start n | median ms | p90 ms | first start ms | cli ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        r = R["restart"][v]
        s, t = r["restart"], r["start"]
        L.append(
            f"| {v} | {s['n']} | {fmt_ms(s['median'])} | {fmt_ms(s['p90'])} | {fmt_ms(s['max'])} "
            f"| {t['n']} | {fmt_ms(t['median'])} | {fmt_ms(t['p90'])} | {fmt_ms(r['first_start_ms'])} | {fmt_ms(r['cli_rtt']['median'])} |"
        )

    L += ["", "## Anchors (Python, same heavy module, same run)", ""]
    L += ["| anchor | n | median ms | p90 ms | min | max |", "|---|---:|---:|---:|---:|---:|"]
    names = {
        "fork heavy": "bare os.fork() of the process that imported heavy → child running",
        "refork heavy": "restart floor: kill + waitpid + os.fork() (heavy parent) → child running",
        "dfork heavy": "double fork as drover's template does (heavy parent) → grandchild running",
        "fork light": "bare os.fork() of an empty interpreter → child running",
    }
    for k, name in names.items():
        s = A[k]["to_child"]
        L.append(f"| {name} | {s['n']} | {fmt_ms(s['median'])} | {fmt_ms(s['p90'])} | {fmt_ms(s['min'])} | {fmt_ms(s['max'])} |")

    L += ["", "## Python's multiprocessing: Process.start() → child running / → first result received", ""]
    L += [
        "Target `heavy.mp_child` (the parent imported heavy); forkserver+preload is `set_forkserver_preload([\"heavy\"])`, "
        "forkserver keeps the default preload (`__main__`, the bench script, which does not import heavy). *first*: the "
        "cold first start (forkserver: includes starting the server and its preload). The light rows use a target that "
        "imports nothing: the setting of the issue's reference figures, to check this run against them.",
        "",
        "| target | method | n | → child median ms | → result median ms | → result p90 ms | first → result ms | issue's figure |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target in ("heavy", "light"):
        for v, r in R["mp"][target].items():
            ref = f"≈ {ISSUE_MP[v]} ms" if target == "light" else ""
            L.append(
                f"| {target} | {v} | {r['to_result']['n']} | {fmt_ms(r['to_child']['median'])} | {fmt_ms(r['to_result']['median'])} "
                f"| {fmt_ms(r['to_result']['p90'])} | {fmt_ms(r['first_to_result_ms'])} | {ref} |"
            )

    L += ["", "## drover against Python's multiprocessing and a bare fork (medians, heavy module)", ""]
    L += [
        "Like for like: drover's *start* against multiprocessing's start() → child running and against a bare fork; "
        "drover's *restart* (which also contains the kill, the teardown of the dead worker and its reaping) against the "
        "restart floor, and against multiprocessing's start() → result (the issue's wording).",
        "",
        "| method | drover start | mp → child | ÷ | ÷ bare fork | drover restart | mp → result | ÷ | ÷ restart floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        st, rs = med(R["restart"][v], "start"), med(R["restart"][v])
        m = R["mp"]["heavy"][v]
        L.append(
            f"| {v} | {fmt_ms(st)} | {fmt_ms(m['to_child']['median'])} | {fmt_x(ratio(st, m['to_child']['median']))} "
            f"| {fmt_x(ratio(st, bare))} | {fmt_ms(rs)} | {fmt_ms(m['to_result']['median'])} "
            f"| {fmt_x(ratio(rs, m['to_result']['median']))} | {fmt_x(ratio(rs, floor))} |"
        )

    L += ["", f"## Memory: {W} workers per method (PSS from /proc/PID/smaps_rollup)", ""]
    L += [
        f"*one spawned worker* (alone, from the restart phase): {fmt_mb(one)} MB PSS; {W} × that = "
        f"{fmt_mb(one * W if one else None)} MB. *template/server*: drover's children that are not workers. Times are "
        "from `drover run` launched. *status*: one `drover status` asked as soon as the control socket exists, and when "
        "its answer came: an answer only after the workers run means drover's loop was blocked while the group started.",
        "",
        f"| method | {W} workers PSS MB | template PSS MB | workers + template MB | ÷ {W}× one spawned | workers RSS MB "
        f"| first running ms | all {W} running ms | status asked → answered ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        m = R["memory"][v]
        tot = m["workers_pss_kb"] + m["helper_pss_kb"]
        L.append(
            f"| {v} | {fmt_mb(m['workers_pss_kb'])} | {fmt_mb(m['helper_pss_kb']) if m['helpers'] else '–'} | {fmt_mb(tot)} "
            f"| {fmt_x(ratio(m['workers_pss_kb'], one * W if one else None))} | {fmt_mb(m['workers_rss_kb'])} "
            f"| {fmt_ms(m['first_running_ms'])} | {fmt_ms(m['all_running_ms'])} "
            f"| {fmt_ms(m['status_asked_ms'])} → {fmt_ms(m['status_answered_ms'])} |"
        )

    if R.get("numpy"):
        N = R["numpy"]
        nb = N["fork"]["to_child"]["median"]
        L += ["", "## numpy target (`import numpy`, nothing else heavy)", ""]
        L += [
            f"numpy {N['version']} in `{args.numpy_python}`. Same measurements as above; bare fork: from a process that "
            f"imported numpy → child running: {fmt_ms(nb)} ms.",
            "",
            "| method | drover restart ms | drover start ms | first start ms | mp → child ms | mp → result ms | start ÷ mp → child | restart ÷ mp → result | start ÷ bare fork | issue's mp figure |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for v in ("spawn", "fork"):
            d, m = N["restart"][v], N["mp"][v]
            L.append(
                f"| {v} | {fmt_ms(med(d))} | {fmt_ms(med(d, 'start'))} | {fmt_ms(d['first_start_ms'])} "
                f"| {fmt_ms(m['to_child']['median'])} | {fmt_ms(m['to_result']['median'])} "
                f"| {fmt_x(ratio(med(d, 'start'), m['to_child']['median']))} | {fmt_x(ratio(med(d), m['to_result']['median']))} "
                f"| {fmt_x(ratio(med(d, 'start'), nb)) if v == 'fork' else '–'} | ≈ {ISSUE_NUMPY[v]} ms |"
            )
        L += ["", f"drover spawn ÷ drover fork, restarts: {fmt_x(ratio(med(N['restart']['spawn']), med(N['restart']['fork'])))}."]
    elif args.numpy_skipped:
        L += ["", f"numpy variant skipped: {args.numpy_skipped}"]

    # goals
    sp, sps = med(R["restart"]["spawn"]), med(R["restart"]["spawn"], "start")
    L += ["", "## Goals (the issue; medians)", "", "| goal | value | target | verdict |", "|---|---:|---:|---|"]
    for v in ("fork", "forkserver+preload", "forkserver"):
        goal = v != "forkserver"  # without preload: shown, not a goal (see below)
        r = ratio(sp, med(R["restart"][v]))
        L.append(f"| {v}: spawn restart ÷ {v} restart | {fmt_x(r)} | ≥ 20× | {at_least(r, 20) if goal else 'not a goal'} |")
        r = ratio(sps, med(R["restart"][v], "start"))
        L.append(f"| {v}: spawn start ÷ {v} start | {fmt_x(r)} | ≥ 20× | {at_least(r, 20) if goal else 'not a goal'} |")
    for v in VARIANTS:
        m = R["mp"]["heavy"][v]
        r = ratio(med(R["restart"][v], "start"), m["to_child"]["median"])
        L.append(f"| {v}: drover start ÷ mp start → child | {fmt_x(r)} | ≤ 1× | {at_most(r, 1)} |")
        r = ratio(med(R["restart"][v]), m["to_result"]["median"])
        L.append(f"| {v}: drover restart ÷ mp start → result | {fmt_x(r)} | ≤ 1× | {at_most(r, 1)} |")
    for v in ("fork", "forkserver+preload"):
        r = ratio(med(R["restart"][v], "start"), bare)
        L.append(f"| {v}: drover start ÷ bare fork | {fmt_x(r)} | ≤ 2× | {at_most(r, 2)} |")
        r = ratio(med(R["restart"][v]), floor)
        L.append(f"| {v}: drover restart ÷ restart floor | {fmt_x(r)} | ≤ 2× | {at_most(r, 2)} |")
    for v in ("fork", "forkserver+preload"):
        m = R["memory"][v]
        r = ratio(m["workers_pss_kb"], one * W if one else None)
        L.append(f"| {v}: {W} workers' PSS ÷ {W}× one spawned worker | {fmt_x(r)} | ≤ 0.5× (\"well under\") | {at_most(r, 0.5)} |")
        r = ratio(m["workers_pss_kb"] + m["helper_pss_kb"], one * W if one else None)
        L.append(f"| {v}: the same with the template | {fmt_x(r)} | ≤ 0.5× | {at_most(r, 0.5)} |")
    L += [
        "",
        "forkserver without preload imports the heavy module in every worker, as Python's does: the 20× goal is about "
        "forked and forkserver-with-preload starts; its rows show that it costs what spawn costs minus one interpreter "
        "start.",
    ]

    notes = []
    for v in VARIANTS:
        notes += [f"restart {v}: {n}" for n in R["restart"][v]["notes"]]
        notes += [f"memory {v}: {n}" for n in R["memory"][v]["notes"]]
    for v, r in (R.get("numpy") or {}).get("restart", {}).items():
        notes += [f"numpy restart {v}: {n}" for n in r["notes"]]
    for phase, stop in R["stops"]:
        if stop["exit"] != 0:
            notes.append(f"{phase}: drover's exit status after shutdown was {stop['exit']}")
        if stop["leftovers"]:
            notes.append(f"{phase}: processes left in drover's session after it exited: {stop['leftovers']} (SIGKILLed)")
    notes += PROCS.leftovers
    if notes:
        L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- main


def run(args) -> dict:
    R: dict = {"restart": {}, "memory": {}, "mp": {}, "anchors": {}, "stops": []}
    runs = args.fork_runs
    R["anchors"]["fork heavy"] = baseline(args, "bare fork, heavy parent", ["fork", "heavy", str(runs)])
    R["anchors"]["refork heavy"] = baseline(args, "restart floor, heavy parent", ["refork", "heavy", str(runs)])
    R["anchors"]["dfork heavy"] = baseline(args, "double fork, heavy parent", ["dfork", "heavy", str(runs)])
    R["anchors"]["fork light"] = baseline(args, "bare fork, empty parent", ["fork", "-", str(runs)])

    # Each method's multiprocessing run right before drover's, so that a
    # change in background load hits both sides of a comparison alike.
    R["mp"]["heavy"] = {}
    for v in VARIANTS:
        R["mp"]["heavy"].update(mp_phase(args, "heavy", [v], args.mp_runs, args.mp_slow_runs))
        fast = v in ("fork", "forkserver+preload")
        r = restart_phase(args, v, args.kills if fast else args.slow_kills, args.starts if fast else args.slow_starts)
        R["restart"][v] = r
        R["stops"].append((f"restart {v}", r["stop"]))
    R["mp"]["light"] = mp_phase(args, "light", VARIANTS, args.mp_runs, args.mp_runs)
    for v in VARIANTS:
        m = memory_phase(args, v, args.workers)
        R["memory"][v] = m
        R["stops"].append((f"memory {v}", m["stop"]))

    if args.numpy_python:
        ver = subprocess.run([args.numpy_python, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True)
        if ver.returncode != 0:
            args.numpy_skipped = f"`{args.numpy_python}` cannot import numpy"
        else:
            N = {"version": ver.stdout.strip(), "restart": {}, "mp": {}}
            for v in ("spawn", "fork"):
                fast = v == "fork"
                N["restart"][v] = restart_phase(
                    args, v, args.kills if fast else args.slow_kills, args.starts if fast else args.slow_starts,
                    module="npwork", python=args.numpy_python, tag="-numpy",
                )
                R["stops"].append((f"restart {v} numpy", N["restart"][v]["stop"]))
                N["mp"][v] = baseline(
                    args, f"multiprocessing {v}, target npwork", ["mp", v, "npwork", str(args.mp_runs)], python=args.numpy_python
                )
            N["fork"] = baseline(args, "bare fork, numpy parent", ["fork", "npwork", str(runs)], python=args.numpy_python)
            R["numpy"] = N
    return R


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drover", default=str(ROOT / "target" / "release" / "drover"))
    ap.add_argument("--drover-label", default=None, help="how the report names the binary")
    ap.add_argument("--python", default=sys.executable, help="interpreter for workers and baselines (a real path, not a shim)")
    ap.add_argument("--numpy-python", default=None, help="an interpreter that has numpy: enables the numpy variant")
    ap.add_argument("--numpy-skipped", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kills", type=int, default=30, help="restarts measured for fork / forkserver+preload")
    ap.add_argument("--slow-kills", type=int, default=12, help="restarts measured for spawn / forkserver without preload")
    ap.add_argument("--starts", type=int, default=15, help="`drover stop` / `drover start` cycles, fork / forkserver+preload")
    ap.add_argument("--slow-starts", type=int, default=5, help="the same for spawn / forkserver without preload")
    ap.add_argument("--mp-runs", type=int, default=20, help="multiprocessing starts per fast method")
    ap.add_argument("--mp-slow-runs", type=int, default=10, help="multiprocessing starts, heavy spawn / forkserver")
    ap.add_argument("--fork-runs", type=int, default=30, help="bare fork samples")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--gap-ms", type=int, default=120, help="pause between a replacement's stamp and the next kill (above start_secs = 100ms: a worker killed sooner is a failed start, which backs off)")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds between all workers running and reading PSS")
    ap.add_argument("--sleep-ms", type=int, default=300, help="the heavy import's sleep")
    ap.add_argument("--mib", type=int, default=200, help="the heavy module's ballast")
    ap.add_argument("--quiet-wait", type=float, default=60, help="wait up to this long for a quiet machine")
    ap.add_argument("--quiet-pct", type=float, default=10, help="busy %% of all CPUs that counts as quiet")
    args = ap.parse_args()
    args.drover_label = args.drover_label or os.path.relpath(args.drover, ROOT)

    os.environ["HEAVY_SLEEP_MS"] = str(args.sleep_ms)
    os.environ["HEAVY_MIB"] = str(args.mib)
    # No __pycache__ next to bench/python's sources. (Not PYTHONPYCACHEPREFIX:
    # with bytecode writing off, as here, a prefix makes every interpreter
    # compile the whole standard library again: 150 ms instead of 30 ms per
    # start.) The stdlib's and numpy's own .pyc files are used as usual.
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    os.environ.pop("PYTHONPATH", None)
    OUT.mkdir(parents=True, exist_ok=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    try:
        return measure(args)
    except KeyboardInterrupt as e:
        log(f"bench/python: interrupted ({e or 'Ctrl-C'}); every process it started is stopped")
        PROCS.cleanup()
        return 130


def measure(args) -> int:
    t_start = time.monotonic()
    load = {"loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    load["before"], load["start"] = wait_quiet(args.quiet_wait, args.quiet_pct)
    others = OthersCpu()
    try:
        R = run(args)
        load["during"] = others.pct()
    except BenchError as e:
        log(f"bench/python: FAILED: {e}")
        return 1
    finally:
        PROCS.cleanup()
    load["after"] = busy_pct()
    load["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    load["runtime_s"] = time.monotonic() - t_start
    text = report(args, R, load)
    (OUT / "python.md").write_text(text)
    (OUT / "python.json").write_text(json.dumps({"load": load, "results": R}, indent=1, default=str))
    print(text)
    log(f"written: {os.path.relpath(OUT / 'python.md', ROOT)} (raw: {os.path.relpath(OUT / 'python.json', ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
