"""queues: messages/s and latency through drover's queues, side by side
with a bare SEQPACKET socketpair and Python's multiprocessing.Queue /
SimpleQueue, all measured in the same run.

Producer and consumer are the same small C program (bench/c/qb.c) for
drover, the bare pair and the bare relay (a third process that only moves
packets: what any broker in between can reach at best); the Python baselines are bench/workers/pyq.py.
`--repeat` rounds, each running every case once, alternating, so that each
target's verdict is the median of the rounds' ratios against the same
round's baseline. Throughput: N messages flat out. Latency: messages
stamped at send, paced. Also drover's CPU, wake-ups and RSS per message,
memory under a flood, and (with perf) drover's syscalls and CPU time per
message and a profile, in separate untimed runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lib import ROOT, BenchError
from lib.drover import Drover, toml_list
from lib.harness import Option
from lib.load import QUIET_PCT, OthersCpu, wait_quiet
from lib.proc import CLK_TCK, context_switches, stat, status_kb
from lib.procs import interrupt, wait_for
from lib.stats import DASH, judged, middle, table, thousands, times, us, verdict

TITLE = "Queues: throughput and latency against a bare SEQPACKET socketpair and multiprocessing"
NEEDS = ("qb",)
OPTIONS = [
    Option("--n64", int, 1_000_000, 20_000, "queues: messages per throughput run, 64 B"),
    Option("--n4k", int, 500_000, 10_000, "queues: messages per throughput run, 4 KiB"),
    Option("--lat-n", int, 10_000, 1_000, "queues: messages per latency run"),
    Option("--rate", float, 5_000, 5_000, "queues: messages/s in latency runs"),
    Option("--repeat", int, 5, 5, "queues: rounds; each round runs every throughput and latency case and the "
           "round trip once, alternating, and each target's verdict is the median of the rounds' ratios"),
    Option("--rtt-n", int, 20_000, 2_000, "queues: round trips of the bare ping-pong"),
    Option("--capacity", int, 10_000, 10_000, "queues: the queue's capacity"),
    Option("--flood-producers", int, 4, 4, "queues: producers of the flood (no consumer)"),
    Option("--diag-n", int, 200_000, 5_000, "queues: messages per perf diagnostic run"),
    Option("--no-diag", bool, False, False, "queues: skip the perf diagnostics"),
    Option("--targets", bool, False, False, "queues: only what the targets need (64 B; bare pair and relay, drover and the "
           "round trip; no Python or flood; perf counts syscalls and CPU time only)"),
    Option("--stall-secs", float, 3, 3, "queues: a drover run with no delivery for this long is reported as stalled"),
]

PYQ = ROOT / "bench" / "workers" / "pyq.py"
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
LABELS = {"bare": "bare SEQPACKET socketpair",
          "relay": "bare relay (a third process moving packets, 64 per recvmmsg/sendmmsg)",
          **{k: label for k, label, *_ in DROVER_MODES},
          **{k: label for k, label, _ in PY_KINDS}}
ROWS = ["bare", "relay", *(k for k, *_ in DROVER_MODES), *(k for k, *_ in PY_KINDS)]
SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_ctl", "recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg",
            "sendmmsg", "ioctl",
            "read", "write", "futex", "mmap", "munmap", "brk", "madvise")


def queue_config(state: Path, *, delivery: str, prefetch: int, capacity: int, consumer: list | None,
                 producer: list, producers: int = 1) -> str:
    """One queue `bench` between a producer group and (maybe) a consumer group of qb programs."""
    lines = [
        "[supervisor]",
        f"state_dir = {json.dumps(str(state))}",
        "",
        "[queue.bench]",
        f"capacity = {capacity}",
        "max_message_bytes = 65536",
        f"delivery = {json.dumps(delivery)}",
        f"prefetch = {prefetch}",
        "",
    ]
    if consumer:
        lines += ["[group.consumer]", f"command = {toml_list(consumer)}", 'inputs = ["bench"]',
                  'restart = "never"', 'start_secs = "100ms"', ""]
    lines += ["[group.producer]", f"command = {toml_list(producer)}", 'outputs = ["bench"]',
              f"processes = {producers}", 'restart = "never"', 'start_secs = "100ms"', ""]
    return "\n".join(lines)


def queue_of(d: Drover) -> dict:
    return next(q for q in d.status()["queues"] if q["name"] == "bench")


def consumer_state(pid: int) -> str:
    """Where a (stalled) consumer is: its kernel wait channel and how many
    bytes wait unread in its socket (from ss, if there)."""
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


def cpu_ticks(pid: int) -> int:
    st = stat(pid)
    return st.cpu_ticks if st else 0


class QueueBench:
    def __init__(self, ctx):
        self.ctx = ctx
        self.o = ctx.opts
        self.qb = ctx.bins["qb"]
        self.r: dict = {"cases": {}, "flood": {}, "diag": {}, "load": {}}

    def count(self, row: str, size: int, mode: str) -> int:
        """Messages of one run: throughput runs move N messages (a tenth of
        that with prefetch 1, one round trip each); latency runs lat_n."""
        if mode == "lat":
            return self.o.lat_n
        n = self.o.n64 if size == 64 else self.o.n4k
        return max(1000, n // 10) if row in PREFETCH_1 else n

    @staticmethod
    def timeout(n: int) -> float:
        return 30 + n / 10_000

    def measured(self, key: str, label: str, fn) -> dict:
        """Runs one case; adds `other_load_pct`: CPU the machine used beyond
        this bench and everything it started, in percent of all CPUs. A
        failed case is recorded with its error; the others go on."""
        self.ctx.step(label)
        others = OthersCpu()
        try:
            res = fn()
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        res["other_load_pct"] = others.pct()
        if res.get("error"):
            self.ctx.note(f"{key}: {res['error']}")
        return res

    def case(self, row: str, size: int, mode: str) -> dict:
        n = self.count(row, size, mode)
        rate = self.o.rate if mode == "lat" else 0
        key = f"{row}_{size}_{mode}"
        label = f"{LABELS[row]}, {size} B, {'throughput' if mode == 'tput' else 'latency'}, {n:,} messages"
        if row == "bare":
            return self.measured(key, label, lambda: self.bare(size, mode, n, rate))
        if row == "relay":
            return self.measured(key, label, lambda: self.relay(size, mode, n, rate))
        kind = next((arg for k, _, arg in PY_KINDS if k == row), None)
        if kind:
            return self.measured(key, label, lambda: self.python(kind, size, mode, n, rate))
        _, _, delivery, prefetch, ack = next(m for m in DROVER_MODES if m[0] == row)
        return self.measured(key, label, lambda: self.run_drover(key, delivery, prefetch, ack, size, mode, n, rate))

    # -- baselines

    def qb_json(self, name: str, argv: list, timeout: float) -> dict:
        out = self.ctx.root / f"{name}.json"
        out.unlink(missing_ok=True)
        cpu = out.with_name(out.name + ".cpu")
        cpu.unlink(missing_ok=True)
        subprocess.run([str(self.qb), *map(str, argv), str(out)], check=True, timeout=timeout)
        res = json.loads(out.read_text())
        if cpu.exists():  # pair and relay: each process's CPU time
            res.update(json.loads(cpu.read_text()))
        return res

    def bare(self, size: int, mode: str, n: int, rate: float) -> dict:
        return self.qb_json(f"bare_{size}_{mode}", ["pair", n, size, mode, rate], self.timeout(n))

    def relay(self, size: int, mode: str, n: int, rate: float) -> dict:
        return self.qb_json(f"relay_{size}_{mode}", ["relay", n, size, mode, rate], self.timeout(n))

    def pingpong(self, size: int) -> dict:
        return self.qb_json(f"pingpong_{size}", ["pingpong", self.o.rtt_n, size], 120)

    def python(self, kind: str, size: int, mode: str, n: int, rate: float) -> dict:
        out = subprocess.run([self.ctx.python, str(PYQ), kind, mode, str(n), str(size), str(rate)],
                             capture_output=True, text=True, timeout=self.timeout(n))
        if out.returncode != 0:
            raise BenchError(" ".join(out.stderr.strip().splitlines()[-1:]))
        return json.loads(out.stdout)

    # -- drover

    def drover(self, name: str, **config) -> Drover:
        d = self.ctx.dir(name)
        (d / "state").mkdir()
        (d / "drover.toml").write_text(queue_config(d / "state", **config))
        return Drover(self.ctx.drover, self.ctx.procs, d, d / "drover.toml")

    def run_drover(self, name, delivery, prefetch, ack, size, mode, count, rate, perf: list | None = None) -> dict:
        cap = self.o.capacity
        dir = self.ctx.root / name
        ready_c, ready_p, result = dir / "ready.consumer", dir / "ready.producer", dir / "result.json"
        d = self.drover(name, delivery=delivery, prefetch=prefetch, capacity=cap,
                        consumer=[self.qb, "consume", count, size, mode, int(ack), ready_c, result],
                        producer=[self.qb, "produce", count, size, rate, ready_p])
        tool = None
        try:
            d.start()
            pids = wait_for("the consumer and producer to start", 15,
                            lambda: (read_pid(ready_c), read_pid(Path(f"{ready_p}.0")))
                            if ready_c.exists() and Path(f"{ready_p}.0").exists() else None,
                            interval=0.005, alive=d.alive)
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
                    raise BenchError(f"no result after {self.timeout(count):g} s; queue: {queue_of(d)}")
                if now >= next_check:
                    next_check = now + 1
                    q = queue_of(d)
                    if q["delivered"] != progress[0]:
                        progress = (q["delivered"], now)
                    elif now - progress[1] >= self.o.stall_secs and not result.exists():
                        raise BenchError(
                            f"STALLED: nothing delivered for {now - progress[1]:.0f} s after {q['delivered']:,} "
                            f"of {count:,} messages, the consumer waiting for more ({consumer_state(pids[0])}); "
                            f"queue: depth {q['depth']}, in_flight {q['in_flight']}")
                time.sleep(0.02)
            cpu1, cs1, t1 = cpu_ticks(d.pid), context_switches(d.pid), time.monotonic()
            interrupt(tool)
            tool = None
            res = json.loads(result.read_text())
            # The last acks may still be in flight to drover.
            acked = count if ack else 0
            try:
                q = wait_for("drover to count every delivery and ack", 5,
                             lambda: (lambda q: q if q["delivered"] == count and q["acked"] == acked else None)(
                                 queue_of(d)), interval=0.02)
            except BenchError:
                q = queue_of(d)
            res.update({
                "drover_cpu_s": (cpu1 - cpu0) / CLK_TCK,
                "drover_wall_s": t1 - t0,
                "drover_cs": cs1 - cs0,
                "rss_start_kb": rss_start,
                "rss_max_kb": rss_max,
                "hwm_kb": status_kb(d.pid, "VmHWM"),
                "queue": q,
            })
            if q["delivered"] != count or q["acked"] != acked or q["redelivered"]:
                res["error"] = res.get("error") or f"unexpected queue counters: {q}"
            if res.get("bad_size") or res.get("out_of_order"):
                res["error"] = res.get("error") or (
                    f"{res['bad_size']} messages of a wrong size, {res['out_of_order']} out of order")
            return res
        finally:
            interrupt(tool)
            d.stop(timeout=15)

    def flood(self, size: int) -> None:
        """Producers that never stop and no consumer: drover must hold at
        most `capacity` messages, and its memory must stop growing there."""
        name, producers, cap = f"flood_{size}", self.o.flood_producers, self.o.capacity
        self.ctx.step(f"flood: {producers} producers, no consumer, {size} B, capacity {cap}")
        ready_p = self.ctx.root / name / "ready.producer"
        d = self.drover(name, delivery="at-most-once", prefetch=1, capacity=cap, consumer=None,
                        producer=[self.qb, "produce", 10 * cap, size, 0, ready_p], producers=producers)
        res: dict = {"size": size, "producers": producers, "capacity": cap}
        try:
            d.start()
            files = [Path(f"{ready_p}.{i}") for i in range(producers)]
            wait_for("the producers to start", 15, lambda: all(f.exists() for f in files), 0.005, alive=d.alive)
            time.sleep(0.05)
            res["rss_empty_kb"] = status_kb(d.pid, "VmRSS")
            for f in files:
                os.kill(read_pid(f), signal.SIGUSR1)
            wait_for("the queue to fill", 60, lambda: queue_of(d)["depth"] >= cap, interval=0.05, alive=d.alive)
            time.sleep(1.0)  # producers keep pushing against the full queue
            res.update(depth=queue_of(d)["depth"], rss_full_kb=status_kb(d.pid, "VmRSS"),
                       hwm_kb=status_kb(d.pid, "VmHWM"))
            time.sleep(1.0)
            res["rss_later_kb"] = status_kb(d.pid, "VmRSS")
            res["depth_later"] = queue_of(d)["depth"]
            res["per_message_b"] = (res["rss_full_kb"] - res["rss_empty_kb"]) * 1024 / cap
        except BenchError as e:
            res["error"] = str(e)
            self.ctx.note(f"{name}: {e}")
        finally:
            d.stop(timeout=15)
        self.r["flood"][str(size)] = res

    def diagnostics(self) -> None:
        """Where drover's time goes: perf's syscall counts and a profile, in
        runs of their own (perf slows drover down)."""
        perf = shutil.which("perf")
        if not perf:
            self.r["diag"]["note"] = "perf is not installed: no syscall counts or profile"
            return
        calls = ["task-clock", "raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{c}" for c in SYSCALLS]
        for key, label, delivery, prefetch, ack in DROVER_MODES:
            for size in [64] if self.o.targets else SIZES:
                n = max(1000, self.o.diag_n // 10) if key in PREFETCH_1 else self.o.diag_n
                name = f"diag_{key}_{size}"
                self.ctx.step(f"perf: syscalls and profile of drover, {label}, {size} B, {n:,} messages")
                stat_out = self.ctx.root / f"{name}.stat.csv"
                rec_out = self.ctx.root / f"{name}.perf.data"
                entry: dict = {"n": n}
                try:
                    self.run_drover(name + "_stat", delivery, prefetch, ack, size, "tput", n, 0,
                                    perf=[perf, "stat", "-x,", "-o", str(stat_out), "-e", ",".join(calls)])
                    entry["syscalls"] = parse_perf_stat(stat_out, n)
                    if (key == "amo64" or size == 64) and not self.o.targets:
                        self.run_drover(name + "_rec", delivery, prefetch, ack, size, "tput", n, 0,
                                        perf=[perf, "record", "-q", "-F", "2999", "-g", "-o", str(rec_out)])
                        entry["profile"] = perf_profile(perf, rec_out)
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    entry["error"] = str(e)
                self.r["diag"][f"{key}_{size}"] = entry

    def quiet(self, when: str) -> None:
        self.r["load"][when] = wait_quiet(self.o.quiet_wait if when != "end" else 0, say=self.ctx.step)

    def run(self) -> dict:
        sizes = [64] if self.o.targets else SIZES
        rows = [r for r in ROWS if not (self.o.targets and r in ("mpq", "mpsq"))]
        runs: dict[str, list[dict]] = {}
        for rnd in range(self.o.repeat):
            self.quiet(f"round {rnd + 1}")
            self.ctx.step(f"round {rnd + 1} of {self.o.repeat}")
            for size in sizes:
                for mode in ("tput", "lat"):
                    for row in rows:
                        runs.setdefault(f"{row}_{size}_{mode}", []).append(self.case(row, size, mode))
                runs.setdefault(f"rtt_{size}", []).append(self.measured(
                    f"rtt_{size}", f"bare socketpair round trip, {size} B, {self.o.rtt_n:,} round trips",
                    lambda: self.pingpong(size)))
        for key, tries in runs.items():
            field = "msgs_per_s" if key.endswith("_tput") else "p50_ns"
            self.r["cases"][key] = median_run(tries, field)
            self.r.setdefault("rounds", {})[key] = [None if t.get("error") else t.get(field) for t in tries]
            if key.startswith(("bare_", "relay_")) and key.endswith("_tput"):
                # CPU per message (µs, user + system) of all the baseline's
                # processes, and of the relay's middle alone.
                for part, fields in (("cpu", ("producer_cpu_s", "consumer_cpu_s", "middle_cpu_s")),
                                     ("middle", ("middle_cpu_s",))):
                    self.r["rounds"][f"{key}_{part}"] = [
                        None if t.get("error") or "producer_cpu_s" not in t or not t.get("received")
                        else sum(t[f] for f in fields) / t["received"] * 1e6 for t in tries]
        self.r["cpus"] = len(os.sched_getaffinity(0))
        if not self.o.targets:
            for size in SIZES:
                self.flood(size)
        self.quiet("end")
        if not self.o.no_diag:
            self.diagnostics()
        return self.r


def run(ctx) -> dict:
    return QueueBench(ctx).run()


def median_run(runs: list[dict], field: str = "msgs_per_s") -> dict:
    """The run with the median `field` (msgs/s, or p50 latency), plus every
    run's value and the highest other load seen over the runs."""
    good = [r for r in runs if not r.get("error") and r.get(field)]
    if not good:
        return runs[-1]
    good.sort(key=lambda r: r[field])
    med = dict(good[(len(good) - 1) // 2])
    med["runs"] = [r.get(field) for r in runs]
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
            count = float(parts[0])
        except ValueError:
            continue
        if parts[2] == "task-clock":  # ms of CPU
            per["cpu µs"] = count * 1000 / n
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
    def perf_report(*extra) -> list[str]:
        text = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "-g", "none", "--percent-limit", "0.2", *extra],
            capture_output=True, text=True, timeout=120,
        ).stdout
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    dso, samples = {}, 0
    for line in perf_report("--no-children", "--sort", "dso", "-n"):
        pct, count, name = line.split(None, 2)
        dso[name.strip()] = float(pct.rstrip("%"))
        samples += int(count)
    inclusive = {}
    wanted = {"[.] __send": "send", "[.] __libc_recv": "recv", "[.] epoll_wait": "epoll_wait",
              "[.] epoll_ctl": "epoll_ctl", "[k] finish_task_switch.isra.0": "switched away"}
    for line in perf_report("--children", "--sort", "sym"):
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[2].strip() in wanted:
            inclusive[wanted[parts[2].strip()]] = float(parts[0].rstrip("%"))
    user = []
    for line in perf_report("--no-children", "--sort", "dso,sym"):
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2] == "[.]":
            user.append((float(parts[0].rstrip("%")), f"{parts[3].strip()} ({parts[1]})"))
    return {
        "samples": samples,
        "kernel_pct": sum(v for k, v in dso.items() if k.startswith("[kernel")),
        "drover_pct": dso.get("drover", 0.0),
        "libc_pct": sum(v for k, v in dso.items() if k.startswith("libc")),
        "inclusive": inclusive,
        "user_top": user[:6],
    }


# ------------------------------------------------------------------ report


def goals(r: dict) -> list[list[str]]:
    """The targets' rows (goal, measured, target, verdict), 64 B messages:
    each the median of the rounds' ratios against the same round's
    baseline."""
    c, a = r["cases"], r["options"]

    def val(key, field):
        v = c.get(key) or {}
        return None if v.get("error") else v.get(field)

    def failed(*keys) -> str:
        errs = [f"{key}: {c[key]['error']}" for key in keys if (c.get(key) or {}).get("error")]
        return "; ".join(e if len(e) < 160 else e[:157] + "…" for e in errs) or "not measured"

    g = []

    rounds = r.get("rounds") or {}

    def per_round(num: str, den: str, f) -> list[float]:
        """f(numerator, denominator) of each round in which both were measured."""
        pairs = zip(rounds.get(num) or [], rounds.get(den) or [])
        return [f(x, y) for x, y in pairs if x and y]

    def target(name: str, keys: list[str], ratios: list[float], goal: float, most: bool, how: str) -> None:
        """A row of the targets: the median of the rounds' same-run ratios
        against `goal`, within 5 % of it counted as at the target."""
        if not ratios:
            g.append([name, failed(*keys), f"{'≤' if most else '≥'} {goal:g}×", "FAILED"])
            return
        rs = sorted(ratios)
        m = middle(rs)
        v = judged(m, goal, most)
        g.append([name, f"{m:.2f}× (median of {len(rs)} rounds, {rs[0]:.2f}–{rs[-1]:.2f}; {how})",
                  f"{'≤' if most else '≥'} {goal:g}×", v])

    bare_t = val("bare_64_tput", "msgs_per_s")
    for key, goal in (("amo64", 0.6), ("alo64", 0.5)):
        t = val(f"{key}_64_tput", "msgs_per_s")
        target(f"{LABELS[key].replace('drover ', 'queue ')}, 64 B ÷ bare SEQPACKET pair",
               [f"{key}_64_tput", "bare_64_tput"],
               per_round(f"{key}_64_tput", "bare_64_tput", lambda x, y: x / y), goal, False,
               f"median run {thousands(t)} ÷ {thousands(bare_t)}/s" if t and bare_t else "")
    # Not targets: how far any process between producer and consumer gets
    # (the relay floor), and how close drover comes to it.
    relay_t = val("relay_64_tput", "msgs_per_s")
    reference(g, "bare relay ÷ bare SEQPACKET pair (what a process in between can reach at best)",
              per_round("relay_64_tput", "bare_64_tput", lambda x, y: x / y),
              f"median run {thousands(relay_t)} ÷ {thousands(bare_t)}/s" if relay_t and bare_t else "")
    # What the CPUs allow: a process in between reads and writes every
    # packet, which costs about what the producer and consumer cost
    # together; with every CPU busy all the time, the three processes move
    # at most cpus / (their CPU per message) messages per second.
    cpus = r.get("cpus")
    pair_cpu, relay_cpu = rounds.get("bare_64_tput_cpu") or [], rounds.get("relay_64_tput_cpu") or []
    middle_cpu = rounds.get("relay_64_tput_middle") or []
    if cpus and any(pair_cpu) and any(relay_cpu):
        med = lambda xs: middle(sorted(x for x in xs if x))  # noqa: E731
        g.append(["CPU per message, every process (user + system)",
                  f"bare pair {med(pair_cpu):.2f} µs; bare relay {med(relay_cpu):.2f} µs, of which its middle "
                  f"{med(middle_cpu):.2f} µs (medians of the rounds)", DASH, "no target (a reference)"])
        reference(g, f"bare relay with all {cpus} CPUs busy ÷ bare pair (the most {cpus} CPUs allow a process in "
                     "between that costs what the relay costs)",
                  [cpus / (c * 1e-6) / p for c, p in zip(relay_cpu, rounds.get("bare_64_tput") or []) if c and p],
                  f"{cpus} ÷ {med(relay_cpu):.2f} µs = {thousands(cpus / (med(relay_cpu) * 1e-6))}/s" if any(relay_cpu)
                  else "")
    for key in ("amo64", "alo64"):
        t = val(f"{key}_64_tput", "msgs_per_s")
        reference(g, f"{LABELS[key].replace('drover ', 'queue ')}, 64 B ÷ bare relay",
                  per_round(f"{key}_64_tput", "relay_64_tput", lambda x, y: x / y),
                  f"median run {thousands(t)} ÷ {thousands(relay_t)}/s" if t and relay_t else "")
    rtt_p50 = val("rtt_64", "p50_ns")
    for key in ("alo1", "amo1"):
        t = val(f"{key}_64_tput", "msgs_per_s")
        target(f"{LABELS[key].replace('drover ', 'queue ')} ÷ (1 / bare round trip p50)", [f"{key}_64_tput", "rtt_64"],
               per_round(f"{key}_64_tput", "rtt_64", lambda x, y: x * y / 1e9), 0.25, False,
               f"median run {thousands(t)}/s, round trip p50 {us(rtt_p50)} µs" if t and rtt_p50 else "")
    bare_l = val("bare_64_lat", "p50_ns")
    for key, label, *_ in DROVER_MODES:
        p = val(f"{key}_64_lat", "p50_ns")
        target(f"p50 latency at low load ({a['rate']:g}/s) ÷ bare pair p50: {label.replace('drover ', '')}",
               [f"{key}_64_lat", "bare_64_lat"],
               per_round(f"{key}_64_lat", "bare_64_lat", lambda x, y: x / y), 3, True,
               f"median run {us(p)} ÷ {us(bare_l)} µs" if p and bare_l else "")
    relay_l = val("relay_64_lat", "p50_ns")
    reference(g, f"bare relay p50 latency at low load ({a['rate']:g}/s) ÷ bare pair p50",
              per_round("relay_64_lat", "bare_64_lat", lambda x, y: x / y),
              f"median run {us(relay_l)} ÷ {us(bare_l)} µs" if relay_l and bare_l else "")
    for key, label, *_ in DROVER_MODES:
        p = val(f"{key}_64_lat", "p50_ns")
        reference(g, f"p50 latency at low load ÷ bare relay p50: {label.replace('drover ', '')}",
                  per_round(f"{key}_64_lat", "relay_64_lat", lambda x, y: x / y),
                  f"median run {us(p)} ÷ {us(relay_l)} µs" if p and relay_l else "")
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
            g.append([f"memory bounded by capacity ({size} B)", f"failed: {f['error']}", "", DASH])
    return g


def reference(g: list, name: str, ratios: list[float], how: str) -> None:
    """A row beside the targets that has none: the median of the rounds'
    same-run ratios, for reading the targets' rows."""
    rs = sorted(ratios)
    m = middle(rs)
    measured = f"{m:.2f}× (median of {len(rs)} rounds, {rs[0]:.2f}–{rs[-1]:.2f}; {how})" if rs else "not measured"
    g.append([name, measured, DASH, "no target (a reference)"])


def targets(r: dict) -> list[list[str]]:
    """The rows of goals() that are ratios (not the flood's memory check)."""
    return [row for row in goals(r) if "memory bounded" not in row[0]]


def report(r: dict, header: dict) -> list[str]:
    c, a = r["cases"], r["options"]
    out = []
    busy = [f"{when}: {ld['busy_pct']:.0f}%" + (f" ({', '.join(ld['top'])})" if ld["top"] else "")
            for when, ld in r["load"].items() if ld["busy_pct"] > QUIET_PCT]
    loads = [ld["busy_pct"] for ld in r["load"].values()]
    out.append(f"- other load at the {len(loads)} quiet checks (1 s each): {min(loads):.1f}–{max(loads):.1f}% of "
               "the CPUs" + (f"; busy at {'; '.join(busy)}" if busy else ""))
    out.append(f"- throughput: N = {a['n64']:,} messages of 64 B, {a['n4k']:,} of 4 KiB (prefetch 1: a tenth of "
               f"that), blocking sends as fast as possible, {a['repeat']} rounds alternating the cases (the median run is shown); "
               f"latency: {a['lat_n']:,} messages sent at {a['rate']:g}/s, each stamped with its send time; "
               f"queue capacity {a['capacity']:,}")
    out.append("- `other load`: CPU used during the case by processes outside this bench, in % of all CPUs "
               f"(highest over the case's runs); above ~{QUIET_PCT:g}% the row's numbers are suspect")
    out.append("")

    def val(key, field):
        v = c.get(key) or {}
        return None if v.get("error") else v.get(field)

    def vs(a_, b_, key):
        return "1" if key == "bare" and a_ else times(a_ / b_ if a_ and b_ else None)

    rows = []
    for size in [s for s in SIZES if f"bare_{s}_tput" in c]:
        bare_t, bare_l = val(f"bare_{size}_tput", "msgs_per_s"), val(f"bare_{size}_lat", "p50_ns")
        for key in [k for k in ROWS if f"{k}_{size}_tput" in c]:
            t = val(f"{key}_{size}_tput", "msgs_per_s")
            p50 = val(f"{key}_{size}_lat", "p50_ns")
            tc = c.get(f"{key}_{size}_tput") or {}
            lc = c.get(f"{key}_{size}_lat") or {}
            cpu = wake = rss = DASH
            if "drover_cpu_s" in tc and not tc.get("error"):
                n = tc["received"]
                cpu = f"{tc['drover_cpu_s'] / n * 1e6:.2f} ({100 * tc['drover_cpu_s'] / tc['drover_wall_s']:.0f}% of a core)"
                wake = f"{tc['drover_cs'] / n:.3f}"
                rss = f"{tc['rss_max_kb'] / 1024:.1f} MB"
            runs = [x for x in tc.get("runs", []) if x]
            spread = f"{min(runs) / 1000:,.0f}–{max(runs) / 1000:,.0f}k" if len(runs) > 1 else DASH
            if tc.get("failed_runs"):
                spread += f" ({tc['failed_runs']} of {len(tc['runs'])} failed)"
            rows.append([
                LABELS[key] + (" (FAILED)" if tc.get("error") or lc.get("error") else ""),
                f"{size} B" if size < 1024 else f"{size // 1024} KiB", thousands(t), spread, vs(t, bare_t, key),
                us(p50), us(val(f"{key}_{size}_lat", "p99_ns")), vs(p50, bare_l, key), cpu, wake, rss,
                f"{max(tc.get('other_load_pct', 0), lc.get('other_load_pct', 0)):.0f}%",
            ])
    out.append(table(["transport", "size", "msgs/s", "runs", "vs bare", "p50 µs", "p99 µs", "p50 vs bare",
                      "drover CPU s / 1M msgs", "drover wake-ups / msg", "drover RSS max", "other load"], rows))
    rtt_mean = {s: val(f"rtt_{s}", "mean_ns") for s in SIZES}
    out += ["", f"Bare SEQPACKET round trip (ping-pong between two processes, {a['rtt_n']:,} round trips): "
            + ", ".join(f"{s} B p50 {us(val(f'rtt_{s}', 'p50_ns'))} µs, p99 {us(val(f'rtt_{s}', 'p99_ns'))} µs, "
                        f"mean {us(rtt_mean[s])} µs" for s in SIZES if f"rtt_{s}" in c) + ".", ""]

    g = goals(r)
    bare_t, mpq_t = val("bare_64_tput", "msgs_per_s"), val("mpq_64_tput", "msgs_per_s")
    out += ["### Targets, 64 B messages (each the median of the rounds' ratios against the same round's baseline; within 5 % of the target counts as met)", "", table(["goal", "measured", "target", "verdict"], g), ""]
    out.append(f"Reference figures of the issue (same machine, earlier): bare socketpair ≈ {REF['bare_64']:,}/s, "
               f"multiprocessing.Queue ≈ {REF['queue_64']:,}/s, SimpleQueue ≈ {REF['simple_64']:,}/s, "
               f"round trip ≈ {REF['rtt_us']} µs. This run: bare {thousands(bare_t)}/s, Queue {thousands(mpq_t)}/s, "
               f"SimpleQueue {thousands(val('mpsq_64_tput', 'msgs_per_s'))}/s, round trip {us(rtt_mean[64])} µs mean.")
    out += diagnostics_report(r.get("diag") or {}, a)
    return out


def diagnostics_report(d: dict, a: dict) -> list[str]:
    if not d:
        return []
    out = ["", f"### Where drover spends its time (perf, separate runs of {a['diag_n']:,} messages, a tenth with "
           "prefetch 1; not the timed runs above)", ""]
    if "note" in d:
        out.append(d["note"])
    seen = [nm for nm in ("cpu µs", "all", *SYSCALLS)
            if any(nm in (e.get("syscalls") or {}) for e in d.values() if isinstance(e, dict))]
    rows, prow = [], []
    for key, label, *_ in DROVER_MODES:
        for size in SIZES:
            e = d.get(f"{key}_{size}") or {}
            if "syscalls" in e:
                rows.append([label, f"{size} B"] + [f"{e['syscalls'].get(nm, 0):.3f}" for nm in seen])
            elif e.get("error"):
                rows.append([label, f"{size} B", f"failed: {e['error']}"] + [""] * (len(seen) - 1))
            p = e.get("profile")
            if p:
                inc = p["inclusive"]
                prow.append([label, f"{size} B", str(p["samples"]), f"{p['kernel_pct']:.0f}%",
                             f"{p['drover_pct']:.1f}%", f"{p['libc_pct']:.1f}%",
                             *(f"{inc.get(x, 0):.0f}%" for x in ("send", "recv", "epoll_wait", "epoll_ctl",
                                                                 "switched away")),
                             "; ".join(f"{pct:.1f}% {sym}" for pct, sym in p["user_top"][:4])])
    if rows:
        out += ["Syscalls of drover per message (`perf stat -e syscalls:sys_enter_*`; `all` = every syscall) and "
                "its CPU time per message (`cpu µs`, perf's task-clock):", "",
                table(["case", "size", *seen], rows), ""]
    if prow:
        out += ["Profile of drover (`perf record -g`, cpu-clock): self time in the kernel, in drover's code and in "
                "libc (malloc/free, syscall stubs); inclusive time in send / recv / epoll_wait / epoll_ctl (the "
                "syscalls with their kernel work, including being preempted on the way back); `switched away` = "
                "samples in the context switch (drover preempted by the processes it woke, or going to sleep):", "",
                table(["case", "size", "samples", "kernel", "drover", "libc", "in send", "in recv", "in epoll_wait",
                       "in epoll_ctl", "switched away", "busiest user-space functions"], prow)]
    return out
