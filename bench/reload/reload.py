#!/usr/bin/env python3
"""drover's config-reload benchmark.

Run it through `bash bench/reload/run.sh` (which builds and compiles what it
needs); `--help` lists the options. Standard library only.

Three measurements in one run, all ending at a CLOCK_MONOTONIC timestamp
(Python's time.monotonic_ns() is the same clock as bench/stamp.c's):

- raw inotify: rename(2) of a file into a watched directory → a blocked
  reader (bench/reload/inotify_watch.c) gets the event;
- drover: rename of the new config (`processes = k+1`) into place → the new
  child's stamp; drover watches the directory (notify), debounces 10 ms and
  applies the difference. The two are interleaved edit by edit, so both see
  the same machine;
- supervisord: rename of the new config (`numprocs=k+1`) into place →
  `supervisorctl reread && supervisorctl update` → the new process's stamp.

Every process it starts is stopped in a `finally` (also on Ctrl-C/SIGTERM);
the stamp children die with their parent (PR_SET_PDEATHSIG) and any that is
still alive at the end is SIGKILLed.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "bench"
RUN = OUT / "reload" / "run"

DEBOUNCE_MS = 10  # src/runtime/mod.rs: DEBOUNCE
GOAL_MS = 25  # the reload target
REFERENCE = {
    "inotify": "≈ 0.1 ms",
    "supervisorctl": "≈ 1350 ms",
}


class BenchError(Exception):
    """A step failed; the message says which and why."""


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or SIGINT: unwind through every `finally`."""


def on_signal(signum, _frame):
    raise Interrupted(f"killed by {signal.Signals(signum).name}")


# ----------------------------------------------------------------- helpers


IN_MODIFY = 0x00000002
_libc = ctypes.CDLL(None, use_errno=True)


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


class Stamps:
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
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            pid, ns = (int(x) for x in line.split())
            out.append((pid, ns))
            self.all[pid] = ns
        return out

    def wait_new(self, count: int, timeout: float, alive) -> list[tuple[int, int]]:
        """Waits (inotify, no polling) until `count` new stamps have arrived."""
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            got += self.new()
            if len(got) >= count:
                return got
            alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"timed out after {timeout:g} s: {len(got)} of {count} new stamps in {self.path}"
                )
            self.ino.wait(min(left, 0.5))

    def close(self) -> None:
        self.ino.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summary(latencies_ns: list[int]) -> dict:
    v = sorted(x / 1e6 for x in latencies_ns)
    if not v:
        return {"n": 0, "median": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "n": len(v),
        "min": v[0],
        "median": percentile(v, 50),
        "p90": percentile(v, 90),
        "p99": percentile(v, 99),
        "max": v[-1],
    }


def start_time(pid: int) -> int | None:
    """The process's start time (jiffies since boot): tells a pid from a reused one."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive_same(pid: int, started: int | None) -> bool:
    return started is not None and start_time(pid) == started


def kill_if_exe(pid: int, exe: str) -> bool:
    """SIGKILLs pid if it is still a live process running exe (not a reused pid)."""
    try:
        if os.readlink(f"/proc/{pid}/exe") == exe:
            os.kill(pid, signal.SIGKILL)
            return True
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return False


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME − CLOCK_MONOTONIC, read tightly (to map drover's log times)."""
    best = None
    for _ in range(20):
        a = time.monotonic_ns()
        r = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, r - (a + b) // 2)
    return best[1]


def log_times(path: Path, needle: str) -> list[int]:
    """CLOCK_REALTIME ns of every log line of drover's stderr that contains needle."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if needle not in line:
            continue
        stamp = line.split()[0]  # 2026-11-25T16:46:19.630807Z
        try:
            when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc
            )
        except ValueError:
            continue
        seconds = int(when.timestamp())
        out.append(seconds * 1_000_000_000 + when.microsecond * 1000)
    return out


# ------------------------------------------------------------------ load


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq + steal, total


def proc_cpu() -> dict[int, tuple[str, int]]:
    """pid -> (comm, utime+stime jiffies) of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry.name)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def background_load(seconds: float = 1.0) -> dict:
    """CPU used by everything else while we sleep, and the top consumers."""
    p0 = proc_cpu()
    b0, t0 = cpu_times()
    time.sleep(seconds)
    b1, t1 = cpu_times()
    p1 = proc_cpu()
    total = max(1, t1 - t0)
    ncpu = os.cpu_count() or 1
    per = []
    for pid, (comm, cpu) in p1.items():
        before = p0.get(pid, (comm, 0))[1]
        if cpu - before > 0 and pid != os.getpid():
            per.append((cpu - before, comm))
    per.sort(reverse=True)
    # A process's jiffies are of one CPU; /proc/stat's total is of all of them.
    top = [f"{comm} {100 * d * ncpu / total:.0f}%" for d, comm in per[:3]]
    return {
        "busy_pct": 100 * (b1 - b0) / total,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "top": top,
    }


# --------------------------------------------------------------- processes


class Procs:
    """Every long-running process started here, for guaranteed cleanup."""

    def __init__(self, stamp: Path):
        self.stamp = str(stamp)
        self.procs: list[subprocess.Popen] = []
        self.stamp_files: list[Path] = []

    def start(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def forget(self, p: subprocess.Popen) -> None:
        if p in self.procs:
            self.procs.remove(p)

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    print(f"warning: pid {p.pid} survived SIGKILL", file=sys.stderr)
        self.procs.clear()
        # Safety net: every stamp child ever recorded that still runs.
        for path in self.stamp_files:
            try:
                lines = path.read_bytes().split(b"\n")[:-1]
            except FileNotFoundError:
                continue
            for line in lines:
                kill_if_exe(int(line.split()[0]), self.stamp)


# ------------------------------------------------------------------ bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.drover = Path(args.drover).resolve()
        self.stamp = Path(args.stamp).resolve()
        self.watch = Path(args.watch).resolve()
        self.supervisord = Path(args.supervisord).resolve() if args.supervisord else None
        self.procs = Procs(self.stamp)
        self.notes: list[str] = []
        self.r: dict = {}
        self.began = time.monotonic()

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", flush=True)

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def check_quiet(self, when: str, wait: float = 0) -> None:
        deadline = time.monotonic() + wait
        load = background_load()
        if load["busy_pct"] > 5 and wait > 0:
            print(
                f"  the machine is busy ({load['busy_pct']:.0f}% CPU: {', '.join(load['top'])}); "
                f"waiting up to {wait:g} s for it to calm down",
                flush=True,
            )
            while load["busy_pct"] > 5 and time.monotonic() < deadline:
                load = background_load()
        self.r[f"load_{when}"] = load
        print(
            f"  load {when}: {load['busy_pct']:.0f}% CPU busy, loadavg {' '.join(load['loadavg'])}"
            + (f" (top: {', '.join(load['top'])})" if load["top"] else ""),
            flush=True,
        )
        if load["busy_pct"] > 5:
            self.note(
                f"the machine was busy {when} the run: {load['busy_pct']:.0f}% CPU used by other "
                f"processes ({', '.join(load['top'])}); latencies are inflated — rerun on a quiet machine"
            )

    def run(self) -> None:
        if RUN.exists():
            shutil.rmtree(RUN)
        RUN.mkdir(parents=True)
        self.r["machine"] = machine(self)
        self.step("checking that the machine is quiet")
        self.check_quiet("before", wait=self.args.quiet_wait)
        try:
            self.step(f"drover and raw inotify, {self.args.edits} edits each, interleaved")
            self.drover_and_inotify()
            if self.supervisord:
                self.step(f"supervisord, {self.args.sv_edits} edits")
                self.supervisord_edits()
            else:
                self.note("supervisord is not installed: its rows are skipped")
        finally:
            self.procs.cleanup()
        self.check_quiet("after")

    # -- drover + inotify

    def drover_config(self, n: int, d: Path) -> str:
        return (
            "[group.stamp]\n"
            f"command = [{json.dumps(str(self.stamp))}]\n"
            f"processes = {n}\n"
            'start_secs = "100ms"\n'
            'restart = "always"\n'
            f"env = {{ STAMP_DIR = {json.dumps(str(d))} }}\n"
        )

    def drover_and_inotify(self) -> None:
        args = self.args
        # drover
        d = RUN / "drover"
        d.mkdir()
        config, tmp = d / "drover.toml", d / ".drover.toml.tmp"
        socket = d / "drover.sock"
        config.write_text(self.drover_config(1, d))
        stamps = Stamps(d / "stamps")
        self.procs.stamp_files.append(stamps.path)
        err_path = d / "stderr.log"
        with open(d / "stdout.log", "wb") as out, open(err_path, "wb") as err:
            drover = self.procs.start(
                [self.drover, "run", config, "--socket", socket], stdout=out, stderr=err
            )

        def alive():
            if drover.poll() is not None:
                raise BenchError(f"drover exited with status {drover.returncode}: {tail(err_path)}")

        def status() -> dict:
            r = subprocess.run(
                [str(self.drover), "status", "--json", "--socket", str(socket)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
            )
            if r.returncode != 0:
                raise BenchError(f"drover status failed: {r.stderr.strip()}")
            return json.loads(r.stdout)

        def children(st: dict) -> list[dict]:
            return [c for g in st["groups"] if g["name"] == "stamp" for c in g["children"]]

        # raw inotify
        b = RUN / "inotify"
        b.mkdir()
        watched, btmp = b / "watched.toml", b / ".watched.toml.tmp"
        watched.write_text(self.drover_config(1, b))
        watcher = self.procs.start([self.watch, b, watched.name], stdout=subprocess.PIPE)
        wpoll = select.poll()
        wpoll.register(watcher.stdout.fileno(), select.POLLIN)
        wbuf = b""

        def watcher_line(timeout: float) -> str:
            nonlocal wbuf
            deadline = time.monotonic() + timeout
            while b"\n" not in wbuf:
                left = deadline - time.monotonic()
                if left <= 0 or not wpoll.poll(int(left * 1000) + 1):
                    if b"\n" in wbuf:
                        break
                    if left <= 0:
                        raise BenchError(f"inotify_watch said nothing within {timeout:g} s")
                    continue
                chunk = os.read(watcher.stdout.fileno(), 4096)
                if not chunk:
                    raise BenchError(f"inotify_watch exited with status {watcher.wait()}")
                wbuf += chunk
            line, wbuf = wbuf.split(b"\n", 1)
            return line.decode()

        if watcher_line(10) != "ready":
            raise BenchError("inotify_watch did not start")

        # drover's first child, then the socket
        stamps.wait_new(1, 10, alive)
        deadline = time.monotonic() + 10
        while not socket.exists():
            alive()
            if time.monotonic() > deadline:
                raise BenchError(f"drover's socket did not appear: {tail(err_path)}")
            time.sleep(0.005)
        first = children(status())
        running = {c["pid"] for c in first if c["state"] == "running"}
        if len(running) != 1:
            raise BenchError(f"drover did not start its one child: {first}")
        started = {pid: start_time(pid) for pid in running}
        offset = realtime_offset_ns()
        time.sleep(0.1)  # let the start settle

        pause = args.pause_ms / 1000
        raw, lat, t0s = [], [], []
        extra_stamps = lost = grew_wrong = restarts = 0
        problems: list[str] = []
        for i in range(args.edits):
            k = 1 + i
            text = self.drover_config(k + 1, d)
            # raw inotify: the same bytes, renamed into the watched directory
            btmp.write_text(text)
            t0 = time.monotonic_ns()
            os.rename(btmp, watched)
            line = watcher_line(5)
            if line == "overflow":
                raise BenchError("inotify queue overflow in the baseline watcher")
            raw.append(int(line) - t0)
            time.sleep(pause)

            # drover: k -> k+1
            tmp.write_text(text)
            t0 = time.monotonic_ns()
            os.rename(tmp, config)
            new = stamps.wait_new(1, args.timeout, alive)
            pid, ns = new[0]
            lat.append(ns - t0)
            t0s.append(t0)
            time.sleep(pause)
            alive()
            new += stamps.new()
            if len(new) != 1:
                extra_stamps += len(new) - 1
                problems.append(f"edit {i + 1}: {len(new)} children started: {new}")
            kids = children(status())
            now = {c["pid"] for c in kids if c["state"] == "running" and c["pid"]}
            restarts += sum(c["restarts"] for c in kids)
            if not running <= now:
                gone = running - now
                lost += len(gone)
                problems.append(f"edit {i + 1}: existing children {sorted(gone)} no longer running")
            if now != running | {pid} or len(kids) != k + 1:
                grew_wrong += 1
                problems.append(
                    f"edit {i + 1}: expected {k + 1} running children (the old ones + {pid}), "
                    f"status shows {len(now)} running of {len(kids)}"
                )
            for old in running:
                if old in now and not alive_same(old, started.get(old)):
                    lost += 1
                    problems.append(f"edit {i + 1}: pid {old} is not the same process any more")
            started[pid] = start_time(pid)
            running = now
            if (i + 1) % 20 == 0:
                print(
                    f"  {i + 1} edits: drover median so far {summary(lat)['median']:.2f} ms, "
                    f"raw inotify {summary(raw)['median']:.3f} ms",
                    flush=True,
                )
            time.sleep(pause)

        # drover's own record of each reload (CLOCK_REALTIME, µs) mapped to
        # CLOCK_MONOTONIC: t0 → "config reloaded" logged (after the apply).
        logged = log_times(err_path, "a config file changed: config reloaded")
        reloads = len(logged)
        logged_ns = [t - offset for t in logged]
        to_log = [l - t for l, t in zip(logged_ns, t0s)] if reloads == len(t0s) else []
        if reloads != len(t0s):
            problems.append(f"drover logged {reloads} reloads for {len(t0s)} edits")

        final = children(status())
        stamps_total = len(stamps.all)
        alive()
        sd = subprocess.run(
            [str(self.drover), "shutdown", "--socket", str(socket)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
        )
        try:
            code = drover.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("drover did not exit within 30 s of `drover shutdown`")
        self.procs.forget(drover)
        watcher.kill()
        watcher.wait()
        watcher.stdout.close()
        self.procs.forget(watcher)
        stamps.close()
        if sd.returncode != 0 or code != 0:
            problems.append(f"drover shutdown: {sd.stderr.strip()} exit {code}")
        for p in problems[:10]:
            self.note(p)
        if len(problems) > 10:
            self.note(f"... and {len(problems) - 10} more problems")
        warnings = [l for l in err_path.read_text(errors="replace").splitlines() if " WARN " in l or " ERROR " in l]
        for w in warnings[:5]:
            self.note(f"drover logged: {w.strip()}")
        self.r["inotify"] = {"raw_ns": raw, **summary(raw)}
        self.r["drover"] = {
            "raw_ns": lat,
            **summary(lat),
            "to_log": summary(to_log),
            "edits": len(lat),
            "reloads_logged": reloads,
            "children_final": len(final),
            "running_final": sum(1 for c in final if c["state"] == "running"),
            "stamps_total": stamps_total,
            "extra_stamps": extra_stamps,
            "existing_lost": lost,
            "wrong_sets": grew_wrong,
            "restarts_seen": restarts,
            "shutdown_exit": code,
        }

    # -- supervisord

    def supervisord_config(self, d: Path, n: int) -> str:
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
            f"command={self.stamp}\n"
            f"numprocs={n}\n"
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

    def supervisord_edits(self) -> None:
        args = self.args
        d = RUN / "supervisord"
        d.mkdir()
        conf, tmp = d / "supervisord.conf", d / ".supervisord.conf.tmp"
        conf.write_text(self.supervisord_config(d, 1))
        ctl = self.supervisord.parent / "supervisorctl"
        stamps = Stamps(d / "stamps")
        self.procs.stamp_files.append(stamps.path)
        log = d / "stdout.log"
        with open(log, "wb") as out:
            sv = self.procs.start([self.supervisord, "-c", conf], stdout=out, stderr=subprocess.STDOUT)

        def alive():
            if sv.poll() is not None:
                raise BenchError(f"supervisord exited with status {sv.returncode}: {tail(log)}")

        def supervisorctl(*cmd: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(ctl), "-c", str(conf), *cmd],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )

        def status() -> dict[str, tuple[str, int | None]]:
            r = supervisorctl("status")
            out = {}
            for line in r.stdout.splitlines():
                parts = line.split()
                if len(parts) < 2:
                    continue
                pid = None
                if "pid" in parts:
                    pid = int(parts[parts.index("pid") + 1].rstrip(","))
                out[parts[0]] = (parts[1], pid)
            return out

        stamps.wait_new(1, 20, alive)
        deadline = time.monotonic() + 20
        while True:
            alive()
            st = status()
            if st.get("stamp:stamp_00", ("", None))[0] == "RUNNING":
                break
            if time.monotonic() > deadline:
                raise BenchError(f"supervisord's first process is not RUNNING: {st}")
            time.sleep(0.05)
        time.sleep(0.5)

        new_child, all_running, first_new, cmd_done, reread_done = [], [], [], [], []
        kept_total = old_total = 0
        problems: list[str] = []
        ctl_log = open(d / "supervisorctl.log", "w")
        for i in range(args.sv_edits):
            k = 1 + i
            before = status()
            old = {name: pid for name, (state, pid) in before.items() if state == "RUNNING" and pid}
            if len(old) != k:
                problems.append(f"edit {i + 1}: {len(old)} of {k} processes RUNNING before it")
            old_started = {pid: start_time(pid) for pid in old.values()}
            stamps.new()  # skip anything already there
            tmp.write_text(self.supervisord_config(d, k + 1))
            t0 = time.monotonic_ns()
            os.rename(tmp, conf)
            r1 = supervisorctl("reread")
            t1 = time.monotonic_ns()
            r2 = supervisorctl("update") if r1.returncode == 0 else None
            t2 = time.monotonic_ns()
            ctl_log.write(
                f"# edit {i + 1}: numprocs {k} -> {k + 1}\n$ supervisorctl reread  (exit {r1.returncode})\n"
                f"{r1.stdout}{r1.stderr}"
            )
            if r2 is None:
                raise BenchError(f"supervisorctl reread failed: {r1.stdout}{r1.stderr}")
            ctl_log.write(f"$ supervisorctl update  (exit {r2.returncode})\n{r2.stdout}{r2.stderr}")
            if r2.returncode != 0:
                raise BenchError(f"supervisorctl update failed: {r2.stdout}{r2.stderr}")
            # Whatever supervisord starts: at least the new process; wait for
            # all k+1 if it restarts the group (it does; counted below).
            new = stamps.wait_new(1, args.timeout, alive)
            deadline = time.monotonic() + args.timeout
            while True:
                alive()
                st = status()
                names = [f"stamp:stamp_{j:02d}" for j in range(k + 1)]
                if all(st.get(n, ("", None))[0] == "RUNNING" for n in names):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"edit {i + 1}: not all {k + 1} processes RUNNING: {st}")
                time.sleep(0.02)
            new += stamps.new()
            seen = dict(new)
            newest_pid = st[f"stamp:stamp_{k:02d}"][1]
            if newest_pid not in seen:
                raise BenchError(f"edit {i + 1}: no stamp from the new process (pid {newest_pid})")
            new_child.append(seen[newest_pid] - t0)
            first_new.append(min(seen.values()) - t0)
            now_pids = {st[n][1] for n in names}
            if now_pids <= set(seen):
                all_running.append(max(seen[p] for p in now_pids) - t0)
            cmd_done.append(t2 - t0)
            reread_done.append(t1 - t0)
            kept = sum(1 for pid, s in old_started.items() if alive_same(pid, s) and pid in now_pids)
            kept_total += kept
            old_total += len(old)
            print(
                f"  edit {i + 1}: numprocs {k} -> {k + 1}: new process running after "
                f"{new_child[-1] / 1e6:.0f} ms (commands {t2 / 1e6 - t0 / 1e6:.0f} ms); "
                f"{len(old) - kept} of {len(old)} running processes restarted",
                flush=True,
            )
            time.sleep(args.sv_pause_ms / 1000)
        ctl_log.close()
        sv.send_signal(signal.SIGTERM)
        try:
            sv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("supervisord did not exit within 30 s of SIGTERM")
        self.procs.forget(sv)
        stamps.close()
        for p in problems:
            self.note(p)
        self.r["supervisord"] = {
            "version": subprocess.run(
                [str(self.supervisord), "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "raw_ns": new_child,
            **summary(new_child),
            "first_new": summary(first_new),
            "all_running": summary(all_running),
            "commands": summary(cmd_done),
            "reread": summary(reread_done),
            "kept": kept_total,
            "old": old_total,
        }


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no output)"
    return " | ".join(text[-lines:]) or "(no output)"


def machine(b: Bench) -> dict:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
            capture_output=True, text=True, timeout=10,
        ).stdout.splitlines()
        git = f"commit {head}" + (f" + uncommitted changes in {len(dirty)} src files" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        git = "git state unknown"
    return {
        "nproc": os.cpu_count(),
        "model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git,
        "drover": str(b.drover),
    }


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


def ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "—"
    x = a / b
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def report(b: Bench) -> str:
    r, m, a = b.r, b.r["machine"], b.args
    lines = [
        "# drover config-reload benchmark",
        "",
        f"{m['date']} · {m['nproc']} CPUs ({m['model']}) · Linux {m['kernel']} · Python {m['python']}",
        f"drover: {m['drover']} ({m['git']})"
        + (f" · {r['supervisord']['version']} (supervisord)" if "supervisord" in r else ""),
    ]
    for when in ("before", "after"):
        load = r.get(f"load_{when}")
        if load:
            lines.append(
                f"Other load {when} the run: {load['busy_pct']:.0f}% CPU, loadavg {' '.join(load['loadavg'])}"
                + (f" (top: {', '.join(load['top'])})" if load["top"] else "")
            )
    lines += ["", "Command: `bash bench/reload/run.sh" + (" " + " ".join(a.passthrough) if a.passthrough else "") + "`", ""]

    ino, drv, sv = r.get("inotify"), r.get("drover"), r.get("supervisord")
    lines += [
        "## Latency: the config renamed into place → the change applied",
        "",
        f"t0 = CLOCK_MONOTONIC just before rename(2) of the new file over the old one; "
        f"the end is the new child's own stamp (same clock). drover and the raw inotify "
        f"baseline alternate edit by edit ({a.edits} each, {a.pause_ms:g} ms pauses); "
        f"supervisord {a.sv_edits} edits. Percentiles are nearest-rank.",
        "",
    ]
    rows = []

    def row(name, s, ref=""):
        rows.append([name, str(s["n"]), ms(s["median"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"]), ref])

    if ino:
        row("raw inotify: rename → event read by a blocked reader", ino, REFERENCE["inotify"])
    if drv:
        row("drover: rename → new child running", drv, f"goal ≤ {GOAL_MS} ms")
        if drv["to_log"]["n"]:
            row("drover: rename → `config reloaded` logged (after the apply)", drv["to_log"])
    if sv:
        row("supervisord: rename, `reread && update` → new process running", sv, REFERENCE["supervisorctl"])
        row("supervisord: … → all k+1 processes running again", sv["all_running"])
        row("supervisord: … → `supervisorctl update` returned", sv["commands"])
        row("supervisord: … → `supervisorctl reread` returned", sv["reread"])
    lines += [table(["", "n", "median", "p90", "p99", "max", "reference"], rows), ""]

    rows = []
    if drv and ino:
        own = drv["median"] - DEBOUNCE_MS - ino["median"]
        rows.append(["drover / raw inotify (median)", ratio(drv["median"], ino["median"])])
        rows.append(
            [f"drover − {DEBOUNCE_MS} ms debounce − raw inotify (median)", ms(own)]
        )
        rows.append(
            [f"goal: applied within {GOAL_MS} ms (median / p99 / max)",
             " / ".join("met" if drv[q] <= GOAL_MS else "MISSED" for q in ("median", "p99", "max"))]
        )
    if drv and sv:
        rows.append(["supervisord / drover (median, new process running)", ratio(sv["median"], drv["median"])])
        rows.append(["supervisord / drover (p99 vs p99)", ratio(sv["p99"], drv["p99"])])
    if rows:
        lines += [table(["ratio", "value"], rows), ""]

    lines += ["## What happened to the running children", ""]
    rows = []
    if drv:
        ok = drv["existing_lost"] == 0 and drv["wrong_sets"] == 0 and drv["extra_stamps"] == 0
        rows.append([
            "drover",
            f"{drv['edits']} edits, processes 1 → {drv['edits'] + 1}; {drv['reloads_logged']} reloads logged; "
            f"{drv['stamps_total']} children ever started for {drv['children_final']} at the end "
            f"({drv['running_final']} running); existing children restarted or lost: {drv['existing_lost']}; "
            f"edits where the pid set was not the old set + one: {drv['wrong_sets']}; "
            f"restarts counted by drover: {drv['restarts_seen']} — "
            + ("the pid set only grew" if ok else "NOT only growing, see notes"),
        ])
    if sv:
        restarted = sv["old"] - sv["kept"]
        rows.append([
            "supervisord",
            f"{sv['n']} edits, numprocs 1 → {sv['n'] + 1}: {restarted} of the {sv['old']} processes that were "
            f"running before an edit were restarted by it (`update` stops and re-adds the whole "
            f"program group when its section changes)",
        ])
    lines += [table(["", "per edit"], rows), ""]

    if b.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in b.notes] + [""]
    lines += [
        "Files: target/bench/reload/run/{drover,inotify,supervisord}/ (configs, stamps, logs); "
        "raw numbers in target/bench/reload.json.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drover", required=True)
    p.add_argument("--stamp", required=True)
    p.add_argument("--watch", required=True, help="the compiled bench/reload/inotify_watch.c")
    p.add_argument("--supervisord", help="supervisord of a venv (supervisorctl next to it)")
    p.add_argument("--edits", type=int, default=100, help="drover and raw inotify edits (100)")
    p.add_argument("--sv-edits", type=int, default=10, help="supervisord edits (10)")
    p.add_argument("--pause-ms", type=float, default=20, help="pause after each measured edit (20)")
    p.add_argument("--sv-pause-ms", type=float, default=200, help="pause between supervisord edits (200)")
    p.add_argument("--timeout", type=float, default=30, help="wait this long at most for one change (30 s)")
    p.add_argument("--quiet-wait", type=float, default=60, help="wait this long at most for a quiet machine")
    args = p.parse_args()
    # The options as the user gave them to run.sh (without the ones run.sh adds).
    skip = False
    pt = []
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--drover", "--stamp", "--watch", "--supervisord"):
            skip = True
            continue
        if a.split("=")[0] in ("--drover", "--stamp", "--watch", "--supervisord"):
            continue
        pt.append(a)
    args.passthrough = pt

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    b = Bench(args)
    try:
        b.run()
    except (BenchError, Interrupted) as e:
        print(f"\nreload bench FAILED: {e or type(e).__name__}", file=sys.stderr)
        return 1
    text = report(b)
    print()
    print(text)
    (OUT / "reload.md").write_text(text)
    raw = {k: v for k, v in b.r.items()}
    raw["notes"] = b.notes
    (OUT / "reload.json").write_text(json.dumps(raw, indent=1))
    print(f"written: {OUT / 'reload.md'}, {OUT / 'reload.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
