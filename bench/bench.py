#!/usr/bin/env python3
"""drover's benchmark suite: restart latency, start time, footprint, idle wake-ups.

Run it through `bash bench/run.sh`, which builds everything first; see
bench/README.md for what each number means. Standard library only.

Everything this script creates lives under target/bench/. Every process it
starts runs in its own session and is stopped in a `finally`, on success,
error or Ctrl-C; as a last resort every `stamp` child recorded in a stamps
file is SIGKILLed (stamp also dies by itself when its parent dies).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "target" / "bench"
RUN = BENCH / "run"
DEFAULT_DROVER = ROOT / "target" / "release" / "drover"

# Figures quoted in the issue / DESIGN §9 for this machine class.
REF = {
    "spawn": "≈ 0.13 ms",
    "fork": "≈ 0.23 ms",
    "supervisord_restart": "≈ 1008 ms",
    "supervisord_rss": "≈ 31 MB",
    "supervisord_wakeups": "≈ 1 / s",
    "tini_rss": "≈ 1.3 MB (tini, 1 child)",
}


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


# ---------------------------------------------------------------- processes


class Procs:
    """Every long-running process the bench starts, for guaranteed cleanup."""

    def __init__(self, stamp: Path):
        self.stamp = stamp
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, *, stdout, stderr, env=None, preexec_fn=None) -> subprocess.Popen:
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the bench only
            preexec_fn=preexec_fn,
        )
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"warning: pid {p.pid} survived SIGKILL", file=sys.stderr)

    def cleanup(self) -> None:
        for p in self.procs:
            self.kill(p)
        self.procs.clear()
        self.sweep_stamps()

    def sweep_stamps(self) -> None:
        """SIGKILL every still-running stamp child named in any stamps file."""
        if not RUN.exists():
            return
        for stamps in RUN.glob("**/stamps"):
            for pid in read_stamps(stamps):
                try:
                    if os.readlink(f"/proc/{pid}/exe") == str(self.stamp):
                        os.kill(pid, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    pass


def read_stamps(path: Path) -> dict[int, int]:
    """pid -> CLOCK_MONOTONIC ns of every complete line of a stamps file."""
    out: dict[int, int] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for line in data.split(b"\n")[:-1]:  # the last piece is "" or incomplete
        pid, ns = line.split()
        out[int(pid)] = int(ns)
    return out


def wait_for(what: str, timeout: float, check, interval: float = 0.002):
    """Polls check() until it returns something truthy; fails loudly on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------ measurements


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summary(latencies_ns: list[int]) -> dict:
    ms = sorted(v / 1e6 for v in latencies_ns)
    return {
        "n": len(ms),
        "median": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": ms[-1],
    }


def memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kb = lambda name: int(fields[name].split()[0])  # noqa: E731
    pss = None
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except FileNotFoundError:
        pass
    return {
        "rss_kb": kb("VmRSS"),
        "anon_kb": kb("RssAnon"),
        "file_kb": kb("RssFile"),
        "pss_kb": pss,
        "threads": int(fields["Threads"]),
    }


def context_switches(pid: int) -> int:
    """Sum of voluntary + nonvoluntary context switches of every thread."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def idle_wakeups(pid: int, seconds: float) -> dict:
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    before = context_switches(pid)
    time.sleep(seconds)
    after = context_switches(pid)
    return {"switches": after - before, "seconds": seconds, "threads": threads}


def run_probe(probe: Path, args: list, timeout: float, env: dict | None = None) -> list[int]:
    r = subprocess.run(
        [str(probe), *map(str, args)],
        env={**os.environ, **env} if env else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise BenchError(f"probe {' '.join(map(str, args[:2]))} failed: {r.stderr.strip()}")
    return [int(x) for x in r.stdout.split()]


# ------------------------------------------------------------------ drover


class Drover:
    """One `drover run` with a single stamp group of `processes` children."""

    def __init__(
        self,
        bench: "Bench",
        name: str,
        processes: int,
        nofile: int | None = None,
        nofile_hard: bool = False,
    ):
        self.bench = bench
        self.dir = RUN / name
        self.dir.mkdir(parents=True)
        self.stamps = self.dir / "stamps"
        self.stamps.touch()
        self.socket = self.dir / "drover.sock"
        self.config = self.dir / "drover.toml"
        self.processes = processes
        self.config.write_text(
            "[group.stamp]\n"
            f"command = [{json.dumps(str(bench.stamp))}]\n"
            f"processes = {processes}\n"
            'start_secs = "0s"\n'
            'restart = "always"\n'
            f"env = {{ STAMP_DIR = {json.dumps(str(self.dir))} }}\n"
        )
        self.nofile = nofile
        self.nofile_hard = nofile_hard
        self.proc: subprocess.Popen | None = None
        self.t0 = 0

    def start(self) -> None:
        preexec = None
        if self.nofile is not None:
            nofile, lower_hard = self.nofile, self.nofile_hard

            def preexec():
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile if lower_hard else hard))

        self.out = open(self.dir / "stdout.log", "wb")
        self.err = open(self.dir / "stderr.log", "wb")
        self.t0 = time.monotonic_ns()
        self.proc = self.bench.procs.start(
            [self.bench.drover, "run", self.config, "--socket", self.socket],
            stdout=self.out,
            stderr=self.err,
            preexec_fn=preexec,
        )

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"drover exited with status {self.proc.returncode}: {self.stderr_tail()}"
            )

    def stderr_tail(self, lines: int = 5) -> str:
        text = (self.dir / "stderr.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no stderr)"

    def status(self, timeout: float = 10) -> dict:
        r = subprocess.run(
            [str(self.bench.drover), "status", "--json", "--socket", str(self.socket)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise BenchError(f"drover status failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def running(self, status: dict) -> int:
        return sum(
            1
            for g in status["groups"]
            for c in g["children"]
            if c["state"] == "running" and c["pid"] is not None
        )

    def measure_start(self, timeout: float) -> dict:
        """Starts drover; times the last child's stamp and `status` showing all running."""
        n = self.processes
        self.start()
        deadline = time.monotonic() + timeout
        status_proc = None
        status_file = self.dir / "status.json"
        status_at = None
        stamps_at = None
        while stamps_at is None or status_at is None:
            self.alive()
            if time.monotonic() > deadline:
                got = len(read_stamps(self.stamps))
                raise BenchError(
                    f"drover with {n} children: after {timeout:g} s, {got} stamps, "
                    f"status all running: {status_at is not None}; stderr: {self.stderr_tail()}"
                )
            if stamps_at is None:
                stamps = read_stamps(self.stamps)
                if len(stamps) >= n:
                    stamps_at = max(stamps.values())
            if status_at is None:
                if status_proc is None:
                    if self.socket.exists():
                        # Into a file, not a pipe: 1000 children make ~180 kB
                        # of JSON, more than a pipe holds while we poll.
                        status_out = open(status_file, "w+b")
                        status_proc = subprocess.Popen(
                            [self.bench.drover, "status", "--json", "--socket", self.socket],
                            stdin=subprocess.DEVNULL,
                            stdout=status_out,
                            stderr=subprocess.DEVNULL,
                        )
                elif status_proc.poll() is not None:
                    done = time.monotonic_ns()
                    status_out.seek(0)
                    out = status_out.read()
                    status_out.close()
                    ok = status_proc.returncode == 0
                    status_proc = None
                    if ok and self.running(json.loads(out)) == n:
                        status_at = done
            time.sleep(0.001)
        return {
            "children": n,
            "last_stamp_ms": (stamps_at - self.t0) / 1e6,
            "status_ms": (status_at - self.t0) / 1e6,
        }

    def wait_stamps(self, n: int, timeout: float) -> None:
        def enough():
            self.alive()
            return len(read_stamps(self.stamps)) >= n

        wait_for(f"{n} stamps from drover's children", timeout, enough)

    def shutdown(self) -> dict:
        t = time.monotonic()
        r = subprocess.run(
            [str(self.bench.drover), "shutdown", "--socket", str(self.socket)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.returncode != 0:
            raise BenchError(f"drover shutdown failed: {r.stderr.strip()}")
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("drover did not exit within 30 s of `drover shutdown`")
        took = (time.monotonic() - t) * 1000
        self.bench.procs.procs.remove(self.proc)
        self.out.close()
        self.err.close()
        if code != 0:
            raise BenchError(f"drover exited {code} after shutdown: {self.stderr_tail()}")
        return {"shutdown_ms": took, "exit": code}


# ------------------------------------------------------------- supervisord


class Supervisord:
    """One supervisord (nodaemon) with a stamp program of `processes` instances."""

    def __init__(self, bench: "Bench", name: str, processes: int):
        self.bench = bench
        self.dir = RUN / name
        self.dir.mkdir(parents=True)
        self.stamps = self.dir / "stamps"
        self.stamps.touch()
        self.processes = processes
        self.config = self.dir / "supervisord.conf"
        d = self.dir
        self.config.write_text(
            "[supervisord]\n"
            "nodaemon=true\n"
            f"logfile={d}/supervisord.log\n"
            f"pidfile={d}/supervisord.pid\n"
            f"childlogdir={d}\n"
            "\n[unix_http_server]\n"
            f"file={d}/supervisor.sock\n"
            "\n[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            "\n[program:stamp]\n"
            f"command={bench.stamp}\n"
            f"numprocs={processes}\n"
            "process_name=%(program_name)s_%(process_num)d\n"
            "autostart=true\n"
            "autorestart=true\n"
            "startsecs=0\n"
            "startretries=1000\n"
            f'environment=STAMP_DIR="{d}"\n'
            "stdout_logfile=NONE\n"
            "stderr_logfile=NONE\n"
            "stopwaitsecs=5\n"
        )
        self.proc = None

    def start(self) -> None:
        self.out = open(self.dir / "stdout.log", "wb")
        self.t0 = time.monotonic_ns()
        self.proc = self.bench.procs.start(
            [self.bench.supervisord, "-c", self.config],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> None:
        if self.proc.poll() is not None:
            log = (self.dir / "stdout.log").read_text(errors="replace").strip()[-500:]
            raise BenchError(f"supervisord exited with status {self.proc.returncode}: {log}")

    def wait_stamps(self, n: int, timeout: float) -> dict:
        def enough():
            self.alive()
            stamps = read_stamps(self.stamps)
            return stamps if len(stamps) >= n else None

        stamps = wait_for(f"{n} stamps from supervisord's children", timeout, enough, 0.005)
        return {"children": n, "last_stamp_ms": (max(stamps.values()) - self.t0) / 1e6}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("supervisord did not exit within 30 s of SIGTERM")
        self.bench.procs.procs.remove(self.proc)
        self.out.close()


# ------------------------------------------------------------------- bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.drover = Path(args.drover).resolve()
        self.stamp = Path(args.stamp).resolve()
        self.probe = Path(args.probe).resolve()
        self.supervisord = Path(args.supervisord).resolve() if args.supervisord else None
        self.procs = Procs(self.stamp)
        self.r: dict = {"notes": []}

    def check_quiet(self, when: str, wait: float = 0) -> None:
        """Other load skews every latency here: measure it, and say so.

        With `wait`, first give a busy machine up to that long to calm down.
        """
        deadline = time.monotonic() + wait
        load = background_load()
        if load["busy_pct"] > 5 and wait > 0:
            print(f"  the machine is busy ({load['busy_pct']:.0f}% CPU); waiting up to {wait:g} s")
            while load["busy_pct"] > 5 and time.monotonic() < deadline:
                load = background_load()
        self.r[f"background_{when}"] = load
        if load["busy_pct"] > 5:
            self.note(
                f"the machine was busy {when} the run: {load['busy_pct']:.0f}% CPU used by other "
                "processes while the bench slept; latencies are inflated — rerun on a quiet machine"
            )

    def note(self, text: str) -> None:
        print(f"  note: {text}")
        self.r["notes"].append(text)

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", flush=True)

    # -- phases

    def baselines(self) -> None:
        n = self.args.restarts
        for mode in ("spawn", "fork", "respawn"):
            self.step(f"baseline: {mode} x{n}")
            d = RUN / f"baseline-{mode}"
            d.mkdir(parents=True)
            lat = run_probe(self.probe, [mode, n, self.stamp, d], timeout=120)
            self.r[f"baseline_{mode}"] = summary(lat)
        fds = 2000
        self.step(f"baseline: spawn x{n} from a parent holding {fds} more fds")
        d = RUN / "baseline-spawn-fds"
        d.mkdir(parents=True)
        lat = run_probe(
            self.probe, ["spawn", n, self.stamp, d], timeout=120, env={"PROBE_EXTRA_FDS": str(fds)}
        )
        self.r["baseline_spawn_fds"] = summary(lat)

    def drover_restart(self) -> None:
        n = self.args.restarts
        self.step(f"drover: restart latency x{n} (1 child)")
        d = Drover(self, "drover-restart", 1)
        d.start()
        d.wait_stamps(1, 10)
        time.sleep(0.2)
        self.r["drover_mem_1"] = memory(d.proc.pid)
        lat = run_probe(self.probe, ["kill", n, d.dir, 5000, self.args.gap_ms], timeout=300)
        d.alive()
        self.r["drover_restart"] = summary(lat)
        st = d.status()
        restarts = st["groups"][0]["children"][0]["restarts"]
        if restarts != n:
            self.note(f"drover status reports {restarts} restarts after {n} kills")
        d.shutdown()

    def supervisord_restart(self) -> None:
        n = self.args.sv_restarts
        self.step(f"supervisord: restart latency x{n} (1 program, ~1 s each)")
        s = Supervisord(self, "supervisord-restart", 1)
        s.start()
        s.wait_stamps(1, 30)
        time.sleep(1.5)  # let it move the program to RUNNING
        self.r["supervisord_mem_1"] = memory(s.proc.pid)
        lat = run_probe(self.probe, ["kill", n, s.dir, 10000, 50], timeout=n * 12 + 30)
        s.alive()
        self.r["supervisord_restart"] = summary(lat)
        s.stop()

    def drover_many(self, n: int, idle: bool) -> None:
        self.step(f"drover: start {n} children")
        d = Drover(self, f"drover-{n}", n)
        self.r[f"drover_start_{n}"] = d.measure_start(timeout=60)
        time.sleep(1.0)
        d.alive()
        self.r[f"drover_mem_{n}"] = memory(d.proc.pid)
        if idle:
            self.step(f"drover: idle wake-ups over {self.args.idle_secs:g} s with {n} children")
            self.r[f"drover_idle_{n}"] = idle_wakeups(d.proc.pid, self.args.idle_secs)
        d.alive()
        k = self.args.restarts
        self.step(f"drover: restart latency x{k} with {n} children running")
        lat = run_probe(self.probe, ["kill", k, d.dir, 5000, self.args.gap_ms], timeout=300)
        self.r[f"drover_restart_{n}"] = summary(lat)
        time.sleep(0.2)
        self.r[f"drover_mem_{n}_after"] = memory(d.proc.pid)
        if d.running(d.status()) != n:
            raise BenchError(f"drover: not all {n} children running at the end")
        self.step(f"drover: shutdown with {n} children")
        self.r[f"drover_shutdown_{n}"] = d.shutdown()

    def supervisord_many(self, n: int) -> None:
        self.step(f"supervisord: start {n} children")
        s = Supervisord(self, f"supervisord-{n}", n)
        s.start()
        self.r[f"supervisord_start_{n}"] = s.wait_stamps(n, 60)
        time.sleep(2.0)  # RUNNING transitions happen on its next ticks
        s.alive()
        self.r[f"supervisord_mem_{n}"] = memory(s.proc.pid)
        self.step(f"supervisord: idle wake-ups over {self.args.idle_secs:g} s with {n} children")
        self.r[f"supervisord_idle_{n}"] = idle_wakeups(s.proc.pid, self.args.idle_secs)
        s.alive()
        s.stop()

    def fd_limit(self, n: int, nofile: int, hard: bool) -> None:
        """What drover does with n children under an RLIMIT_NOFILE of `nofile`.

        hard=False lowers only the soft limit (the usual 1024 default, which
        drover may raise itself); hard=True lowers both, so it cannot.
        """
        which = "soft and hard" if hard else "soft"
        self.step(f"drover: {n} children under a {which} RLIMIT_NOFILE of {nofile}")
        d = Drover(self, f"drover-{n}-nofile{nofile}-{'hard' if hard else 'soft'}", n,
                   nofile=nofile, nofile_hard=hard)
        d.start()
        # Long enough for failed starts to back off (0.1+0.2+0.4+0.8+1.6 s) to fatal.
        time.sleep(4.0)
        d.alive()
        st = d.status()
        states: dict[str, int] = {}
        for c in st["groups"][0]["children"]:
            states[c["state"]] = states.get(c["state"], 0) + 1
        err = (d.dir / "stderr.log").read_text(errors="replace").splitlines()
        problems = [line for line in err if " WARN " in line or " ERROR " in line]
        first = problems[0].split("  ", 1)[-1].strip() if problems else None
        self.r[f"fd_limit_{'hard' if hard else 'soft'}"] = {
            "children": n,
            "nofile": nofile,
            "which": which,
            "stamps": len(read_stamps(d.stamps)),
            "states": states,
            "problem_lines": len(problems),
            "first_problem": first,
        }
        d.shutdown()

    def run(self) -> None:
        self.began = time.monotonic()
        if RUN.exists():
            shutil.rmtree(RUN)
        RUN.mkdir(parents=True)
        self.r["machine"] = machine()
        self.check_quiet("before", wait=self.args.quiet_wait)
        try:
            self.baselines()
            self.drover_restart()
            if self.supervisord:
                self.supervisord_restart()
            self.drover_many(100, idle=True)
            if self.supervisord:
                self.supervisord_many(100)
            self.drover_many(1000, idle=True)
            if not self.args.skip_fd_limit:
                self.fd_limit(1000, 1024, hard=False)
                self.fd_limit(1000, 1024, hard=True)
        finally:
            self.procs.cleanup()
        self.check_quiet("after")
        self.step("done")


def cpu_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq, steal, total


def background_load(seconds: float = 1.0) -> dict:
    """CPU use of everything else on the machine while the bench sleeps."""
    b0, s0, t0 = cpu_times()
    time.sleep(seconds)
    b1, s1, t1 = cpu_times()
    total = max(1, t1 - t0)
    return {"busy_pct": 100 * (b1 - b0) / total, "steal_pct": 100 * (s1 - s0) / total}


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
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git_state(),
    }


def git_state() -> str:
    """The commit drover was built from, and whether the tree had local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
            capture_output=True, text=True, timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "git state unknown"
    return f"commit {head}" + (f" + uncommitted changes in {len(dirty)} src files" if dirty else "")


# ------------------------------------------------------------------ report


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep, *map(fmt, rows)])


def ms(v: float) -> str:
    if v != v:
        return "—"
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def mb(kb: int | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.2f} MB"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(b: Bench) -> str:
    r = b.r
    m = r["machine"]
    skipped = "skipped (not installed)"
    out = [
        "# drover benchmark results",
        "",
        f"- machine: {m['nproc']} CPUs, {m['model']}, Linux {m['kernel']}",
        f"- RLIMIT_NOFILE of the bench: {m['nofile']}; Python {m['python']}; {m['date']}",
        "- other load (CPU busy while the bench slept 1 s, of all CPUs): "
        + ", ".join(
            f"{when} {r[f'background_{when}']['busy_pct']:.1f}%"
            f" (steal {r[f'background_{when}']['steal_pct']:.1f}%)"
            for when in ("before", "after")
            if f"background_{when}" in r
        ),
        f"- drover: {b.drover} "
        + (
            f"(built from the working tree: {m['git']})"
            if b.drover == DEFAULT_DROVER.resolve()
            else f"(a prebuilt binary; the working tree is at {m['git']})"
        ),
        f"- supervisord: {b.supervisord or skipped}",
        "",
        "## Restart latency: SIGKILL of a running child → its replacement running",
        "",
        "Time from t0 (CLOCK_MONOTONIC just before the spawn call, or just before",
        "kill(2) for restarts) to the timestamp the new child writes first thing in main().",
        "",
    ]
    rows = []

    def lat_row(name, key, ref=""):
        s = r.get(key)
        if s is None:
            rows.append([name, "—", skipped, "", "", "", ref])
        else:
            rows.append(
                [name, str(s["n"]), ms(s["median"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"]), ref]
            )

    lat_row("baseline: bare posix_spawn → running", "baseline_spawn", REF["spawn"])
    lat_row("baseline: bare fork+exec → running", "baseline_fork", REF["fork"])
    lat_row("baseline: bare posix_spawn, parent holding 2000 fds", "baseline_spawn_fds")
    lat_row("floor: kill + waitpid + posix_spawn (C)", "baseline_respawn")
    lat_row("**drover** restart (1 child)", "drover_restart", "goal: median < 1 ms")
    lat_row("**drover** restart, 1 of 100 children", "drover_restart_100")
    lat_row("**drover** restart, 1 of 1000 children", "drover_restart_1000")
    lat_row("supervisord restart (1 program)", "supervisord_restart", REF["supervisord_restart"])
    out.append(table(["", "n", "median", "p90", "p99", "max", "reference"], rows))
    out.append("")
    dr = r["drover_restart"]["median"]
    lines = [
        f"- drover median restart: {ms(dr)} — goal < 1 ms: **{verdict(dr < 1)}**",
        f"- drover / bare posix_spawn (median): {dr / r['baseline_spawn']['median']:.2f}×",
        f"- drover / restart floor (median): {dr / r['baseline_respawn']['median']:.2f}×"
        f" (+{(dr - r['baseline_respawn']['median']) * 1000:.0f} µs)",
    ]
    if "supervisord_restart" in r:
        sv = r["supervisord_restart"]["median"]
        lines.append(f"- supervisord / drover (median): **{sv / dr:.0f}×**")
    out += lines
    out += [
        "",
        "## Start: `drover run` → every child running",
        "",
        "t0 is read just before `drover run` (or `supervisord`) is started. *last stamp*: the",
        "latest first-instruction timestamp of all children; *status*: when a `drover status",
        "--json` (polled back to back, each call a process start) first listed all of them running.",
        "",
    ]
    rows = []
    for n in (100, 1000):
        s = r.get(f"drover_start_{n}")
        if s:
            goal = f"goal < 1 s: {verdict(s['last_stamp_ms'] < 1000)}" if n == 1000 else ""
            rows.append(
                [
                    "**drover**",
                    str(n),
                    ms(s["last_stamp_ms"]),
                    ms(s["status_ms"]),
                    f"{s['last_stamp_ms'] / n * 1000:.0f} µs",
                    goal,
                ]
            )
    s = r.get("supervisord_start_100")
    rows.append(
        ["supervisord", "100", ms(s["last_stamp_ms"]) if s else skipped, "—",
         f"{s['last_stamp_ms'] / 100 * 1000:.0f} µs" if s else "", ""]
    )
    out.append(table(["", "children", "last stamp", "status: all running", "per child", ""], rows))
    s1000 = r.get("drover_start_1000")
    if s1000:
        out += [
            "",
            f"- per child, drover's start of 1000 ({s1000['last_stamp_ms'] / 1000 * 1000:.0f} µs) vs a"
            f" bare posix_spawn ({r['baseline_spawn']['median'] * 1000:.0f} µs; from a parent holding"
            f" 2000 fds: {r['baseline_spawn_fds']['median'] * 1000:.0f} µs)",
        ]
    out += [
        "",
        "## Footprint: memory of the supervisor process with its children running",
        "",
        "VmRSS from /proc/PID/status, PSS from /proc/PID/smaps_rollup (shared pages split",
        "between the processes mapping them). supervisord: its main process.",
        "",
    ]
    rows = []

    def mem_row(name, key, n, goal=""):
        s = r.get(key)
        if s is None:
            rows.append([name, str(n), skipped, "", "", "", "", goal])
        else:
            rows.append(
                [name, str(n), mb(s["rss_kb"]), mb(s["pss_kb"]), mb(s["anon_kb"]),
                 mb(s["file_kb"]), str(s["threads"]), goal]
            )

    mem_row("**drover**", "drover_mem_1", 1, f"tini: {REF['tini_rss']}")
    d100 = r["drover_mem_100"]["rss_kb"] / 1024
    mem_row("**drover**", "drover_mem_100", 100, f"goal < 3 MB: {verdict(d100 < 3)}")
    mem_row("**drover**", "drover_mem_1000", 1000)
    mem_row("supervisord", "supervisord_mem_1", 1)
    mem_row("supervisord", "supervisord_mem_100", 100, f"reference {REF['supervisord_rss']}")
    out.append(
        table(["", "children", "VmRSS", "PSS", "RssAnon", "RssFile", "threads", ""], rows)
    )
    if "supervisord_mem_100" in r:
        ratio = r["supervisord_mem_100"]["rss_kb"] / r["drover_mem_100"]["rss_kb"]
        out += ["", f"- supervisord / drover RSS with 100 children: {ratio:.1f}×"]
    out += [
        "",
        "## Idle wake-ups",
        "",
        "Sum of voluntary + nonvoluntary context switches over every thread",
        "(/proc/PID/task/*/status), read twice, the stated time apart, with all children",
        "running and nothing happening.",
        "",
    ]
    rows = []

    def idle_row(name, key, n, goal=""):
        s = r.get(key)
        if s is None:
            rows.append([name, str(n), "", skipped, "", "", goal])
        else:
            rows.append(
                [name, str(n), f"{s['seconds']:g} s", str(s["switches"]),
                 f"{s['switches'] / s['seconds']:.1f}", str(s["threads"]), goal]
            )

    w = r["drover_idle_100"]["switches"]
    idle_row("**drover**", "drover_idle_100", 100, f"goal 0: {verdict(w == 0)}")
    idle_row("**drover**", "drover_idle_1000", 1000)
    idle_row("supervisord", "supervisord_idle_100", 100, f"reference {REF['supervisord_wakeups']}")
    out.append(table(["", "children", "window", "wake-ups", "per second", "threads", ""], rows))
    out += ["", "## Other observations", ""]
    for n in (100, 1000):
        s = r.get(f"drover_shutdown_{n}")
        if s:
            out.append(
                f"- `drover shutdown` with {n} children → drover exited {s['exit']} after "
                f"{ms(s['shutdown_ms'])}"
            )
    for n in (100, 1000):
        a, b = r.get(f"drover_mem_{n}"), r.get(f"drover_mem_{n}_after")
        k = r.get(f"drover_restart_{n}", {}).get("n")
        if a and b:
            out.append(
                f"- drover VmRSS with {n} children: {mb(a['rss_kb'])} before and "
                f"{mb(b['rss_kb'])} after {k} restarts (RssAnon {mb(a['anon_kb'])} → "
                f"{mb(b['anon_kb'])})"
            )
    for key in ("fd_limit_soft", "fd_limit_hard"):
        f = r.get(key)
        if not f:
            continue
        states = ", ".join(f"{v} {k}" for k, v in sorted(f["states"].items()))
        out.append(
            f"- {f['children']} children under a {f['which']} RLIMIT_NOFILE of {f['nofile']}: "
            f"{f['stamps']} children ever ran; 4 s after start: {states}; "
            f"{f['problem_lines']} WARN/ERROR lines on drover's stderr"
            + (f", the first: `{f['first_problem']}`" if f["first_problem"] else "")
        )
    for note in r["notes"]:
        out.append(f"- {note}")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drover", default=DEFAULT_DROVER)
    p.add_argument("--stamp", default=BENCH / "stamp")
    p.add_argument("--probe", default=BENCH / "probe")
    p.add_argument("--supervisord", default=None, help="supervisord executable (omit: skip it)")
    p.add_argument("--restarts", type=int, default=200, help="drover / baseline iterations")
    p.add_argument("--sv-restarts", type=int, default=20, help="supervisord iterations")
    p.add_argument("--gap-ms", type=int, default=5, help="pause between two kills of drover's child")
    p.add_argument("--idle-secs", type=float, default=10.0)
    p.add_argument("--skip-fd-limit", action="store_true")
    p.add_argument(
        "--quiet-wait", type=float, default=60, help="wait this long at most for a quiet machine"
    )
    args = p.parse_args()

    for what in ("drover", "stamp", "probe"):
        path = Path(getattr(args, what))
        if not os.access(path, os.X_OK):
            print(f"bench: {what} not found at {path}; run `bash bench/run.sh`", file=sys.stderr)
            return 1

    # SIGTERM / SIGHUP end the bench like Ctrl-C does, through the `finally`s.
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    # Also when started in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)

    bench = Bench(args)
    try:
        bench.run()
    except BenchError as e:
        print(f"\nbench FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    text = report(bench)
    print()
    print(text)
    (BENCH / "results.md").write_text(text)
    (BENCH / "results.json").write_text(json.dumps(bench.r, indent=2) + "\n")
    print(f"written: {BENCH / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
