#!/usr/bin/env python3
"""drover's chaos soak: messages through a queue while children are SIGKILLed
and the config is edited, then an audit of every message.

    python3 bench/chaos/soak.py                  # 60 s (builds drover --release)
    python3 bench/chaos/soak.py --duration 15    # what CI runs
    python3 bench/chaos/soak.py --help

Not a timed test: it runs for --duration, then checks invariants and prints a
summary table. Exit status 0 when every invariant held, 1 on any violation,
2 when the soak itself could not run. bench/chaos/README.md describes what
it does and why each number is trustworthy. Standard library only.

Every process it starts carries DROVER_CHAOS_MARKER=<random> in its
environment; at the end (success, failure, Ctrl-C, SIGTERM) drover is
SIGKILLed if it still runs and then every process with that marker, until
none is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, str(HERE.parent))

from lib import BenchError  # noqa: E402
from lib.drover import Drover, StatusTimeout  # noqa: E402
from lib.proc import CLK_TCK, children, cmdline, environ, fd_count, machine_cpu, pids, stat, status_kb  # noqa: E402
from lib.procs import Interrupted, Procs, catch_signals  # noqa: E402
from lib.stats import ms, summary  # noqa: E402

WORKER = HERE / "chaos_worker.py"
PYTHON = sys.executable  # not a shim (pyenv's is a shell script)
MARKER_VAR = "DROVER_CHAOS_MARKER"
STATUS_TIMEOUT = 10  # s; a slower answer is a violation (drover's loop was blocked)

CONSUMERS = (6, 8)  # the spawned consumer group alternates between these
PRODUCERS = 4
FS_CONSUMERS = 2  # forkserver Python function consumers, never scaled


# ------------------------------------------------------------------ config


def config_text(run: Path, generation: int, inject_loss: bool = False) -> str:
    """The whole config for one generation: even = the base config."""
    consumers = CONSUMERS[generation % 2]
    common = """restart = "always"
start_secs = "100ms"
restart_delay = "50ms"
restart_delay_max = "1s"
max_restarts = 1000
stop_timeout = "30s"
"""
    q = json.dumps  # a JSON string is a TOML basic string
    python, worker = q(PYTHON), q(str(WORKER))
    env = f'CHAOS_RECORDS = {q(str(run / "records"))}, PYTHONDONTWRITEBYTECODE = "1"'
    return f"""# Written by bench/chaos/soak.py, generation {generation}.
[supervisor]
control_socket = {q(str(run / 'drover.sock'))}
state_dir = {q(str(run / 'state'))}

[queue.jobs]
capacity = 1000
prefetch = 8
max_deliveries = 50
dead_letter = "dead"

[queue.dead]
capacity = 100000
prefetch = 8
max_deliveries = 50

[group.producers]
command = [{python}, {worker}, "produce"]
processes = {PRODUCERS}
outputs = ["jobs"]
env = {{ {env}, CHAOS_GENERATION = "{generation}" }}
{common}
[group.consumers]
command = [{python}, {worker}, "consume"]
processes = {consumers}
inputs = ["jobs"]
env = {{ {env}{', CHAOS_INJECT_LOSS = "1"' if inject_loss else ''} }}
{common}
[group.fconsumers]
python = "chaos_worker:consume"
start_method = "forkserver"
preload = ["select", "socket"]
python_executable = {python}
cwd = {q(str(HERE))}
processes = {FS_CONSUMERS}
inputs = ["jobs"]
env = {{ {env} }}
{common}
[group.deadsink]
command = [{python}, {worker}, "dead"]
start_method = "forkserver"
inputs = ["dead"]
env = {{ {env} }}
{common}"""


def write_config(path: Path, text: str, in_place: bool) -> None:
    """Atomically (temp file + rename) or in place (truncate, write half,
    pause, write the rest: drover must wait for the close)."""
    if in_place:
        data = text.encode()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.005)
            f.write(data[len(data) // 2 :])
        return
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.rename(tmp, path)


# ------------------------------------------------------------------ /proc


def has_marker(pid: int, needle: bytes) -> bool:
    return needle in environ(pid)


def marked_processes(needle: bytes) -> list[int]:
    me = os.getpid()
    out = []
    for pid in pids():
        if pid == me:
            continue
        st = stat(pid)
        if st and st.state != "Z" and has_marker(pid, needle):
            out.append(pid)
    return out


def kill_marked(needle: bytes) -> list[int]:
    """SIGKILLs every live process carrying the marker until none is left;
    returns the pids it found the first time."""
    first = None
    for _ in range(200):
        victims = marked_processes(needle)
        if first is None:
            first = victims
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
    return first or []


def diagnose(pid: int) -> list[str]:
    """What a process's threads and its children are doing, from /proc:
    state, wchan, the syscall in progress (number and first argument) and,
    when readable, the kernel stack of each of drover's threads."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            return f"({e.strerror})"

    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = f"/proc/{pid}/task/{tid}"
        st = read(f"{base}/stat")
        state = st[st.rindex(")") + 2:].split()[0] if ")" in st else "?"
        syscall = " ".join(read(f"{base}/syscall").split()[:2])
        fds = ""
        parts = syscall.split()
        if len(parts) == 2 and parts[0].isdigit():
            try:
                fds = " fd " + str(int(parts[1], 16)) + " = " + os.readlink(f"/proc/{pid}/fd/{int(parts[1], 16)}")
            except (OSError, ValueError):
                pass
        out.append(f"drover thread {tid} ({read(base + '/comm')}): state {state}, "
                   f"wchan {read(base + '/wchan')}, syscall {syscall}{fds}")
        stack = read(f"{base}/stack")
        if not stack.startswith("("):
            out.append("  stack: " + " < ".join(line.split()[-1] for line in stack.splitlines()[:6]))
    for child, state in sorted(children(pid)):
        out.append(f"child {child}: state {state}, wchan {read(f'/proc/{child}/wchan')}, {cmdline(child)[:60]}")
    return out


def is_producer(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"produce" in argv


# ------------------------------------------------------------------ drover


def child_pids(status: dict) -> list[tuple[str, int]]:
    return [
        (g["name"], c["pid"])
        for g in status["groups"]
        for c in g["children"]
        if c.get("pid")
    ]


def queue(status: dict, name: str) -> dict:
    return next(q for q in status["queues"] if q["name"] == name)


def settled(status: dict, generation: int) -> bool:
    """Every group has exactly its `processes` children, all running."""
    want = {"producers": PRODUCERS, "consumers": CONSUMERS[generation % 2],
            "fconsumers": FS_CONSUMERS, "deadsink": 1}
    for g in status["groups"]:
        kids = g["children"]
        if g["processes"] != want.get(g["name"]) or len(kids) != g["processes"]:
            return False
        if any(c["state"] != "running" or not c.get("pid") for c in kids):
            return False
    return True


def wait_settled(d: Drover, generation: int, timeout: float) -> dict:
    """Until every child runs and the pid set stayed the same for 1 s."""
    deadline = time.monotonic() + timeout
    stable_since, pids = None, None
    while time.monotonic() < deadline:
        if not d.is_running():
            raise BenchError("drover exited while the soak waited for its children")
        st = d.status()
        now = time.monotonic()
        if settled(st, generation):
            p = sorted(pid for _, pid in child_pids(st))
            if p != pids:
                stable_since, pids = now, p
            elif now - stable_since >= 1.0:
                return st
        else:
            stable_since, pids = None, None
        time.sleep(0.1)
    raise BenchError(f"children did not settle within {timeout:.0f} s")


def footprint(d: Drover, status: dict) -> dict:
    """drover's VmRSS and open fds: the smallest of 5 samples 100 ms apart
    (a control connection or a child being replaced holds a few fds for a
    moment; the minimum is the steady state). Also its children that status
    does not list: the fork server and the Python fork server when all is
    well; a process drover lost track of shows up here."""
    rss, anon, fds, unlisted = [], [], [], []
    listed = {pid for _, pid in child_pids(status)}
    for _ in range(5):
        rss.append(status_kb(d.pid, "VmRSS"))
        anon.append(status_kb(d.pid, "RssAnon"))
        fds.append(fd_count(d.pid))
        unlisted.append(sorted(p for p, s in children(d.pid) if s != "Z" and p not in listed))
        time.sleep(0.1)
    fewest = min(unlisted, key=len)
    return {"rss_kib": min(rss), "anon_kib": min(anon), "fds": min(fds), "rss_samples": rss, "fd_samples": fds,
            "unlisted": [(p, cmdline(p)) for p in fewest]}


# ------------------------------------------------------------------ sampler


class Sampler(threading.Thread):
    """Once a second: zombies whose parent is drover, drover's liveness."""

    def __init__(self, d: Drover):
        super().__init__(daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.samples = 0
        self.max_zombies = 0
        self.samples_with_zombies = 0
        self.lingering: set[int] = set()  # zombie in two samples in a row
        self.last: set[int] = set()
        self.lock = threading.Lock()

    def sample(self) -> set[int]:
        return {pid for pid, state in children(self.d.pid) if state == "Z"}

    def run(self) -> None:
        while not self.stop.wait(1.0):
            if not self.d.is_running():
                continue
            z = self.sample()
            with self.lock:
                self.samples += 1
                self.max_zombies = max(self.max_zombies, len(z))
                self.samples_with_zombies += bool(z)
                self.lingering |= z & self.last
                self.last = z


# ------------------------------------------------------------------ audit


def read_lines(path: Path) -> list[str]:
    """Complete lines only: a line without its newline was being written
    when its process was killed (and so was never acted upon)."""
    data = path.read_bytes()
    return data.decode(errors="replace").split("\n")[:-1]


def message_len(inc: str, seq: int) -> int:
    """Length of chaos_worker.message(inc, seq, _)."""
    return len(inc) + len(str(seq)) + 4 + 40  # 3 colons, 1 flag, 40 padding


class Incarnation:
    """One producer process, from its record file."""

    def __init__(self, path: Path, wchar_at_kill: int | None):
        self.inc = path.name
        raw = path.read_bytes()
        lines = raw.decode().split("\n")[:-1]
        self.ok = bool(lines) and lines[0].startswith("wchar ")
        if not self.ok:
            self.n = self.certain = 0
            self.last = None
            self.poison = set()
            return
        base = int(lines[0].split()[1])
        body = lines[1:]
        end = body.pop() if body and body[-1] in ("done", "unsent") else None
        self.n = len(body)  # seqs 0..n-1 were recorded
        self.poison = {i for i, line in enumerate(body) if line.endswith(" p")}
        for i in (0, self.n - 1):
            if self.n and int(body[i].split()[0]) != i:
                raise BenchError(f"{path}: line {i + 2} is not seq {i}")
        # The fate of the last recorded message: sent, unsent, doubt
        # (nobody looked) or inconsistent (wchar matches neither).
        if not self.n:
            self.last = None
        elif end == "done":
            self.last = "sent"
        elif end == "unsent":
            self.last = "unsent"
        elif wchar_at_kill is None:
            self.last = "doubt"
        else:
            before = base + len(raw) + sum(message_len(self.inc, s) for s in range(self.n - 1))
            if wchar_at_kill == before + message_len(self.inc, self.n - 1):
                self.last = "sent"
            elif wchar_at_kill == before:
                self.last = "unsent"
            else:
                self.last = "inconsistent"
                self.wchar = (wchar_at_kill, before)
        self.certain = self.n if self.last == "sent" else max(0, self.n - 1)


def audit(run: Path, inspected: dict[str, int | None]) -> dict:
    """Every message recorded by a producer against what consumers and the
    dead-letter destinations recorded. Counts per message are kept in one
    byte each (millions of messages)."""
    rec = run / "records"
    incs: dict[str, Incarnation] = {}
    for f in (rec / "prod").iterdir():
        incs[f.name] = Incarnation(f, inspected.get(f.name))
    counts = {i: bytearray(p.n) for i, p in incs.items()}
    unknown: list[str] = []

    consumed_total = 0
    for f in (rec / "cons").iterdir():
        for line in read_lines(f):
            inc, _, seq = line.partition(":")
            c = counts.get(inc)
            s = int(seq) if seq.isdigit() else -1
            if c is None or not 0 <= s < len(c):
                unknown.append(line)
                continue
            consumed_total += 1
            if c[s] < 255:
                c[s] += 1

    dead: dict[str, set[int]] = {}
    dead_sink_total = dead_files_total = 0

    def dead_letter(inc: str, seq: str) -> None:
        s = int(seq) if seq.isdigit() else -1
        if inc not in incs or not 0 <= s < incs[inc].n:
            unknown.append(f"{inc}:{seq} (dead-lettered)")
        else:
            dead.setdefault(inc, set()).add(s)

    for f in (rec / "dead").iterdir():
        for line in read_lines(f):
            dead_sink_total += 1
            dead_letter(*line.partition(":")[::2])
    # Dead letters of the dead-letter queue itself (or of `jobs`, were the
    # `dead` queue ever missing) are records under state_dir.
    dl_dir = run / "state" / "dead-letters"
    for f in sorted(dl_dir.glob("*.jsonl")) if dl_dir.is_dir() else []:
        for line in read_lines(f):
            dead_files_total += 1
            parts = json.loads(line)["message"].split(":")
            dead_letter(parts[0], parts[1] if len(parts) > 1 else "")

    lost: list[str] = []
    fates = {"sent": 0, "unsent": 0, "doubt": 0, "inconsistent": 0}
    doubt_unseen: list[str] = []
    unsent_seen: list[str] = []
    inconsistent: list[str] = []
    unique = poison = poison_consumed = dead_poison = both = 0
    for i, p in incs.items():
        c, d = counts[i], dead.get(i, set())
        unique += p.n - c.count(0)
        poison += len(p.poison)
        poison_consumed += sum(1 for s in p.poison if c[s])
        dead_poison += len(d & p.poison)
        both += sum(1 for s in d if c[s])
        pos = c.find(0, 0, p.certain)
        while pos != -1:
            if pos not in d:
                lost.append(f"{i}:{pos}")
            pos = c.find(0, pos + 1, p.certain)
        if p.last is None:
            continue
        fates[p.last] += 1
        last = p.n - 1
        seen = bool(c[last]) or last in d
        if p.last == "doubt" and not seen:
            doubt_unseen.append(f"{i}:{last}")
        if p.last == "unsent" and seen:
            unsent_seen.append(f"{i}:{last}")
        if p.last == "inconsistent":
            inconsistent.append(f"{i}:{last} wchar {p.wchar[0]} vs {p.wchar[1]} + message")
    n_dead = sum(len(d) for d in dead.values())
    return {
        "producer_incarnations": len(incs),
        "produced": sum(p.certain for p in incs.values()),
        "last_message_fates": fates,
        "in_doubt_unseen": len(doubt_unseen),
        "in_doubt_sample": doubt_unseen[:10],
        "unsent_but_seen": len(unsent_seen),
        "unsent_but_seen_sample": unsent_seen[:10],
        "inconsistent": inconsistent[:10],
        "poison": poison,
        "consumed_records": consumed_total,
        "consumed_unique": unique,
        "duplicates": consumed_total - unique,
        "dead_lettered": n_dead,
        "dead_lettered_poison": dead_poison,
        "dead_lettered_other": n_dead - dead_poison,
        "dead_sink_records": dead_sink_total,
        "dead_letter_file_records": dead_files_total,
        "consumed_and_dead_lettered": both,
        "poison_consumed": poison_consumed,
        "lost": len(lost),
        "lost_sample": lost[:10],
        "unknown": len(unknown),
        "unknown_sample": unknown[:10],
    }


# ------------------------------------------------------------------ soak


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.marker = os.urandom(8).hex()
        self.needle = f"{MARKER_VAR}={self.marker}".encode()
        self.run = Path(tempfile.mkdtemp(prefix="drover-chaos."))
        self.conf = self.run / "conf" / "soak.toml"
        self.procs = Procs()
        self.d: Drover | None = None
        self.exit_code: int | None = None  # drover's, after SIGTERM
        self.died_at: float | None = None  # drover exited before we asked it to
        self.sampler: Sampler | None = None
        self.r: dict = {
            "kills": 0, "kills_by_group": {}, "kill_misses": 0, "unlisted_kills": 0,
            "reloads": 0, "reloads_in_place": 0, "config_errors": 0,
            "stalls": [], "violations": [], "notes": [], "progress": [],
            "producer_kills_uninspected": 0, "unresponsive": [],
        }
        self.inspected: dict[str, int | None] = {}  # producer incarnation -> wchar at kill
        self.generation = 0
        self.timing: dict[str, list[float]] = {"status": [], "kill": []}
        self.began = time.monotonic()

    # -- helpers

    def violation(self, text: str) -> None:
        self.r["violations"].append(text)
        print(f"!! {text}", flush=True)

    def note(self, text: str) -> None:
        self.r["notes"].append(text)
        print(f"-- {text}", flush=True)

    def step(self, text: str) -> None:
        print(f"== {time.monotonic() - self.began:5.1f} s  {text}", flush=True)

    def edit(self, generation: int, in_place: bool) -> None:
        self.generation = generation
        text = config_text(self.run, generation, self.args.inject_loss)
        write_config(self.conf, text, in_place)

    # -- phases

    def setup(self) -> None:
        for sub in ("conf", "state", "records/prod", "records/cons", "records/dead"):
            (self.run / sub).mkdir(parents=True, exist_ok=True)
        self.edit(0, in_place=False)
        r = subprocess.run([str(self.args.drover), "check", str(self.run / "conf")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"drover check refused the soak's config:\n{r.stdout}{r.stderr}")

    def start(self) -> None:
        env = {**os.environ, MARKER_VAR: self.marker}
        env.pop("DROVER_SOCKET", None)
        d = self.d = Drover(self.args.drover, self.procs, self.run, self.run / "conf", env=env)
        self.load_before = os.getloadavg()
        self.busy0 = machine_cpu()
        self.t0 = time.monotonic()
        d.start()
        d.wait_socket(20)
        st = wait_settled(d, 0, timeout=30)
        fast = d.status_socket(STATUS_TIMEOUT)
        if [g["name"] for g in fast["groups"]] != [g["name"] for g in st["groups"]]:
            raise BenchError(f"the control socket's status differs from `drover status --json`: {fast}")
        self.sampler = Sampler(d)
        self.sampler.start()

    def warm_up(self) -> dict:
        time.sleep(self.args.warmup)
        st = wait_settled(self.d, self.generation, timeout=30)
        fp = footprint(self.d, st)
        fp["acked"] = queue(st, "jobs")["acked"]
        return fp

    def chaos(self) -> None:
        a, d, r = self.args, self.d, self.r
        start = time.monotonic()
        end = start + a.duration
        next_kill, next_edit, next_report = start, start + a.edit_interval, start + 5
        last_acked, last_progress = None, start
        last_error = None
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if not d.is_running():
                self.died_at = now - start
                self.violation(f"drover died {now - start:.1f} s into the chaos phase "
                               f"(exit status {d.proc.returncode})")
                return
            if now >= next_edit:
                in_place = self.rng.random() < a.in_place_share
                self.edit(self.generation + 1, in_place)
                r["reloads"] += 1
                r["reloads_in_place"] += in_place
                next_edit += a.edit_interval
            if now >= next_kill:
                t_kill = time.monotonic()
                try:
                    st = d.status_socket(STATUS_TIMEOUT)
                except StatusTimeout as e:
                    self.unresponsive(now - start, str(e))
                    next_kill = time.monotonic()
                    continue
                t_status = time.monotonic()
                error = st.get("config_error")
                if error and error != last_error:
                    r["config_errors"] += 1
                    self.violation(f"status shows a config error {now - start:.1f} s in "
                                   f"(a config was read half-written?): {error[:300]}")
                last_error = error
                acked = queue(st, "jobs")["acked"]
                if acked != last_acked:
                    last_acked, last_progress = acked, now
                elif now - last_progress > a.stall_secs:
                    r["stalls"].append(round(now - start, 1))
                    self.violation(f"no message acked for {now - last_progress:.1f} s "
                                   f"({now - start:.1f} s in): queue jobs = {queue(st, 'jobs')}")
                    last_progress = now
                self.kill_one(st)
                done = time.monotonic()
                self.timing["status"].append(t_status - t_kill)
                self.timing["kill"].append(done - t_status)
                # On schedule; a late kill is made up for, but never more
                # than one interval's worth (no bursts after a long stall).
                next_kill = max(next_kill + a.kill_interval, done - a.kill_interval)
            if now >= next_report:
                self.report_progress(now - start)
                next_report += 5
            time.sleep(max(0.0, min(next_kill, next_edit, end) - time.monotonic()))

    def unresponsive(self, t: float, why: str) -> None:
        """drover did not answer: say so, with what it and its children were
        doing (read from /proc while it still hangs), and carry on."""
        diag = diagnose(self.d.pid)
        self.r["unresponsive"].append({"t": round(t, 1), "why": why, "diagnosis": diag})
        self.violation(f"drover did not answer status {t:.1f} s into the chaos ({why}); "
                       "what it was doing:\n      " + "\n      ".join(diag))

    def kill_one(self, st: dict) -> None:
        a, r = self.args, self.r
        victims = child_pids(st)
        if a.unlisted_kill_every and (r["kills"] + 1) % a.unlisted_kill_every == 0:
            listed = {pid for _, pid in victims}
            unlisted = [pid for pid, s in children(self.d.pid)
                        if s != "Z" and pid not in listed]
            victims = [("(unlisted)", pid) for pid in unlisted] or victims
        if not victims:
            return
        group, pid = self.rng.choice(victims)
        # Never signal a process that is not ours (a pid reused since status).
        if not has_marker(pid, self.needle):
            r["kill_misses"] += 1
            return
        try:
            if is_producer(pid):
                self.kill_producer(pid)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            r["kill_misses"] += 1
            return
        r["kills"] += 1
        r["unlisted_kills"] += group == "(unlisted)"
        r["kills_by_group"][group] = r["kills_by_group"].get(group, 0) + 1

    def kill_producer(self, pid: int) -> None:
        """SIGSTOP, read how many bytes it has written (/proc/PID/io wchar)
        and which record file it writes, then SIGKILL. The audit uses the
        byte count to tell whether its last recorded message was sent."""
        os.kill(pid, signal.SIGSTOP)
        inc, wchar = None, None
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                st = stat(pid)
                if st is None or st.state in "TtZX":
                    break
                time.sleep(0.0002)
            if st and st.state in "Tt":
                prod = self.run / "records" / "prod"
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    except OSError:
                        continue
                    if target.parent == prod:
                        inc = target.name
                for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                    if line.startswith("wchar:"):
                        wchar = int(line.split()[1])
        except OSError:
            pass
        finally:
            os.kill(pid, signal.SIGKILL)
        if inc is not None:
            self.inspected[inc] = wchar
        else:
            self.r["producer_kills_uninspected"] += 1

    def report_progress(self, t: float) -> None:
        try:
            st = self.d.status_socket(STATUS_TIMEOUT)
        except BenchError:
            return  # the kill loop reports a drover that does not answer
        j = queue(st, "jobs")
        row = {"t": round(t), "acked": j["acked"], "depth": j["depth"],
               "redelivered": j["redelivered"], "dead_lettered": j["dead_lettered"],
               "kills": self.r["kills"], "reloads": self.r["reloads"],
               "rss_kib": status_kb(self.d.pid, "VmRSS"), "anon_kib": status_kb(self.d.pid, "RssAnon"),
               "fds": fd_count(self.d.pid)}
        self.r["progress"].append(row)
        print(f"   {row['t']:>4} s: acked {row['acked']:>8}  depth {row['depth']:>5}  "
              f"redelivered {row['redelivered']:>6}  kills {row['kills']:>5}  "
              f"reloads {row['reloads']:>3}  rss {row['rss_kib']} KiB (anon {row['anon_kib']})  fds {row['fds']}",
              flush=True)

    def finish(self) -> None:
        a, d, r = self.args, self.d, self.r
        self.step("chaos over: back to the base config, waiting for the children to settle")
        if self.generation % 2:
            self.edit(self.generation + 1, in_place=False)
            r["reloads"] += 1
        # The base config again (consumers back to 6): same children as at
        # the start, so the footprint compares like with like.
        st = wait_settled(d, self.generation, timeout=60)
        time.sleep(a.warmup)
        st = wait_settled(d, self.generation, timeout=30)
        r["footprint_end"] = footprint(d, st)

        self.step("stopping the producers (drover stop producers), draining the queues")
        c = d.ctl("stop", "producers", timeout=40)
        if c.returncode != 0:
            self.violation(f"`drover stop producers` failed: {c.stdout}{c.stderr}")
        deadline = time.monotonic() + a.drain_timeout
        while True:
            st = d.status()
            qs = [queue(st, "jobs"), queue(st, "dead")]
            producers = next(g for g in st["groups"] if g["name"] == "producers")
            if all(q["depth"] == 0 and q["in_flight"] == 0 for q in qs) and all(
                c["state"] == "stopped" for c in producers["children"]
            ):
                break
            if time.monotonic() > deadline:
                self.violation(f"queues not drained after {a.drain_timeout:.0f} s: {qs}")
                break
            time.sleep(0.1)
        r["queues_end"] = st["queues"]

        self.step("checking for zombies")
        time.sleep(1.0)
        self.sampler.stop.set()
        zombies = self.sampler.sample()
        time.sleep(0.5)
        zombies &= self.sampler.sample()  # still there half a second later
        r["zombies_end"] = sorted(zombies)
        if zombies:
            self.violation(f"zombies whose parent is drover at the end: {sorted(zombies)}")

        self.step("SIGTERM to drover, waiting for it to exit")
        if d.is_running():
            t = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = d.proc.wait(timeout=a.shutdown_timeout)
                r["shutdown_secs"] = round(time.monotonic() - t, 2)
            except subprocess.TimeoutExpired:
                self.violation(f"drover still running {a.shutdown_timeout:.0f} s after SIGTERM")
            if self.exit_code not in (None, 0):
                self.violation(f"drover exited with status {self.exit_code} after SIGTERM "
                               "(0 = every child stopped in time)")
            left = marked_processes(self.needle) if self.exit_code is not None else []
            if left:
                desc = [f"{p} ({Path(f'/proc/{p}/cmdline').read_bytes()[:60]!r})" for p in left
                        if Path(f"/proc/{p}").exists()]
                self.violation(f"processes left behind after drover exited: {desc}")
        else:
            self.violation("drover was not running at the end")

    # -- whole run

    def go(self) -> int:
        a, r = self.args, self.r
        self.step(f"run directory {self.run}")
        self.setup()
        self.step("starting drover")
        self.start()
        self.step(f"warm-up {a.warmup:.0f} s")
        r["footprint_start"] = self.warm_up()
        self.step(f"chaos for {a.duration:.0f} s: SIGKILL a child every "
                  f"{a.kill_interval * 1000:.0f} ms, edit the config every {a.edit_interval:.1f} s")
        acked0 = queue(self.d.status_socket(STATUS_TIMEOUT), "jobs")["acked"]
        self.chaos_started = time.monotonic()
        self.chaos()
        if self.d.is_running():
            try:
                r["messages_in_chaos"] = queue(self.d.status_socket(STATUS_TIMEOUT), "jobs")["acked"] - acked0
            except BenchError:
                pass
        r["chaos_secs"] = round(time.monotonic() - self.chaos_started, 1)
        r["kills_scheduled"] = int(a.duration / a.kill_interval)
        r["status_ms"] = summary([int(t * 1e9) for t in self.timing["status"]])
        r["kill_ms"] = summary([int(t * 1e9) for t in self.timing["kill"]])
        if self.d.is_running():
            self.finish()
        r["elapsed_secs"] = round(time.monotonic() - self.t0, 1)
        self.load_after = os.getloadavg()
        busy1 = machine_cpu()
        ours = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours_s = ours.ru_utime + ours.ru_stime
        busy_s = (busy1[0] - self.busy0[0]) / CLK_TCK
        total_s = (busy1[2] - self.busy0[2]) / CLK_TCK
        r["load"] = {"loadavg_before": self.load_before[0], "loadavg_after": self.load_after[0],
                     "machine_busy_pct": round(100 * busy_s / total_s, 1) if total_s else None,
                     "soak_tree_cpu_s": round(ours_s, 1),
                     "others_pct": round(100 * max(0.0, busy_s - ours_s) / total_s, 1) if total_s else None}
        self.step("auditing the records")
        r["audit"] = audit(self.run, self.inspected)
        self.judge()
        return 1 if r["violations"] else 0

    def check_counters(self) -> None:
        """drover's queue counters at the end against the records."""
        au = self.r["audit"]
        qs = {q["name"]: q for q in self.r.get("queues_end", [])}
        if "jobs" not in qs or "dead" not in qs:
            return
        checks = []
        for name in ("jobs", "dead"):
            q = qs[name]
            # Every delivery ends in an ack, a redelivery or a dead letter.
            checks.append((f"{name}: delivered = acked + redelivered + dead_lettered",
                           q["delivered"], q["acked"] + q["redelivered"] + q["dead_lettered"]))
        j = qs["jobs"]
        # A message is acked once; one that was recorded and then
        # dead-lettered (its consumer died before acking, 50 times) never.
        checks.append(("jobs: acked = consumed (unique) − consumed and dead-lettered",
                       j["acked"], au["consumed_unique"] - au["consumed_and_dead_lettered"]))
        checks.append(("jobs: dead_lettered = dead letters recorded", j["dead_lettered"], au["dead_lettered"]))
        checks.append(("dead: acked + dead_lettered = dead letters recorded",
                       qs["dead"]["acked"] + qs["dead"]["dead_lettered"], au["dead_lettered"]))
        self.r["counter_checks"] = [(what, a, b) for what, a, b in checks]
        for what, a, b in checks:
            if a != b:
                self.violation(f"drover's counters disagree with the records: {what}: {a} ≠ {b}")

    def judge(self) -> None:
        a, r = self.args, self.r
        au = r["audit"]
        if au["lost"]:
            self.violation(f"{au['lost']} messages certainly sent were neither consumed nor "
                           f"dead-lettered, e.g. {au['lost_sample']}")
        if au["unknown"]:
            self.violation(f"{au['unknown']} messages consumed or dead-lettered that no producer "
                           f"recorded, e.g. {au['unknown_sample']}")
        if au["poison_consumed"]:
            self.violation(f"{au['poison_consumed']} poison messages were recorded by a consumer")
        if au["in_doubt_unseen"]:
            self.violation(f"{au['in_doubt_unseen']} messages of unknown fate: recorded by a producer "
                           f"that died without being inspected, and never seen: "
                           f"{au['in_doubt_sample']} (lost or never sent: 0 lost cannot be claimed)")
        if au["unsent_but_seen"]:
            self.violation(f"{au['unsent_but_seen']} messages consumed although their producer had "
                           f"not sent them: {au['unsent_but_seen_sample']}")
        if au["inconsistent"]:
            self.violation(f"a killed producer's byte count matches neither outcome: {au['inconsistent']}")
        fs, fe = r.get("footprint_start"), r.get("footprint_end")
        if fs and fe and len(fe["unlisted"]) > len(fs["unlisted"]):
            self.violation(f"drover has children that status does not list: {fe['unlisted']} "
                           f"(after warm-up only {fs['unlisted']})")
        self.check_counters()
        orphans = [line for line in self.d.stderr_lines(200) if "orphaned descendants still running" in line]
        if orphans:
            self.violation(f"at shutdown drover found processes it did not supervise: {orphans[0]}")
        if fs and fe:
            dfd = fe["fds"] - fs["fds"]
            rss_tol = max(a.rss_tolerance_kib, fs["rss_kib"] * a.rss_tolerance_pct / 100)
            if dfd > a.fd_tolerance:
                self.violation(f"drover's open fds grew from {fs['fds']} to {fe['fds']} "
                               f"(tolerance {a.fd_tolerance})")
            # RssAnon too: the kernel may drop pages of drover's binary
            # under memory pressure, which would hide a growing heap.
            for key, name in (("rss_kib", "VmRSS"), ("anon_kib", "RssAnon")):
                if fe[key] - fs[key] > rss_tol:
                    self.violation(f"drover's {name} grew from {fs[key]} to {fe[key]} KiB "
                                   f"(tolerance {rss_tol:.0f} KiB)")
            r["rss_tolerance_kib"] = round(rss_tol)
        elif self.d and self.died_at is None:
            self.violation("no footprint at the end")
        if r["kills"] == 0:
            self.violation("no child was killed: the soak tested nothing")


# ------------------------------------------------------------------ report


def report(s: Soak) -> str:
    r, a = s.r, s.args
    au = r.get("audit", {})
    fs, fe = r.get("footprint_start", {}), r.get("footprint_end", {})
    d = s.d
    msgs = r.get("messages_in_chaos")
    rate = f" ({msgs / r['chaos_secs']:,.0f}/s)" if msgs and r.get("chaos_secs") else ""
    kbg = ", ".join(f"{g} {n}" for g, n in sorted(r["kills_by_group"].items()))
    load = r.get("load", {})

    def ok(cond):
        return "ok" if cond else "VIOLATION"

    rows = [
        ("chaos phase", f"{r.get('chaos_secs', '?')} s (run {r.get('elapsed_secs', '?')} s in all)", ""),
        ("messages acked during chaos", f"{msgs:,}{rate}" if msgs is not None else "?", ""),
        ("produced (certainly sent)", f"{au.get('produced', 0):,}", ""),
        ("last message of each producer: sent/unsent/unknown",
         "{sent}/{unsent}/{doubt} of {n} producer processes{bad}".format(
             n=au.get("producer_incarnations", 0),
             bad=f" ({len(au['inconsistent'])} inconsistent)" if au.get("inconsistent") else "",
             **au.get("last_message_fates", {"sent": 0, "unsent": 0, "doubt": 0})),
         ok(not au.get("in_doubt_unseen") and not au.get("inconsistent"))),
        ("consumed (unique)", f"{au.get('consumed_unique', 0):,}", ""),
        ("duplicates", f"{au.get('duplicates', 0):,}", ""),
        ("dead-lettered", f"{au.get('dead_lettered', 0)} ({au.get('dead_lettered_poison', 0)} poison "
                          f"of {au.get('poison', 0)}, {au.get('dead_lettered_other', 0)} other)", ""),
        ("lost = produced − consumed − dead-lettered", f"{au.get('lost', '?')}", ok(au.get("lost") == 0)),
        ("consumed but never produced", f"{au.get('unknown', '?')}", ok(au.get("unknown") == 0)),
        ("drover's queue counters agree with the records",
         f"{sum(a == b for _, a, b in r.get('counter_checks', []))} of {len(r.get('counter_checks', []))} checks",
         ok(r.get("counter_checks") and all(a == b for _, a, b in r["counter_checks"]))),
        ("kills (SIGKILL)", f"{r['kills']} of {r.get('kills_scheduled', '?')} scheduled ({kbg}; "
                            f"{r['kill_misses']} already gone)", ok(r["kills"] > 0)),
        ("status over the control socket", "median {}, p99 {}, max {}".format(
            *(ms(r.get("status_ms", {}).get(q)) for q in ("median", "p99", "max"))), ""),
        ("config edits", f"{r['reloads']} ({r['reloads_in_place']} in place)",
         ok(r["config_errors"] == 0)),
        (f"stalls: no ack for {a.stall_secs:.0f} s / no status answer for {STATUS_TIMEOUT} s",
         f"{len(r['stalls'])} / {len(r['unresponsive'])}", ok(not r["stalls"] and not r["unresponsive"])),
        ("zombies (sampled every 1 s)",
         f"max {s.sampler.max_zombies if s.sampler else '?'} in a sample, "
         f"{s.sampler.samples_with_zombies if s.sampler else '?'}/{s.sampler.samples if s.sampler else '?'} "
         f"samples; {len(s.sampler.lingering) if s.sampler else '?'} seen twice", ""),
        ("zombies at the end", f"{len(r.get('zombies_end', []))}", ok(not r.get("zombies_end"))),
        ("drover VmRSS (RssAnon) start → end",
         f"{fs.get('rss_kib', '?')} ({fs.get('anon_kib', '?')}) → {fe.get('rss_kib', '?')} "
         f"({fe.get('anon_kib', '?')}) KiB (tolerance +{r.get('rss_tolerance_kib', '?')})",
         ok(fs and fe and all(fe[k] - fs[k] <= r.get("rss_tolerance_kib", 0) for k in ("rss_kib", "anon_kib")))),
        ("drover fds start → end", f"{fs.get('fds', '?')} → {fe.get('fds', '?')} (tolerance +{a.fd_tolerance})",
         ok(fs and fe and fe["fds"] - fs["fds"] <= a.fd_tolerance)),
        ("drover's children that status does not list, start → end",
         f"{len(fs.get('unlisted', []))} → {len(fe.get('unlisted', []))} (fork server, Python fork server)",
         ok(fs and fe and len(fe["unlisted"]) <= len(fs["unlisted"]))),
        ("drover alive until SIGTERM", "yes" if d and s.died_at is None else "NO", ok(d and s.died_at is None)),
        ("drover exit status after SIGTERM",
         f"{s.exit_code if d else '?'} after {r.get('shutdown_secs', '?')} s", ok(d and s.exit_code == 0)),
        ("machine load", f"loadavg {load.get('loadavg_before', 0):.2f} → {load.get('loadavg_after', 0):.2f}; "
                         f"others used {load.get('others_pct', '?')}% of the CPUs", ""),
    ]
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    out = [f"| {'':<{w0}} | {'':<{w1}} | check |", f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|-------|"]
    out += [f"| {k:<{w0}} | {v:<{w1}} | {c:<5} |" for k, v, c in rows]
    if r["violations"]:
        out += ["", f"VIOLATIONS ({len(r['violations'])}):"] + [f"  - {v}" for v in r["violations"]]
    if r["notes"]:
        out += ["", "notes:"] + [f"  - {n}" for n in r["notes"]]
    return "\n".join(out)


# ------------------------------------------------------------------ main


def build() -> Path:
    print("== cargo build --release", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return ROOT / "target" / "release" / "drover"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=60, help="seconds of chaos")
    p.add_argument("--kill-interval", type=float, default=0.05, help="seconds between SIGKILLs")
    p.add_argument("--edit-interval", type=float, default=2.0, help="seconds between config edits")
    p.add_argument("--drover", type=Path, help="drover binary; without it: cargo build --release")
    p.add_argument("--warmup", type=float, default=3, help="seconds of traffic before the first footprint")
    p.add_argument("--in-place-share", type=float, default=0.33,
                   help="share of edits written in place instead of rename")
    p.add_argument("--unlisted-kill-every", type=int, default=50,
                   help="every Nth kill hits a child of drover that status does not list instead (fork "
                        "server, Python fork server, an old child a rolling restart is stopping); 0 = never")
    p.add_argument("--fd-tolerance", type=int, default=2, help="fds drover may gain")
    p.add_argument("--rss-tolerance-kib", type=int, default=1024, help="KiB of RSS drover may gain ...")
    p.add_argument("--rss-tolerance-pct", type=float, default=20, help="... or this %% of its start RSS if more")
    p.add_argument("--stall-secs", type=float, default=5, help="no ack for this long is a violation")
    p.add_argument("--drain-timeout", type=float, default=60,
                   help="seconds for the queues to empty once the producers stopped")
    p.add_argument("--shutdown-timeout", type=float, default=30,
                   help="seconds for drover to exit after SIGTERM")
    p.add_argument("--seed", type=int, help="random seed (kills, in-place edits)")
    p.add_argument("--inject-loss", action="store_true",
                   help="self-check: each spawned consumer acks one message without recording it; "
                        "the soak must then report lost > 0 and fail")
    p.add_argument("--keep", action="store_true", help="keep the run directory even when all is well")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    if args.drover is None:
        args.drover = build()
    args.drover = args.drover.resolve()
    if not args.drover.exists():
        print(f"soak: no drover binary at {args.drover}", file=sys.stderr)
        return 2

    catch_signals()
    print(f"== drover chaos soak: {platform.node()}, {os.cpu_count()} CPUs, seed {args.seed}, "
          f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
    s = Soak(args)
    code = 2
    try:
        code = s.go()
    except BenchError as e:
        print(f"soak: {e}", file=sys.stderr)
        if s.d:
            print("drover's last log lines:\n  " + "\n  ".join(s.d.stderr_lines(20)), file=sys.stderr)
        code = 2
    except Interrupted as e:
        print(f"soak: {e}; cleaning up", file=sys.stderr)
        code = 130
    finally:
        if s.sampler:
            s.sampler.stop.set()
        s.procs.cleanup()  # drover, if it still runs, and everything in its session
        stray = kill_marked(s.needle)
        if stray and code == 0:
            print(f"soak: killed stray processes {stray}", file=sys.stderr)
    if "audit" in s.r:
        print()
        print(report(s))
    s.r["seed"] = args.seed
    s.r["run_dir"] = str(s.run)
    if args.json:
        args.json.write_text(json.dumps(s.r, indent=1, default=str))
    log_summary(s)
    if code == 0 and not args.keep:
        shutil.rmtree(s.run, ignore_errors=True)
    else:
        print(f"\nrun directory kept: {s.run} (stderr.log, stdout.log, records/, conf/)")
    print(f"\nsoak: {'PASS' if code == 0 else 'FAIL'}")
    return code


def log_summary(s: Soak) -> None:
    """The warning and error lines of drover's log, grouped by their shape."""
    if not s.d or not s.d.stderr_path.exists():
        return
    shapes: dict[str, int] = {}
    for line in s.d.stderr_path.read_text(errors="replace").splitlines():
        if " WARN " not in line and " ERROR " not in line and "panic" not in line:
            continue
        shape = re.sub(r"\d+", "N", line.split(" ", 1)[-1])
        shapes[shape] = shapes.get(shape, 0) + 1
    if shapes:
        print("\ndrover's warnings and errors (digits replaced by N):")
        for shape, n in sorted(shapes.items(), key=lambda x: -x[1])[:15]:
            print(f"  {n:>6} × {shape[:200]}")


if __name__ == "__main__":
    sys.exit(main())
