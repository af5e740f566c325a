"""drover's queue benchmark: messages/s and latency through
drover's queues, side by side with a bare SEQPACKET socketpair and Python's
multiprocessing.Queue / SimpleQueue, all measured in the same run.

Run it through `bash bench/queues/run.sh`, which builds drover and the C
helper first. Standard library only. Everything it creates is under
target/bench/queues/; the report goes to stdout and target/bench/queues.md,
the raw numbers to target/bench/queues.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Reference figures of the issue, from this 2-core machine.
REF = {"bare_64": 735_000, "queue_64": 230_000, "simple_64": 160_000, "rtt_us": 50}

SIZES = [64, 4096]
DROVER_MODES = [
    # (key, label, delivery, prefetch, ack)
    ("amo64", "drover at-most-once, prefetch 64", "at-most-once", 64, False),
    ("amo1", "drover at-most-once, prefetch 1", "at-most-once", 1, False),
    ("alo64", "drover at-least-once, prefetch 64", "at-least-once", 64, True),
    ("alo1", "drover at-least-once, prefetch 1", "at-least-once", 1, True),
]
PREFETCH_1 = ("amo1", "alo1")  # one message per round trip: a tenth of N
PY_KINDS = [("mpq", "multiprocessing.Queue", "queue"), ("mpsq", "multiprocessing.SimpleQueue", "simple")]
LABELS = {"bare": "bare SEQPACKET socketpair", **{k: l for k, l, *_ in DROVER_MODES},
          **{k: l for k, l, _ in PY_KINDS}}
DROVER_ARGS = {k: (d, p, a) for k, _, d, p, a in DROVER_MODES}
PY_ARG = {k: a for k, _, a in PY_KINDS}


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + irq + softirq + steal, total


def proc_cpu() -> dict[int, tuple[str, int]]:
    """pid -> (name, utime + stime ticks) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return out


def own_cpu() -> float:
    """CPU seconds of this process and of every child it reaped."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def background_load(seconds: float = 1.0) -> tuple[float, list[str]]:
    """Percent of all CPUs used by other processes while we sleep, and the
    busiest of them over that second."""
    p0 = proc_cpu()
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    p1 = proc_cpu()
    used = sorted(((ticks - p0[pid][1], name) for pid, (name, ticks) in p1.items()
                   if pid in p0 and ticks > p0[pid][1]), reverse=True)
    top = [f"{name} {100 * ticks / CLK_TCK / seconds:.0f}% of a core" for ticks, name in used[:4]]
    return 100 * (b1 - b0) / max(1, t1 - t0), top


def wait_for(what: str, timeout: float, check, interval: float = 0.005, alive=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if alive:
            alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ drover


def toml_str(s: str) -> str:
    return json.dumps(s)


def toml_list(items: list) -> str:
    return "[" + ", ".join(toml_str(str(i)) for i in items) + "]"


class Drover:
    """One `drover run` with one queue `bench`, a consumer group and a
    producer group of qb programs, in its own directory."""

    def __init__(self, bench: "Bench", name: str):
        self.b = bench
        self.dir = bench.work / name
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "state").mkdir(parents=True)
        self.sock = self.dir / "drover.sock"
        self.config = self.dir / "drover.toml"
        self.proc: subprocess.Popen | None = None
        self.children: list[int] = []

    def write_config(self, *, delivery: str, prefetch: int, capacity: int,
                     consumer: list | None, producer: list, producers: int = 1) -> None:
        lines = [
            "[supervisor]",
            f"state_dir = {toml_str(str(self.dir / 'state'))}",
            "",
            "[queue.bench]",
            f"capacity = {capacity}",
            "max_message_bytes = 65536",
            f"delivery = {toml_str(delivery)}",
            f"prefetch = {prefetch}",
            "",
        ]
        if consumer:
            lines += [
                "[group.consumer]",
                f"command = {toml_list(consumer)}",
                'inputs = ["bench"]',
                'restart = "never"',
                'start_secs = "100ms"',
                "",
            ]
        lines += [
            "[group.producer]",
            f"command = {toml_list(producer)}",
            'outputs = ["bench"]',
            f"processes = {producers}",
            'restart = "never"',
            'start_secs = "100ms"',
            "",
        ]
        self.config.write_text("\n".join(lines))

    def start(self) -> None:
        self.log = open(self.dir / "drover.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.b.drover), "run", str(self.config), "--socket", str(self.sock)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"drover exited with status {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = (self.dir / "drover.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def status(self) -> dict:
        out = subprocess.run(
            [str(self.b.drover), "status", "--json", "--socket", str(self.sock)],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode != 0:
            raise BenchError(f"drover status failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def queue(self) -> dict:
        return next(q for q in self.status()["queues"] if q["name"] == "bench")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            subprocess.run(
                [str(self.b.drover), "shutdown", "--socket", str(self.sock)],
                capture_output=True, timeout=10,
            )
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"  !! drover did not stop in 15 s; SIGKILL: {self.log_tail(3)}")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Safety net: qb children whose pids we learnt (PR_SET_PDEATHSIG kills
        # them with drover anyway).
        for pid in self.children:
            try:
                if os.readlink(f"/proc/{pid}/exe") == str(self.b.qb.resolve()):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()


def consumer_state(pid: int) -> str:
    """Where a (stalled) consumer is: its kernel wait channel and how many
    bytes wait unread in its socket (from /proc/net/unix via ss, if there)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "running"
    except OSError:
        return "gone"
    recvq = "?"
    try:
        out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line and line.startswith("u_seq"):
                recvq = line.split()[2]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"in {wchan}, {recvq} bytes unread in its socket"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


# ------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.drover = Path(args.drover).resolve()
        self.qb = Path(args.qb).resolve()
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        # cases: "<row>_<size>_<tput|lat>" -> result (throughput: the median
        # of the repeats, with every run's msgs/s in "runs").
        self.r: dict = {"cases": {}, "notes": [], "flood": {}, "diag": {}, "load": {}}
        self.runs: dict[str, list[dict]] = {}

    def count(self, row: str, size: int, mode: str) -> int:
        """Messages of one run: throughput runs move N messages (a tenth of
        that with prefetch 1, one round trip each); latency runs lat_n."""
        if mode == "lat":
            return self.args.lat_n
        n = self.args.n64 if size == 64 else self.args.n4k
        return max(1000, n // 10) if row in PREFETCH_1 else n

    def step(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def timeout(self, n: int, per_s: int = 10_000) -> float:
        return 30 + n / per_s

    # -- one case, with the load the rest of the machine added meanwhile

    def measured(self, key: str, label: str, fn) -> dict:
        """Runs one case; adds `other_load_pct`: CPU the machine used beyond
        this bench and everything it started (all reaped by then, so their
        CPU is in RUSAGE_CHILDREN), in percent of all CPUs."""
        self.step(label)
        b0, t0, o0 = *machine_cpu(), own_cpu()
        try:
            res = fn()
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        b1, t1, o1 = *machine_cpu(), own_cpu()
        res["other_load_pct"] = max(0.0, 100 * ((b1 - b0) - (o1 - o0) * CLK_TCK) / max(1, t1 - t0))
        if res.get("error"):
            self.r["notes"].append(f"{key}: {res['error']}")
        return res

    def case(self, row: str, size: int, mode: str) -> dict:
        n = self.count(row, size, mode)
        rate = self.args.rate if mode == "lat" else 0
        key = f"{row}_{size}_{mode}"
        label = f"{LABELS[row]}, {size} B, {'throughput' if mode == 'tput' else 'latency'}, {n:,} messages"
        if row == "bare":
            return self.measured(key, label, lambda: self.bare(size, mode, n, rate))
        if row in PY_ARG:
            return self.measured(key, label, lambda: self.python(PY_ARG[row], size, mode, n, rate))
        delivery, prefetch, ack = DROVER_ARGS[row]
        return self.measured(key, label, lambda: self.run_drover(key, delivery, prefetch, ack, size, mode, n, rate))

    # -- baselines

    def bare(self, size: int, mode: str, n: int, rate: float) -> dict:
        out = self.work / f"bare_{size}_{mode}.json"
        out.unlink(missing_ok=True)
        subprocess.run([str(self.qb), "pair", str(n), str(size), mode, str(rate), str(out)],
                       check=True, timeout=self.timeout(n))
        return json.loads(out.read_text())

    def pingpong(self, size: int) -> dict:
        out = self.work / f"pingpong_{size}.json"
        out.unlink(missing_ok=True)
        subprocess.run([str(self.qb), "pingpong", str(self.args.rtt_n), str(size), str(out)],
                       check=True, timeout=120)
        return json.loads(out.read_text())

    def python(self, arg: str, size: int, mode: str, n: int, rate: float) -> dict:
        out = subprocess.run(
            [self.args.python, str(HERE / "pyq.py"), arg, mode, str(n), str(size), str(rate)],
            capture_output=True, text=True, timeout=self.timeout(n),
        )
        if out.returncode != 0:
            raise BenchError(" ".join(out.stderr.strip().splitlines()[-1:]))
        return json.loads(out.stdout)

    # -- drover

    def run_drover(self, name, delivery, prefetch, ack, size, mode, count, rate,
                   perf: list | None = None) -> dict:
        d = Drover(self, name)
        ready_c, ready_p, result = d.dir / "ready.consumer", d.dir / "ready.producer", d.dir / "result.json"
        d.write_config(
            delivery=delivery, prefetch=prefetch, capacity=self.args.capacity,
            consumer=[self.qb, "consume", count, size, mode, int(ack), ready_c, result],
            producer=[self.qb, "produce", count, size, rate, ready_p],
        )
        tool = None
        try:
            d.start()
            pids = wait_for("the consumer and producer to start", 15,
                            lambda: (read_pid(ready_c), read_pid(Path(f"{ready_p}.0")))
                            if ready_c.exists() and Path(f"{ready_p}.0").exists() else None,
                            alive=d.alive)
            d.children = list(pids)
            time.sleep(0.05)  # let drover settle after the starts
            rss_start = status_kb(d.pid, "VmRSS")
            if perf:
                tool = subprocess.Popen([*perf, "-p", str(d.pid)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                time.sleep(0.5)  # perf needs a moment to attach
            cpu0, cs0, t0 = cpu_ticks(d.pid), context_switches(d.pid), time.monotonic()
            os.kill(pids[1], signal.SIGUSR1)
            rss_max = rss_start
            deadline = time.monotonic() + self.timeout(count)
            # Progress check: one `drover status` a second (cheap next to the
            # traffic); no new delivery for `stall_secs` while the consumer
            # still waits for messages is a stall, reported as such.
            next_check, progress = time.monotonic() + 1, (-1, time.monotonic())
            while not result.exists():
                d.alive()
                rss_max = max(rss_max, status_kb(d.pid, "VmRSS"))
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(f"no result after {self.timeout(count):g} s; queue: {d.queue()}")
                if now >= next_check:
                    next_check = now + 1
                    q = d.queue()
                    if q["delivered"] != progress[0]:
                        progress = (q["delivered"], now)
                    elif now - progress[1] >= self.args.stall_secs and not result.exists():
                        raise BenchError(
                            f"STALLED: nothing delivered for {now - progress[1]:.0f} s after {q['delivered']:,} "
                            f"of {count:,} messages, the consumer waiting for more ({consumer_state(pids[0])}); "
                            f"queue: depth {q['depth']}, in_flight {q['in_flight']}")
                time.sleep(0.02)
            cpu1, cs1, t1 = cpu_ticks(d.pid), context_switches(d.pid), time.monotonic()
            if tool:
                tool.send_signal(signal.SIGINT)
                tool.wait(30)
                tool = None
            res = json.loads(result.read_text())
            # The last acks may still be in flight to drover.
            expected_acked = count if ack else 0
            try:
                q = wait_for("drover to count every delivery and ack", 5, lambda: (
                    lambda q: q if q["delivered"] == count and q["acked"] == expected_acked else None)(d.queue()),
                    interval=0.02)
            except BenchError:
                q = d.queue()
            res.update({
                "drover_cpu_s": (cpu1 - cpu0) / CLK_TCK,
                "drover_wall_s": t1 - t0,
                "drover_cs": cs1 - cs0,
                "rss_start_kb": rss_start,
                "rss_max_kb": rss_max,
                "hwm_kb": status_kb(d.pid, "VmHWM"),
                "queue": q,
            })
            if q["delivered"] != count or q["acked"] != expected_acked or q["redelivered"]:
                res["error"] = res.get("error") or f"unexpected queue counters: {q}"
            if res.get("bad_size") or res.get("out_of_order"):
                res["error"] = res.get("error") or (
                    f"{res['bad_size']} messages of a wrong size, {res['out_of_order']} out of order")
            return res
        finally:
            if tool and tool.poll() is None:
                tool.send_signal(signal.SIGINT)
                try:
                    tool.wait(30)
                except subprocess.TimeoutExpired:
                    tool.kill()
            d.stop()

    def flood(self, size: int) -> None:
        """Producers that never stop and no consumer: drover must hold at
        most `capacity` messages, and its memory must stop growing there."""
        name, producers, cap = f"flood_{size}", self.args.flood_producers, self.args.capacity
        self.step(f"flood: {producers} producers, no consumer, {size} B, capacity {cap}")
        d = Drover(self, name)
        ready_p = d.dir / "ready.producer"
        d.write_config(delivery="at-most-once", prefetch=1, capacity=cap, consumer=None,
                       producer=[self.qb, "produce", 10 * cap, size, 0, ready_p], producers=producers)
        res: dict = {"size": size, "producers": producers, "capacity": cap}
        try:
            d.start()
            files = [Path(f"{ready_p}.{i}") for i in range(producers)]
            wait_for("the producers to start", 15, lambda: all(f.exists() for f in files), alive=d.alive)
            d.children = [read_pid(f) for f in files]
            time.sleep(0.05)
            res["rss_empty_kb"] = status_kb(d.pid, "VmRSS")
            for pid in d.children:
                os.kill(pid, signal.SIGUSR1)
            wait_for("the queue to fill", 60, lambda: d.queue()["depth"] >= cap, interval=0.05, alive=d.alive)
            time.sleep(1.0)  # producers keep pushing against the full queue
            q = d.queue()
            res.update({
                "depth": q["depth"],
                "rss_full_kb": status_kb(d.pid, "VmRSS"),
                "hwm_kb": status_kb(d.pid, "VmHWM"),
            })
            time.sleep(1.0)
            res["rss_later_kb"] = status_kb(d.pid, "VmRSS")
            res["depth_later"] = d.queue()["depth"]
            res["per_message_b"] = (res["rss_full_kb"] - res["rss_empty_kb"]) * 1024 / cap
        except BenchError as e:
            res["error"] = str(e)
            self.r["notes"].append(f"{name}: {e}")
        finally:
            d.stop()
        self.r["flood"][str(size)] = res

    # -- diagnostics: where drover's time goes

    def diagnostics(self) -> None:
        perf = shutil.which("perf")
        if not perf:
            self.r["diag"]["note"] = "perf is not installed: no syscall counts or profile"
            return
        calls = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{c}" for c in (
            "epoll_wait", "epoll_pwait", "epoll_ctl", "recvfrom", "sendto", "recvmsg",
            "sendmsg", "ioctl", "read", "write", "futex", "mmap", "munmap", "brk", "madvise")]
        for key, label, delivery, prefetch, ack in DROVER_MODES:
            for size in SIZES:
                n = max(1000, self.args.diag_n // 10) if key in PREFETCH_1 else self.args.diag_n
                name = f"diag_{key}_{size}"
                self.step(f"perf: syscalls and profile of drover, {label}, {size} B, {n:,} messages")
                stat_out = self.work / f"{name}.stat.csv"
                rec_out = self.work / f"{name}.perf.data"
                entry: dict = {"n": n}
                try:
                    self.run_drover(name + "_stat", delivery, prefetch, ack, size, "tput", n, 0,
                                    perf=[perf, "stat", "-x,", "-o", str(stat_out), "-e", ",".join(calls)])
                    entry["syscalls"] = parse_perf_stat(stat_out, n)
                    if key == "amo64" or size == 64:
                        self.run_drover(name + "_rec", delivery, prefetch, ack, size, "tput", n, 0,
                                        perf=[perf, "record", "-q", "-F", "2999", "-g", "-o", str(rec_out)])
                        entry["profile"] = perf_profile(perf, rec_out)
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    entry["error"] = str(e)
                self.r["diag"][f"{key}_{size}"] = entry

    # -- the run

    def run(self) -> None:
        a = self.args
        self.r["machine"] = machine()
        rows = ["bare", *(k_ for k_, *_ in DROVER_MODES), *(k_ for k_, *_ in PY_KINDS)]
        for rnd in range(a.repeat):
            self.quiet(f"throughput round {rnd + 1}", a.quiet_wait)
            print(f"== throughput, round {rnd + 1} of {a.repeat}", flush=True)
            for size in SIZES:
                for row in rows:
                    self.runs.setdefault(f"{row}_{size}_tput", []).append(self.case(row, size, "tput"))
        for key, runs in self.runs.items():
            self.r["cases"][key] = median_run(runs)
        self.quiet("latency", a.quiet_wait)
        print("== latency", flush=True)
        for size in SIZES:
            for row in rows:
                self.r["cases"][f"{row}_{size}_lat"] = self.case(row, size, "lat")
            self.r["cases"][f"rtt_{size}"] = self.measured(
                f"rtt_{size}", f"bare socketpair round trip, {size} B, {a.rtt_n:,} round trips",
                lambda: self.pingpong(size))
        print("== memory under a flood", flush=True)
        for size in SIZES:
            self.flood(size)
        self.quiet("end", 0)
        if not a.no_diag:
            print("== diagnostics (perf)", flush=True)
            self.diagnostics()

    def quiet(self, when: str, wait: float) -> None:
        busy, top = background_load()
        if busy > 5 and wait > 0:
            print(f"  the machine is busy ({busy:.0f}% CPU: {', '.join(top) or '?'}); "
                  f"waiting up to {wait:g} s for it to calm down", flush=True)
            deadline = time.monotonic() + wait
            while busy > 5 and time.monotonic() < deadline:
                busy, top = background_load()
        self.r["load"][when] = {
            "busy_pct": busy,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "top": top,
        }


def median_run(runs: list[dict]) -> dict:
    """The run with the median msgs/s, plus every run's msgs/s and the
    highest other load seen over the runs."""
    good = [r for r in runs if not r.get("error") and r.get("msgs_per_s")]
    if not good:
        return runs[-1]
    good.sort(key=lambda r: r["msgs_per_s"])
    med = dict(good[(len(good) - 1) // 2])
    med["runs"] = [r.get("msgs_per_s") for r in runs]
    med["other_load_pct"] = max(r.get("other_load_pct", 0) for r in runs)
    if len(good) < len(runs):
        med["failed_runs"] = len(runs) - len(good)
    return med


def parse_perf_stat(path: Path, n: int) -> dict:
    """perf stat -x, output: counts per message, by syscall."""
    per: dict = {}
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            count = int(parts[0])
        except ValueError:
            continue
        event = parts[2].split(":")[-1].replace("sys_enter_", "").replace("sys_enter", "all")
        if count:
            per[event] = count / n
    return per


def perf_profile(perf: str, data: Path) -> dict:
    """What a perf recording of drover says, in a few numbers: the split
    kernel / drover / libc (self time), the time inside send, recv and
    epoll_wait (inclusive: the syscalls' kernel work included), the time the
    CPU spent switching away from drover (finish_task_switch: drover was
    preempted or slept), and drover's own busiest functions."""
    def report(*extra) -> list[str]:
        text = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "-g", "none", "--percent-limit", "0.2", *extra],
            capture_output=True, text=True, timeout=120,
        ).stdout
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    dso, samples = {}, 0
    for line in report("--no-children", "--sort", "dso", "-n"):
        pct, count, name = line.split(None, 2)
        dso[name.strip()] = float(pct.rstrip("%"))
        samples += int(count)
    inclusive = {}
    wanted = {"[.] __send": "send", "[.] __libc_recv": "recv", "[.] epoll_wait": "epoll_wait",
              "[.] epoll_ctl": "epoll_ctl", "[k] finish_task_switch.isra.0": "switched away"}
    for line in report("--children", "--sort", "sym"):
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[2].strip() in wanted:
            inclusive[wanted[parts[2].strip()]] = float(parts[0].rstrip("%"))
    user = []
    for line in report("--no-children", "--sort", "dso,sym"):
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2] == "[.]":
            user.append((float(parts[0].rstrip("%")), f"{parts[3].strip()} ({parts[1]})"))
    return {
        "samples": samples,
        "kernel_pct": sum(v for k_, v in dso.items() if k_.startswith("[kernel")),
        "drover_pct": dso.get("drover", 0.0),
        "libc_pct": sum(v for k_, v in dso.items() if k_.startswith("libc")),
        "inclusive": inclusive,
        "user_top": user[:6],
    }


def machine() -> dict:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git_state(),
    }


def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
            capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "git state unknown"
    files = ", ".join(line[3:] for line in dirty)
    return f"commit {head}" + (f" + uncommitted changes in {files}" if dirty else "")


# ------------------------------------------------------------------ report


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *[line(r) for r in rows]])


def k(v) -> str:
    return "—" if v is None else f"{v / 1000:,.0f}k"


def us(ns) -> str:
    return "—" if ns is None else f"{ns / 1000:.1f}"


def ratio(a, b) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def verdict(ok) -> str:
    return "—" if ok is None else ("met" if ok else "MISSED")


def report(b: Bench) -> str:
    r, c, a = b.r, b.r["cases"], b.args
    m = r["machine"]
    out = ["# drover queue benchmark", ""]
    out.append(f"{m['date']} · {m['nproc']} × {m['model']} · Linux {m['kernel']} · Python {m['python']} · "
               f"drover {m['git']}")
    busy_cases = []
    for when, ld in r["load"].items():
        if ld["busy_pct"] > 5:
            top = f" ({', '.join(ld['top'])})" if ld["top"] else ""
            busy_cases.append(f"{when}: {ld['busy_pct']:.0f}%{top}")
    loads = [ld["busy_pct"] for ld in r["load"].values()]
    if loads:
        out.append(f"- other load at the {len(loads)} quiet checks (1 s each): "
                   f"{min(loads):.1f}–{max(loads):.1f}% of the CPUs"
                   + (f"; busy at {'; '.join(busy_cases)}" if busy_cases else "")
                   + f"; load average at the end {' '.join(r['load'].get('end', {}).get('loadavg', ['?']))}")
    out.append(f"- throughput: N = {a.n64:,} messages of 64 B, {a.n4k:,} of 4 KiB (prefetch 1: a tenth of "
               f"that), blocking sends as fast as possible, median of {a.repeat} runs interleaved in rounds; "
               f"latency: {a.lat_n:,} messages sent at {a.rate:g}/s, each stamped with its send time; "
               f"queue capacity {a.capacity:,}")
    out.append("- `other load`: CPU used during the case by processes outside this bench, in % of all CPUs "
               "(highest over the case's runs); above ~5% the row's numbers are suspect")
    out.append("")

    def val(key, field):
        v = c.get(key) or {}
        return None if v.get("error") else v.get(field)

    header = ["transport", "size", "msgs/s", "runs", "vs bare", "p50 µs", "p99 µs", "p50 vs bare",
              "drover CPU s / 1M msgs", "drover wake-ups / msg", "drover RSS max", "other load"]
    rows = []
    rows_def = [("bare", "bare SEQPACKET socketpair")] + [(k_, l) for k_, l, *_ in DROVER_MODES] + \
        [(k_, l) for k_, l, _ in PY_KINDS]
    for size in SIZES:
        bare_t = val(f"bare_{size}_tput", "msgs_per_s")
        bare_l = val(f"bare_{size}_lat", "p50_ns")
        for key, label in rows_def:
            t = val(f"{key}_{size}_tput", "msgs_per_s")
            p50 = val(f"{key}_{size}_lat", "p50_ns")
            p99 = val(f"{key}_{size}_lat", "p99_ns")
            tc = c.get(f"{key}_{size}_tput") or {}
            lc = c.get(f"{key}_{size}_lat") or {}
            err = tc.get("error") or lc.get("error")
            cpu = wake = rss = "—"
            if "drover_cpu_s" in tc and not tc.get("error"):
                n = tc["received"]
                cpu = f"{tc['drover_cpu_s'] / n * 1e6:.2f} ({100 * tc['drover_cpu_s'] / tc['drover_wall_s']:.0f}% of a core)"
                wake = f"{tc['drover_cs'] / n:.3f}"
                rss = f"{tc['rss_max_kb'] / 1024:.1f} MB"
            runs = [x for x in tc.get("runs", []) if x]
            spread = f"{min(runs) / 1000:,.0f}–{max(runs) / 1000:,.0f}k" if len(runs) > 1 else "—"
            if tc.get("failed_runs"):
                spread += f" ({tc['failed_runs']} of {len(tc['runs'])} failed)"
            other = max(tc.get("other_load_pct", 0), lc.get("other_load_pct", 0))
            rows.append([
                label + (" (FAILED)" if err else ""), f"{size} B" if size < 1024 else f"{size // 1024} KiB",
                k(t), spread, "1" if key == "bare" and t else ratio(t, bare_t),
                us(p50), us(p99), "1" if key == "bare" and p50 else ratio(p50, bare_l), cpu, wake, rss,
                f"{other:.0f}%",
            ])
    out.append(table(header, rows))
    out.append("")
    rtt = {s: val(f"rtt_{s}", "p50_ns") for s in SIZES}
    rtt_mean = {s: val(f"rtt_{s}", "mean_ns") for s in SIZES}
    out.append("Bare SEQPACKET round trip (ping-pong between two processes, "
               f"{a.rtt_n:,} round trips): " + ", ".join(
                   f"{s} B p50 {us(rtt[s])} µs, p99 {us(val(f'rtt_{s}', 'p99_ns'))} µs, mean {us(rtt_mean[s])} µs"
                   for s in SIZES) + ".")
    out.append("")

    # Goals
    out.append("## Goals, 64 B messages")
    out.append("")
    g = []

    def failed(*keys) -> str | None:
        errs = [f"{key}: {c[key]['error']}" for key in keys if (c.get(key) or {}).get("error")]
        return "; ".join(e if len(e) < 160 else e[:157] + "…" for e in errs) or None

    bare_t, mpq_t = val("bare_64_tput", "msgs_per_s"), val("mpq_64_tput", "msgs_per_s")
    amo_t, alo64_t = val("amo64_64_tput", "msgs_per_s"), val("alo64_64_tput", "msgs_per_s")
    if amo_t and bare_t:
        g.append(["at-most-once (prefetch 64) ≥ ½ bare socketpair",
                  f"{k(amo_t)} vs {k(bare_t)}/s = {amo_t / bare_t:.2f}", "≥ 0.50", verdict(amo_t >= bare_t / 2)])
    else:
        g.append(["at-most-once (prefetch 64) ≥ ½ bare socketpair",
                  failed("amo64_64_tput", "bare_64_tput") or "not measured", "≥ 0.50", "FAILED"])
    if alo64_t and mpq_t:
        g.append(["at-least-once, prefetch 64 ≥ multiprocessing.Queue",
                  f"{k(alo64_t)} vs {k(mpq_t)}/s = {alo64_t / mpq_t:.2f}", "≥ 1.00", verdict(alo64_t >= mpq_t)])
    else:
        g.append(["at-least-once, prefetch 64 ≥ multiprocessing.Queue",
                  failed("alo64_64_tput", "mpq_64_tput") or "not measured", "≥ 1.00", "FAILED"])
    for key in PREFETCH_1:
        label = LABELS[key].replace("drover ", "")
        t = val(f"{key}_64_tput", "msgs_per_s")
        name = f"{label}: bounded only by the round trip"
        if t and rtt_mean[64]:
            bound = 1e9 / rtt_mean[64]
            g.append([name, f"{k(t)}/s vs 1 / bare round trip ({us(rtt_mean[64])} µs mean) = {k(bound)}/s: "
                      f"{t / bound:.2f}", "≥ 0.50 (one bare round trip per message = 1.00)", verdict(t >= bound / 2)])
        else:
            g.append([name, failed(f"{key}_64_tput", "rtt_64") or "not measured", "≥ 0.50", "FAILED"])
    bare_l = val("bare_64_lat", "p50_ns")
    for key, label, *_ in DROVER_MODES:
        p = val(f"{key}_64_lat", "p50_ns")
        name = f"latency p50 ≤ 2× bare: {label.replace('drover ', '')}"
        if p and bare_l:
            g.append([name, f"{us(p)} vs {us(bare_l)} µs = {p / bare_l:.2f}", "≤ 2.00", verdict(p <= 2 * bare_l)])
        else:
            g.append([name, failed(f"{key}_64_lat", "bare_64_lat") or "not measured", "≤ 2.00", "FAILED"])
    for size in SIZES:
        f = r["flood"].get(str(size)) or {}
        if "rss_full_kb" in f:
            ok = f["depth"] <= f["capacity"] and f["depth_later"] <= f["capacity"] and \
                f["rss_later_kb"] <= f["rss_full_kb"] * 1.05 + 1024
            g.append([f"memory bounded by capacity ({size} B, {f['producers']} producers flooding, no consumer)",
                      f"depth {f['depth']:,} → {f['depth_later']:,} (capacity {f['capacity']:,}); "
                      f"RSS {f['rss_empty_kb'] / 1024:.1f} → {f['rss_full_kb'] / 1024:.1f} → "
                      f"{f['rss_later_kb'] / 1024:.1f} MB 1 s later = {f['per_message_b']:,.0f} B per queued message",
                      "depth ≤ capacity, RSS flat", verdict(ok)])
        elif f.get("error"):
            g.append([f"memory bounded by capacity ({size} B)", f"failed: {f['error']}", "", "—"])
    out.append(table(["goal", "measured", "target", "verdict"], g))
    out.append("")
    out.append(f"Reference figures of the issue (same machine, earlier): bare socketpair ≈ {REF['bare_64']:,}/s, "
               f"multiprocessing.Queue ≈ {REF['queue_64']:,}/s, SimpleQueue ≈ {REF['simple_64']:,}/s, "
               f"round trip ≈ {REF['rtt_us']} µs. This run: bare {k(bare_t)}/s, Queue {k(mpq_t)}/s, "
               f"SimpleQueue {k(val('mpsq_64_tput', 'msgs_per_s'))}/s, round trip {us(rtt_mean[64])} µs mean.")
    out.append("")

    # Diagnostics
    d = r.get("diag") or {}
    if d:
        out.append("## Where drover spends its time (perf, separate runs of "
                   f"{a.diag_n:,} messages, a tenth with prefetch 1; not the timed runs above)")
        out.append("")
        if "note" in d:
            out.append(d["note"])
        names = ["all", "epoll_wait", "epoll_pwait", "epoll_ctl", "recvfrom", "sendto", "recvmsg", "sendmsg", "ioctl",
                 "read", "write", "futex", "mmap", "munmap", "brk", "madvise"]
        seen = [nm for nm in names if any(nm in (e.get("syscalls") or {}) for e in d.values() if isinstance(e, dict))]
        rows = []
        for key, label, *_ in DROVER_MODES:
            for size in SIZES:
                e = d.get(f"{key}_{size}") or {}
                if "syscalls" in e:
                    rows.append([label, f"{size} B"] + [f"{e['syscalls'].get(nm, 0):.3f}" for nm in seen])
                elif e.get("error"):
                    rows.append([label, f"{size} B", f"failed: {e['error']}"] + [""] * (len(seen) - 1))
        if rows:
            out.append("Syscalls of drover per message (`perf stat -e syscalls:sys_enter_*`; `all` = every syscall):")
            out.append("")
            out.append(table(["case", "size", *seen], rows))
            out.append("")
        prow = []
        for key, label, *_ in DROVER_MODES:
            for size in SIZES:
                p = (d.get(f"{key}_{size}") or {}).get("profile")
                if not p:
                    continue
                inc = p["inclusive"]
                prow.append([label, f"{size} B", str(p["samples"]),
                             f"{p['kernel_pct']:.0f}%", f"{p['drover_pct']:.1f}%", f"{p['libc_pct']:.1f}%",
                             *(f"{inc.get(x, 0):.0f}%" for x in ("send", "recv", "epoll_wait", "epoll_ctl",
                                                                 "switched away")),
                             "; ".join(f"{pct:.1f}% {sym}" for pct, sym in p["user_top"][:4])])
        if prow:
            out.append("Profile of drover (`perf record -g`, cpu-clock): self time in the kernel, in drover's "
                       "code and in libc (malloc/free, syscall stubs); inclusive time in send / recv / "
                       "epoll_wait / epoll_ctl (the syscalls with their kernel work, including being "
                       "preempted on the way back); `switched away` = samples in the context switch "
                       "(drover preempted by the processes it woke, or going to sleep):")
            out.append("")
            out.append(table(["case", "size", "samples", "kernel", "drover", "libc", "in send", "in recv",
                              "in epoll_wait", "in epoll_ctl", "switched away", "busiest user-space functions"],
                             prow))
            out.append("")
    if r["notes"]:
        out.append("## Notes")
        out.append("")
        out += [f"- {n}" for n in r["notes"]]
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drover", default=str(ROOT / "target/release/drover"))
    p.add_argument("--qb", default=str(ROOT / "target/bench/qb"))
    p.add_argument("--work", default=str(ROOT / "target/bench/queues"))
    p.add_argument("--python", default=sys.executable, help="interpreter for the Python baselines")
    p.add_argument("--n64", type=int, default=1_000_000, help="messages per throughput run, 64 B")
    p.add_argument("--n4k", type=int, default=500_000, help="messages per throughput run, 4 KiB")
    p.add_argument("--lat-n", type=int, default=10_000, help="messages per latency run")
    p.add_argument("--rate", type=float, default=5_000, help="messages/s in latency runs")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs per case (the median is shown)")
    p.add_argument("--rtt-n", type=int, default=20_000, help="round trips of the ping-pong")
    p.add_argument("--capacity", type=int, default=10_000, help="the queue's capacity")
    p.add_argument("--flood-producers", type=int, default=4)
    p.add_argument("--diag-n", type=int, default=200_000, help="messages per perf diagnostic run")
    p.add_argument("--no-diag", action="store_true", help="skip the perf diagnostics")
    p.add_argument("--stall-secs", type=float, default=3,
                   help="a drover run with no delivery for this long is reported as stalled")
    p.add_argument("--quiet-wait", type=float, default=60, help="wait this long at most for a quiet machine")
    p.add_argument("--from-json", metavar="PATH",
                   help="measure nothing: print the report of a queues.json written earlier")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        b = Bench(argparse.Namespace(**{**vars(args), **saved["args"]}))
        b.r = saved["results"]
        print(report(b))
        return 0
    b = Bench(args)
    try:
        b.run()
    except KeyboardInterrupt:
        print("interrupted; reporting what was measured")
        b.r["notes"].append("interrupted")
    text = report(b)
    print()
    print(text)
    out = ROOT / "target/bench"
    (out / "queues.md").write_text(text + "\n")
    saved = {"args": {k_: v for k_, v in vars(args).items() if k_ != "from_json"}, "results": b.r}
    (out / "queues.json").write_text(json.dumps(saved, indent=1, default=str) + "\n")
    print(f"\nwritten: {out / 'queues.md'}, {out / 'queues.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
