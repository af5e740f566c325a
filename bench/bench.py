#!/usr/bin/env python3
"""drover's benchmark suite: restart latency, start time, footprint, idle wake-ups, start methods.

Run it through `bash bench/run.sh [SECTION...]`, which builds everything
first; see bench/README.md for what each number means. Sections: `core`
(restart, start, footprint, idle wake-ups, other observations) and `methods`
(restart latency per start method and supervisor size); default: all.
Standard library only.

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

# Reference figures for this machine class.
REF = {
    "spawn": "≈ 0.13 ms",
    "fork": "≈ 0.23 ms",
    "fork_1g": "≈ 32 ms",
    "supervisord_restart": "≈ 1008 ms",
    "supervisord_rss": "≈ 31 MB",
    "supervisord_wakeups": "≈ 1 / s",
    "tini_rss": "≈ 1.3 MB (tini, 1 child)",
}


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


SECTIONS = ("core", "methods")
START_METHODS = ("spawn", "fork", "forkserver")

# ---------------------------------------------------------------- processes


class Procs:
    """Every long-running process the bench starts, for guaranteed cleanup."""

    def __init__(self, stamp: Path):
        self.stamp = stamp
        self.procs: list[subprocess.Popen] = []
        # (pid, exe) of processes that are not our children (drover's fork
        # servers): SIGKILLed at cleanup if that pid still runs that exe.
        self.others: list[tuple[int, str]] = []

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
        for pid, exe in self.others:
            kill_if_exe(pid, exe)
        self.others.clear()
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


def kill_if_exe(pid: int, exe: str) -> bool:
    """SIGKILLs pid if it is still a live process running exe (not a reused pid)."""
    try:
        if os.readlink(f"/proc/{pid}/exe") == exe:
            os.kill(pid, signal.SIGKILL)
            return True
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return False


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) from /proc/PID/stat; None when the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


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
    rollup = smaps_rollup(pid)
    return {
        "rss_kb": kb("VmRSS"),
        "anon_kb": kb("RssAnon"),
        "file_kb": kb("RssFile"),
        "pss_kb": rollup.get("Pss"),
        # Transparent huge pages: a fork copies one entry per 2 MiB of them
        # instead of 512, so they hide what a supervisor's size costs a fork.
        "anon_huge_kb": rollup.get("AnonHugePages"),
        "threads": int(fields["Threads"]),
    }


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup (Rss, Pss, AnonHugePages, ...)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


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
    return run_probe_full(probe, args, timeout, env)[0]


def run_probe_full(
    probe: Path, args: list, timeout: float, env: dict | None = None
) -> tuple[list[int], dict]:
    """Latencies (ns) and the probe's `probe-memory:` report (empty without one)."""
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
    mem: dict = {}
    for line in r.stderr.splitlines():
        if line.startswith("probe-memory:"):
            for word in line.split()[1:]:
                k, _, v = word.partition("=")
                mem[k] = int(v) if v.lstrip("-").isdigit() else v
    return [int(x) for x in r.stdout.split()], mem


# ------------------------------------------------------------------ drover


class Drover:
    """One `drover run` with a single stamp group of `processes` children.

    start_method: the group's `start_method` (None: not written, the default);
    ballast_mib: pass the hidden `--ballast-mib` (drover holds that much
    touched memory).
    """

    def __init__(
        self,
        bench: "Bench",
        name: str,
        processes: int,
        nofile: int | None = None,
        nofile_hard: bool = False,
        start_method: str | None = None,
        ballast_mib: int | None = None,
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
            + (f"start_method = {json.dumps(start_method)}\n" if start_method else "")
            + 'start_secs = "100ms"\n'
            'restart = "always"\n'
            f"env = {{ STAMP_DIR = {json.dumps(str(self.dir))} }}\n"
        )
        self.nofile = nofile
        self.nofile_hard = nofile_hard
        self.start_method = start_method
        self.ballast_mib = ballast_mib
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
        ballast = ["--ballast-mib", self.ballast_mib] if self.ballast_mib else []
        self.proc = self.bench.procs.start(
            [self.bench.drover, "run", self.config, "--socket", self.socket, *ballast],
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
        self.sections = [s for s in SECTIONS if s in (args.sections or SECTIONS)]
        self.r: dict = {"notes": [], "load_notes": []}

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
                where="load_notes",
                text=f"the machine was busy {when} the run: {load['busy_pct']:.0f}% CPU used by other "
                "processes while the bench slept; latencies are inflated — rerun on a quiet machine"
            )

    def note(self, text: str, where: str = "notes") -> None:
        """Something to point out in the report; `where`: the list it goes to
        (notes: the core section; load_notes: the header; methods: its section)."""
        print(f"  note: {text}")
        if where == "methods":
            self.r["methods"]["notes"].append(text)
        else:
            self.r[where].append(text)

    def mnote(self, text: str) -> None:
        self.note(text, where="methods")

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", flush=True)

    # -- phases

    def core(self) -> None:
        """The `core` section: restart, start, footprint, idle wake-ups, fd limit."""
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

    # -- start methods

    def start_methods(self) -> None:
        """Restart latency per start method and supervisor size, and the bare
        calls each method corresponds to, from a small and a large C parent."""
        mib = self.args.ballast_mib
        self.r["methods"] = {"ballast_mib": mib, "bare": {}, "drover": {}, "notes": []}
        # The two sizes of one thing back to back, so that their ratio is
        # not skewed by a drift of the machine in between. At most one
        # process holds the ballast at any time.
        for mode in BARE_MODES:
            for size in (0, mib):
                self.methods_bare(mode, size)
            if mode == "fork":
                # Reference only: the same ballast in transparent huge pages.
                self.methods_bare(mode, mib, thp=True)
        for method in START_METHODS:
            for size in (0, mib):
                self.methods_drover(method, size)

    def methods_bare(self, mode: str, mib: int, thp: bool = False) -> None:
        """One probe run from a parent holding `mib` MiB (0: a small parent);
        thp: advise MADV_HUGEPAGE on the ballast instead of MADV_NOHUGEPAGE."""
        n = self.args.restarts
        parent = f"a parent holding {mib} MiB" if mib else "a small parent"
        if thp:
            parent += " in huge pages"
        self.step(f"methods: bare {BARE_MODES[mode]} x{n} from {parent}")
        key = f"{mode}{'-thp' if thp else ''}/{mib}"
        d = RUN / f"methods-bare-{key.replace('/', '-')}"
        d.mkdir(parents=True)
        # PROBE_BALLAST_MIB=0 too: then the probe reports its (small) memory.
        env = {"PROBE_BALLAST_MIB": str(mib), "PROBE_BALLAST_THP": "1" if thp else "0"}
        others = OthersCpu()
        lat, mem = run_probe_full(self.probe, [mode, n, self.stamp, d], timeout=600, env=env)
        self.r["methods"]["bare"][key] = {**summary(lat), "memory": mem, "others_pct": others.pct()}
        if mem.get("Anonymous", 0) < mib * 1024:
            self.mnote(f"the probe's {mib} MiB ballast is not resident: {mem}")
        if mem.get("AnonHugePages", 0) > 0 and not thp:
            self.mnote(f"the probe's ballast got transparent huge pages despite MADV_NOHUGEPAGE: {mem}")
        if thp and not mem.get("AnonHugePages"):
            self.mnote(
                "the probe's ballast got no huge pages with MADV_HUGEPAGE (THP "
                f"{self.r['machine']['thp']}): the huge-page row is plain 4 KiB pages"
            )

    def methods_drover(self, method: str, mib: int) -> None:
        n = self.args.restarts
        size = f"--ballast-mib {mib}" if mib else "no ballast"
        self.step(f"methods: drover start_method = {method!r}, {size}: restart latency x{n}")
        d = Drover(self, f"methods-drover-{method}-{mib}", 1, start_method=method,
                   ballast_mib=mib or None)
        others = OthersCpu()
        d.start()
        d.wait_stamps(1, 60)  # touching the ballast takes a moment
        time.sleep(0.2)
        d.alive()
        entry: dict = {"memory": memory(d.proc.pid)}
        anon = entry["memory"]["anon_kb"]
        if mib and anon < mib * 1024:
            self.mnote(f"drover --ballast-mib {mib}: RssAnon is only {mb(anon)}; not all resident")
        if entry["memory"]["anon_huge_kb"]:
            self.mnote(
                f"drover --ballast-mib {mib} ({method}): {mb(entry['memory']['anon_huge_kb'])} "
                "AnonHugePages: its fork is cheaper than with 4 KiB pages"
            )
        server = None
        if method == "forkserver":
            server = forkserver_of(d.proc.pid)
            if server is None:
                self.mnote(f"drover ({method}, {size}): no fork server found among its children")
            else:
                self.procs.others.append((server, os.readlink(f"/proc/{server}/exe")))
                entry["server"] = {"pid": server, **memory(server)}
        self.check_child(d, method, size)
        lat = run_probe(self.probe, ["kill", n, d.dir, 5000, self.args.gap_ms], timeout=600)
        d.alive()
        entry.update(summary(lat))
        restarts = d.status()["groups"][0]["children"][0]["restarts"]
        if restarts != n:
            self.mnote(f"drover ({method}, {size}) reports {restarts} restarts after {n} kills")
        self.check_child(d, method, size)
        d.shutdown()
        if server is not None:
            # It exits when drover closes its socket; drover reaps it.
            try:
                wait_for("the fork server to exit", 3, lambda: proc_stat(server) is None)
            except BenchError:
                state = proc_stat(server) or ("gone", 0)  # (state letter, parent)
                entry["server_left"] = state
                self.mnote(
                    f"drover's fork server (pid {server}) was still there 3 s after drover "
                    f"exited: state {state[0]}, parent {state[1]}"
                    + (" (a zombie nobody reaped)" if state[0] == "Z" else "; the bench killed it")
                )
                kill_if_exe(server, self.procs.others[-1][1])
        entry["others_pct"] = others.pct()
        self.r["methods"]["drover"][f"{method}/{mib}"] = entry

    def check_child(self, d: Drover, method: str, size: str) -> None:
        """The newest stamp child was started with `method`, and drover is its parent."""
        stamps = read_stamps(d.stamps)
        pid = max(stamps, key=stamps.get)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except FileNotFoundError:
            self.mnote(f"drover ({method}, {size}): its child {pid} is gone")
            return
        got = next((v[20:].decode() for v in env if v.startswith(b"DROVER_START_METHOD=")), None)
        stat = proc_stat(pid)
        if got != method or stat is None or stat[1] != d.proc.pid:
            self.mnote(
                f"drover ({method}, {size}): child {pid} has DROVER_START_METHOD={got} and "
                f"parent {stat and stat[1]} (drover is {d.proc.pid})"
            )

    def run(self) -> None:
        self.began = time.monotonic()
        if RUN.exists():
            shutil.rmtree(RUN)
        RUN.mkdir(parents=True)
        self.r["machine"] = machine()
        self.r["sections"] = list(self.sections)
        self.check_quiet("before", wait=self.args.quiet_wait)
        try:
            if "core" in self.sections:
                self.core()
            if "methods" in self.sections:
                self.start_methods()
        finally:
            self.procs.cleanup()
        self.check_quiet("after")
        self.step("done")


# probe mode -> what it measures (the start methods section's bare calls)
BARE_MODES = {
    "spawn": "posix_spawn → running",
    "fork": "fork+exec → running",
    "respawn": "kill + waitpid + posix_spawn (floor)",
    "refork": "kill + waitpid + fork+exec (floor)",
}


def forkserver_of(drover_pid: int) -> int | None:
    """The PID of drover's fork server: its child whose argv[0] is drover-forkserver."""
    children: list[int] = []
    for task in Path(f"/proc/{drover_pid}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    for pid in children:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except FileNotFoundError:
            continue
        if argv0 == b"drover-forkserver":
            return pid
    return None


def cpu_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq, steal, total


class OthersCpu:
    """CPU used by *other* processes while something is measured: CPU busy
    time from /proc/stat minus what the bench's own process tree used
    (getrusage of itself and of its waited-for descendants: the probe, drover,
    its fork server and the stamp children, all reaped by the end of a
    measurement). In percent of all CPUs; /proc/stat counts in 10 ms ticks,
    and interrupts on behalf of the bench count as "other", so a quiet machine
    reads 0-3%."""

    def __init__(self):
        self.busy, _, self.total = cpu_times()
        self.own = own_cpu_seconds()

    def pct(self) -> float:
        busy, _, total = cpu_times()
        hz = os.sysconf("SC_CLK_TCK")
        if total == self.total:
            return 0.0
        others = (busy - self.busy) / hz - (own_cpu_seconds() - self.own)
        return max(0.0, 100 * others / ((total - self.total) / hz))


def own_cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


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
        "thp": thp_mode(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git_state(),
    }


def thp_mode() -> str:
    """Transparent huge pages: the kernel's setting, e.g. `madvise` (enabled; defrag)."""
    base = Path("/sys/kernel/mm/transparent_hugepage")

    def chosen(name: str) -> str:
        try:
            text = (base / name).read_text()
        except OSError:
            return "?"
        return next((w[1:-1] for w in text.split() if w.startswith("[")), text.strip())

    return f"enabled={chosen('enabled')}, defrag={chosen('defrag')}"


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
    """The whole report: the header, then each section that ran."""
    out = report_header(b)
    if "core" in b.sections:
        out += report_core(b)
    if "methods" in b.sections:
        out += report_methods(b)
    return "\n".join(out) + "\n"


def report_header(b: Bench) -> list[str]:
    r = b.r
    m = r["machine"]
    out = [
        "# drover benchmark results",
        "",
        f"- sections: {', '.join(b.sections)}",
        f"- machine: {m['nproc']} CPUs, {m['model']}, Linux {m['kernel']};"
        f" transparent huge pages {m['thp']}",
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
    ]
    if "core" in b.sections:
        out.append(f"- supervisord: {b.supervisord or 'skipped (not installed)'}")
    out += [f"- **{note}**" for note in r["load_notes"]]
    out.append("")
    return out


def report_core(b: Bench) -> list[str]:
    r = b.r
    skipped = "skipped (not installed)"
    out = [
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
    out.append("")
    return out


# The start methods section's goals (the issue): drover's spawn and forkserver
# starts within 1.5x of the bare calls and independent of the supervisor's
# size; fork's cost visibly tracks the supervisor's size. "Independent" and
# "visibly" made concrete: the large / small ratio of medians.
GOAL_RATIO = 1.5
# Above this share of the CPUs used by other processes, a measurement is flagged.
OTHERS_BUSY_PCT = 5.0
SIZE_INDEPENDENT = 1.25
SIZE_TRACKS = 2.0

# drover start method -> (probe mode of the bare call, of its floor, which
# parent size: "same" as drover's, or always the small parent)
CORRESPONDS = {
    "spawn": ("spawn", "respawn", "same"),
    "fork": ("fork", "refork", "same"),
    # The fork server is a small process, however large drover is.
    "forkserver": ("fork", "refork", "small"),
}


def report_methods(b: Bench) -> list[str]:
    mr = b.r["methods"]
    mib = mr["ballast_mib"]
    big = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
    sizes = (0, mib)

    def bare(mode: str, size: int) -> dict:
        return mr["bare"][f"{mode}/{size}"]

    def drv(method: str, size: int) -> dict:
        return mr["drover"][f"{method}/{size}"]

    def counterpart(method: str, size: int) -> tuple[dict, dict, str]:
        call, floor, which = CORRESPONDS[method]
        psize = size if which == "same" else 0
        parent = f"{big} parent" if psize else "small parent"
        return bare(call, psize), bare(floor, psize), f"{BARE_MODES[call].split(' →')[0]}, {parent}"

    def kb_mb(kb) -> str:
        return "—" if kb is None or kb < 0 else mb(kb)

    out = [
        "## Start methods: restart latency per start method and supervisor size",
        "",
        'drover with one `stamp` child (`start_secs = "100ms"`, the shortest drover allows, `restart = "always"`) per',
        f"`start_method`, as is and with `--ballast-mib {mib}` (the supervisor holds {big} of",
        "touched memory): SIGKILL of the running child → its replacement's stamp. Bare calls",
        f"from `probe`, a small C parent, and the same holding {big} (mmap, MADV_NOHUGEPAGE,",
        "memset): t0 just before the call → the child's stamp. Floors: kill + waitpid + the",
        "call, a restart by the ideal supervisor. RssAnon / AnonHugePages: of the parent",
        "(drover or the probe) from /proc/PID/status and smaps_rollup. *others' CPU*: CPU used",
        "by processes outside the bench during that measurement, of all CPUs.",
        "",
    ]
    rows = []

    busy = []

    def others(s: dict) -> str:
        pct = s.get("others_pct")
        if pct is None:
            return "—"
        if pct > OTHERS_BUSY_PCT:
            busy.append(pct)
            return f"**{pct:.0f}%**"
        return f"{pct:.0f}%"

    def lat_cells(s: dict) -> list[str]:
        return [str(s["n"]), ms(s["median"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"])]

    refs = {("spawn", 0): REF["spawn"], ("fork", 0): REF["fork"], ("fork", mib): REF["fork_1g"]}
    for mode in BARE_MODES:
        for size in sizes:
            s = bare(mode, size)
            m = s["memory"]
            name = ("floor: " if mode.startswith("re") else "bare ") + BARE_MODES[mode].replace(
                " (floor)", ""
            )
            rows.append(
                [name, f"{big} touched" if size else "small", *lat_cells(s),
                 kb_mb(m.get("Anonymous")), kb_mb(m.get("AnonHugePages")), others(s),
                 refs.get((mode, size), "") if mib == 1024 or not size else ""]
            )
        thp = mr["bare"].get(f"{mode}-thp/{mib}")
        if thp:
            m = thp["memory"]
            rows.append(
                [f"{name} (ballast in huge pages)", f"{big}, MADV_HUGEPAGE", *lat_cells(thp),
                 kb_mb(m.get("Anonymous")), kb_mb(m.get("AnonHugePages")), others(thp),
                 "not in the ratios"]
            )
    for method in START_METHODS:
        for size in sizes:
            s = drv(method, size)
            rows.append(
                [f"**drover** `{method}` restart", f"--ballast-mib {size}" if size else "no ballast",
                 *lat_cells(s), mb(s["memory"]["anon_kb"]), kb_mb(s["memory"]["anon_huge_kb"]),
                 others(s), ""]
            )
    out.append(
        table(["", "parent", "n", "median", "p90", "p99", "max", "RssAnon", "AnonHugePages",
               "others' CPU", "reference"], rows)
    )

    out += [
        "",
        "Each drover method against the bare call it corresponds to (medians): `spawn` against",
        "posix_spawn, `fork` against fork+exec from a parent of drover's size, `forkserver`",
        "against fork+exec from a small parent (the fork server is small whatever drover's size).",
        "drover's number is a whole restart (kill → SIGCHLD → reap → start), the bare call only",
        "the start; *vs floor* compares with the same call preceded by kill + waitpid.",
        "",
    ]
    rows = []
    for method in START_METHODS:
        for size in sizes:
            d = drv(method, size)["median"]
            call, floor, name = counterpart(method, size)
            ratio = d / call["median"]
            goal = "—" if method == "fork" else f"{verdict(ratio <= GOAL_RATIO)}"
            rows.append(
                [f"`{method}`", f"--ballast-mib {size}" if size else "no ballast", ms(d), name,
                 ms(call["median"]), f"{ratio:.2f}×", goal, ms(floor["median"]),
                 f"{d / floor['median']:.2f}×"]
            )
    out.append(
        table(["drover", "supervisor", "drover median", "bare call", "bare median",
               "drover / bare", f"≤ {GOAL_RATIO:g}×", "floor median", "drover / floor"], rows)
    )

    out += [
        "",
        f"Dependence on the parent's size: median with {big} / median without.",
        "",
    ]
    rows = []
    size_ratio = {}
    for method in START_METHODS:
        small, large = drv(method, 0)["median"], drv(method, mib)["median"]
        size_ratio[method] = large / small
        if method == "fork":
            goal = f"tracks size (≥ {SIZE_TRACKS:g}×): {verdict(large / small >= SIZE_TRACKS)}"
        else:
            goal = f"independent (≤ {SIZE_INDEPENDENT:g}×): {verdict(large / small <= SIZE_INDEPENDENT)}"
        rows.append([f"**drover** `{method}`", ms(small), ms(large), f"{large / small:.2f}×", goal])
    for mode in ("spawn", "fork"):
        small, large = bare(mode, 0)["median"], bare(mode, mib)["median"]
        ref = f"reference {REF['fork']} → {REF['fork_1g']}" if mode == "fork" else ""
        rows.append([f"bare {BARE_MODES[mode]}", ms(small), ms(large), f"{large / small:.2f}×", ref])
    out.append(table(["", "small", big, f"{big} / small", "goal"], rows))

    ratio = {
        (m, size): drv(m, size)["median"] / counterpart(m, size)[0]["median"]
        for m in START_METHODS
        for size in sizes
    }

    def both(m: str) -> str:
        return " and ".join(f"{ratio[(m, size)]:.2f}×" for size in sizes)

    within = {m: all(ratio[(m, size)] <= GOAL_RATIO for size in sizes) for m in ("spawn", "forkserver")}
    out += [
        "",
        "Goal (the issue): drover's spawn and forkserver starts within 1.5× of the bare calls and",
        "independent of the supervisor's size; fork's cost visibly tracks the supervisor's size.",
        "",
        f"- `spawn` within {GOAL_RATIO:g}× of posix_spawn (no ballast and {big}): {both('spawn')}"
        f" — **{verdict(within['spawn'])}**",
        f"- `forkserver` within {GOAL_RATIO:g}× of fork+exec from a small parent: {both('forkserver')}"
        f" — **{verdict(within['forkserver'])}**",
        f"- `spawn` independent of size: {size_ratio['spawn']:.2f}× —"
        f" **{verdict(size_ratio['spawn'] <= SIZE_INDEPENDENT)}**; `forkserver`:"
        f" {size_ratio['forkserver']:.2f}× — **{verdict(size_ratio['forkserver'] <= SIZE_INDEPENDENT)}**",
        f"- `fork` tracks size: {size_ratio['fork']:.1f}× (bare fork+exec:"
        f" {bare('fork', mib)['median'] / bare('fork', 0)['median']:.1f}×) —"
        f" **{verdict(size_ratio['fork'] >= SIZE_TRACKS)}**",
    ]
    # Memory: what makes a fork expensive is resident 4 KiB pages.
    dm = {size: drv("fork", size)["memory"] for size in sizes}
    pm = bare("fork", mib)["memory"]
    out.append(
        f"- memory (THP {b.r['machine']['thp']}): drover RssAnon {mb(dm[0]['anon_kb'])} without"
        f" and {mb(dm[mib]['anon_kb'])} with `--ballast-mib {mib}`, AnonHugePages"
        f" {kb_mb(dm[mib]['anon_huge_kb'])} (its `vec![1u8; n]` is plain malloc memory: huge pages"
        " only when THP is `always`); probe with its ballast: Anonymous"
        f" {kb_mb(pm.get('Anonymous'))}, AnonHugePages {kb_mb(pm.get('AnonHugePages'))}"
    )
    thp = mr["bare"].get(f"fork-thp/{mib}")
    if thp and thp["memory"].get("AnonHugePages"):
        out.append(
            f"- transparent huge pages hide a parent's size: fork+exec from the {big} parent took"
            f" {ms(thp['median'])} with its ballast in huge pages"
            f" (AnonHugePages {kb_mb(thp['memory']['AnonHugePages'])}) against"
            f" {ms(bare('fork', mib)['median'])} in 4 KiB pages; hence MADV_NOHUGEPAGE on the"
            " probe's ballast, and drover's numbers hold for its AnonHugePages above"
        )
    servers = [drv("forkserver", size).get("server") for size in sizes]
    if all(servers):
        out.append(
            "- the fork server: VmRSS " + " and ".join(mb(s["rss_kb"]) for s in servers)
            + f" (drover without and with {big}), RssAnon "
            + " and ".join(mb(s["anon_kb"]) for s in servers)
        )
    if busy:
        out.append(
            f"- **other processes used more than {OTHERS_BUSY_PCT:g}% of the CPUs during"
            f" {len(busy)} of these measurements** (bold in *others' CPU*, up to"
            f" {max(busy):.0f}%): those latencies are inflated — rerun on a quiet machine"
        )
    for note in mr["notes"]:
        out.append(f"- {note}")
    out.append("")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"sections to run: {', '.join(SECTIONS)} or all (default: all)",
    )
    p.add_argument("--drover", default=DEFAULT_DROVER)
    p.add_argument("--stamp", default=BENCH / "stamp")
    p.add_argument("--probe", default=BENCH / "probe")
    p.add_argument("--supervisord", default=None, help="supervisord executable (omit: skip it)")
    p.add_argument("--restarts", type=int, default=200, help="drover / baseline iterations")
    p.add_argument("--sv-restarts", type=int, default=20, help="supervisord iterations")
    p.add_argument("--gap-ms", type=int, default=120, help="pause between two kills of drover's child (above start_secs: a child killed sooner is a failed start, which backs off)")
    p.add_argument("--idle-secs", type=float, default=10.0)
    p.add_argument(
        "--ballast-mib",
        type=int,
        default=1024,
        help="methods: the large supervisor / parent holds this many MiB of touched memory",
    )
    p.add_argument("--skip-fd-limit", action="store_true")
    p.add_argument(
        "--quiet-wait", type=float, default=60, help="wait this long at most for a quiet machine"
    )
    args = p.parse_args()
    unknown = [s for s in args.sections if s not in (*SECTIONS, "all")]
    if unknown:
        p.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}, all")
    if "all" in args.sections:
        args.sections = []
    if args.ballast_mib <= 0:
        p.error("--ballast-mib must be positive")

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
