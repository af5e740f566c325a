"""redis: queues on Redis Streams (`backend = "redis"`), side by side in one run.

1. Redis's own limit: `redis-benchmark -s SOCK -c 1 -P 16 -n N XADD s '*' f
   <64 bytes>` against a private redis-server (no persistence), msgs/s.
2. 64 B messages end to end through drover on that same redis-server: one
   producer → drover → stream → drover → one consumer (`bench/c/qb.c`),
   at-least-once, prefetch 64, the consumer acking each message (drover
   XACKs and XDELs it); msgs/s, and p50/p99 latency at a paced rate.
3. The same through a local in-memory queue.

Throughput cases run in alternating rounds (benchmark, Redis queue, local
queue), the median of `--redis-repeat` each. Ratios: 2 ÷ 1 (target ≥ 0.3)
and 2 ÷ 3. Also the CPU drover and redis-server spend per message.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from lib import BenchError
from lib.drover import Drover
from lib.harness import Option
from lib.load import QUIET_PCT
from lib.proc import CLK_TCK
from lib.procs import wait_for
from lib.stats import DASH, table, thousands, times, us
from suites.queues import OPTIONS as QUEUE_OPTIONS
from suites.queues import QueueBench, cpu_ticks, median_run, queue_config

TITLE = "Redis backend: end to end through drover against redis-benchmark XADD on the same server"
NEEDS = ("qb",)
OPTIONS = [
    Option("--redis-n", int, 300_000, 20_000, "redis: messages per drover throughput run (64 B)"),
    Option("--redis-bench-n", int, 1_000_000, 100_000, "redis: XADDs per redis-benchmark run (its -n)"),
    Option("--redis-repeat", int, 5, 1, "redis: throughput runs per case, in alternating rounds (the median is shown)"),
    Option("--redis-lat-n", int, 10_000, 1_000, "redis: messages per latency run"),
    Option("--redis-rate", float, 5_000, 5_000, "redis: messages/s in latency runs"),
    # Shared with the queues suite, so that both read the same.
    *(o for o in QUEUE_OPTIONS if o.flag in ("--capacity", "--stall-secs")),
]

SIZE = 64
TARGET = 0.3  # drover's Redis queue ÷ redis-benchmark XADD
BAND = 0.05  # a ratio within 5 % of its target is at the target
ROWS = [
    ("bench", "redis-benchmark XADD (-c 1 -P 16), no drover"),
    ("redis", "drover, Redis queue (at-least-once, prefetch 64)"),
    ("local", "drover, local in-memory queue (at-least-once, prefetch 64)"),
]
LABELS = dict(ROWS)


class RedisServer:
    """A private redis-server in its own session: a Unix socket in `dir`
    (or in a short temp dir when that path is too long for one), no TCP,
    no persistence."""

    def __init__(self, ctx, dir: Path):
        self.ctx = ctx
        self.dir = dir
        sock = dir / "redis.sock"
        if len(str(sock)) >= 100:  # sun_path holds 108 bytes
            sock = Path(tempfile.mkdtemp(prefix="drover-bench-redis-")) / "redis.sock"
        self.socket = sock
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        for tool in ("redis-server", "redis-cli", "redis-benchmark"):
            if not shutil.which(tool):
                raise BenchError(f"`{tool}` is not installed: install the Debian package `redis-server` "
                                 "(it provides redis-server, redis-cli and redis-benchmark)")
        with open(self.dir / "redis.log", "wb") as log:
            self.proc = self.ctx.procs.start(
                ["redis-server", "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                 "--dir", self.dir, "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for("redis-server to answer PING", 30, self.ping, interval=0.01, alive=self.alive)
        self.pid = self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = (self.dir / "redis.log").read_text(errors="replace").strip()[-500:]
            raise BenchError(f"redis-server exited with status {self.proc.returncode}: {tail}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.socket))
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64) == b"+PONG\r\n"
        except OSError:
            return False

    def url(self) -> str:
        return f"unix://{self.socket}"

    def cli(self, *args) -> str:
        r = subprocess.run(["redis-cli", "-s", str(self.socket), *map(str, args)], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise BenchError(f"redis-cli {' '.join(map(str, args))}: {r.stderr.strip()}")
        return r.stdout.strip()

    def version(self) -> str:
        return subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()


class RedisBench(QueueBench):
    """The queues suite's drover runs (`run_drover`), with the queue on
    Redis when `backend` says so."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.r = {"cases": {}, "load": {}, "server": {}}
        self.backend = "local"
        self.server: RedisServer | None = None

    def drover(self, name: str, **config) -> Drover:
        d = self.ctx.dir(name)
        (d / "state").mkdir()
        text = queue_config(d / "state", **config)
        if self.backend == "redis":
            keys = (f'backend = "redis"\nurl = {json.dumps(self.server.url())}\n'
                    f"stream = {json.dumps(stream_of(name))}\n")
            text = text.replace("[queue.bench]\n", "[queue.bench]\n" + keys, 1)
        (d / "drover.toml").write_text(text)
        return Drover(self.ctx.drover, self.ctx.procs, d, d / "drover.toml")

    def measured(self, key: str, label: str, fn) -> dict:
        """The queues suite's `measured`, with redis-server's CPU taken out
        of `other_load_pct`: it is the bench's own work, but it is reaped
        only at the end, so the other-load count would take it for others'."""
        t0, cpu0 = time.monotonic(), cpu_ticks(self.server.pid)
        res = super().measured(key, label, fn)
        wall, redis_s = time.monotonic() - t0, (cpu_ticks(self.server.pid) - cpu0) / CLK_TCK
        if wall > 0:
            own_pct = 100 * redis_s / (wall * (os.cpu_count() or 1))
            res["other_load_pct"] = max(0.0, res["other_load_pct"] - own_pct)
        return res

    def redis_benchmark(self) -> dict:
        """redis-benchmark's pipelined XADDs, its CSV line parsed; the
        stream is deleted afterwards."""
        n = self.o.redis_bench_n
        cpu0 = cpu_ticks(self.server.pid)
        r = subprocess.run(["redis-benchmark", "-s", str(self.server.socket), "-c", "1", "-P", "16", "-n", str(n),
                            "--csv", "XADD", "s", "*", "f", "x" * SIZE],
                           capture_output=True, text=True, timeout=60 + n / 10_000)
        cpu1 = cpu_ticks(self.server.pid)
        self.server.cli("DEL", "s")
        if r.returncode != 0:
            raise BenchError(f"redis-benchmark failed: {r.stderr.strip()[-300:]}")
        rows = [line.split('","') for line in r.stdout.strip().splitlines()]
        if len(rows) < 2 or len(rows[0]) != len(rows[1]):
            raise BenchError(f"unexpected redis-benchmark output: {r.stdout[-300:]}")
        head = [h.strip('"') for h in rows[0]]
        vals = dict(zip(head, (v.strip('"') for v in rows[1])))
        return {"n": n, "msgs_per_s": float(vals["rps"]), "p50_ms": float(vals["p50_latency_ms"]),
                "p99_ms": float(vals["p99_latency_ms"]), "avg_ms": float(vals["avg_latency_ms"]),
                "redis_cpu_s": (cpu1 - cpu0) / CLK_TCK}

    def through_drover(self, backend: str, name: str, mode: str) -> dict:
        """One run of the queues suite's producer → drover → consumer with
        the queue on `backend`; for Redis, the server's CPU meanwhile and
        what the run left in the stream (nothing: every entry is XDELed
        once acked)."""
        self.backend = backend
        n = self.o.redis_n if mode == "tput" else self.o.redis_lat_n
        rate = self.o.redis_rate if mode == "lat" else 0
        cpu0 = cpu_ticks(self.server.pid)
        res = self.run_drover(name, "at-least-once", 64, True, SIZE, mode, n, rate)
        if backend == "redis":
            res["redis_cpu_s"] = (cpu_ticks(self.server.pid) - cpu0) / CLK_TCK
            stream = stream_of(name)
            res["stream_left"] = int(self.server.cli("XLEN", stream))
            self.server.cli("DEL", stream)
            if res["stream_left"] and not res.get("error"):
                res["error"] = f"{res['stream_left']:,} entries left in {stream} after every message was acked"
        return res

    def run(self) -> dict:
        self.server = RedisServer(self.ctx, self.ctx.dir("redis-server"))
        self.server.start()
        self.r["server"] = {"version": self.server.version(), "socket": str(self.server.socket)}
        runs: dict[str, list[dict]] = {}
        for rnd in range(self.o.redis_repeat):
            self.quiet(f"round {rnd + 1}")
            self.ctx.step(f"throughput, round {rnd + 1} of {self.o.redis_repeat}")
            for row, label in ROWS:
                n = self.o.redis_bench_n if row == "bench" else self.o.redis_n
                fn = (self.redis_benchmark if row == "bench"
                      else lambda row=row, rnd=rnd: self.through_drover(row, f"{row}_tput_{rnd}", "tput"))
                runs.setdefault(row, []).append(self.measured(f"{row}_tput", f"{label}, {n:,} messages", fn))
        for row, tries in runs.items():
            self.r["cases"][f"{row}_tput"] = median_run(tries)
        self.quiet("latency")
        for row, label in ROWS[1:]:
            self.r["cases"][f"{row}_lat"] = self.measured(
                f"{row}_lat", f"{label}, latency, {self.o.redis_lat_n:,} messages at {self.o.redis_rate:g}/s",
                lambda row=row: self.through_drover(row, f"{row}_lat", "lat"))
        self.quiet("end")
        return self.r


def stream_of(run: str) -> str:
    return f"bench:{run}"


def run(ctx) -> dict:
    return RedisBench(ctx).run()


def at_target(r: float | None, target: float) -> str:
    """Verdict of a ratio that must reach `target`, within the ±5 % band."""
    if r is None:
        return DASH
    if r >= target:
        return "met"
    if r >= target * (1 - BAND):
        return "at the target (within 5 %)"
    return f"MISSED (−{100 * (1 - r / target):.0f}%)"


# ------------------------------------------------------------------ report


def report(r: dict, header: dict) -> list[str]:
    c, a = r["cases"], r["options"]
    out = []
    loads = [ld["busy_pct"] for ld in r["load"].values()]
    busy = [f"{when}: {ld['busy_pct']:.0f}%" + (f" ({', '.join(ld['top'])})" if ld["top"] else "")
            for when, ld in r["load"].items() if ld["busy_pct"] > QUIET_PCT]
    out.append(f"- other load at the {len(loads)} quiet checks (1 s each): {min(loads):.1f}–{max(loads):.1f}% of "
               "the CPUs" + (f"; busy at {'; '.join(busy)}" if busy else ""))
    out.append(f"- server: {r['server'].get('version', '?')}, private, on a Unix socket, no persistence "
               "(`--save \"\" --appendonly no`)")
    out.append(f"- redis-benchmark: `redis-benchmark -s SOCK -c 1 -P 16 -n {a['redis_bench_n']:,} --csv XADD s '*' f "
               f"<{SIZE} bytes>` (one connection, 16 commands per round trip); its latency columns are per "
               "pipelined command, not end to end")
    out.append(f"- drover: one producer → drover → one consumer (`bench/c/qb.c`, as in the queues suite), "
               f"{SIZE} B messages, at-least-once, prefetch 64, capacity {a['capacity']:,}, the consumer acking "
               f"each; {a['redis_n']:,} messages flat out, timed from the send stamp in the first to the receipt of "
               f"the last; median of {a['redis_repeat']} runs in alternating rounds. Latency: "
               f"{a['redis_lat_n']:,} messages at {a['redis_rate']:g}/s, each stamped at send. On Redis each "
               "message is XADDed (field `data`), read with XREADGROUP, XACKed and XDELed; the stream must be "
               "empty after each run")
    out.append("")

    def val(key, field="msgs_per_s"):
        v = c.get(key) or {}
        return None if v.get("error") else v.get(field)

    base = val("bench_tput")
    rows = []
    for row, label in ROWS:
        tc, lc = c.get(f"{row}_tput") or {}, c.get(f"{row}_lat") or {}
        t = val(f"{row}_tput")
        runs = [x for x in tc.get("runs", []) if x]
        spread = f"{min(runs) / 1000:,.0f}–{max(runs) / 1000:,.0f}k" if len(runs) > 1 else DASH
        if tc.get("failed_runs"):
            spread += f" ({tc['failed_runs']} of {len(tc['runs'])} failed)"
        if row == "bench":
            p50, p99 = (f"{tc['p50_ms'] * 1000:.0f} †", f"{tc['p99_ms'] * 1000:.0f} †") if t else (DASH, DASH)
            n = tc.get("n")
        else:
            p50, p99 = us(val(f"{row}_lat", "p50_ns")), us(val(f"{row}_lat", "p99_ns"))
            n = tc.get("received")
        dcpu = rcpu = rss = DASH
        if t and "drover_cpu_s" in tc:
            dcpu = f"{tc['drover_cpu_s'] / n * 1e6:.2f} ({100 * tc['drover_cpu_s'] / tc['drover_wall_s']:.0f}%)"
            rss = f"{tc['rss_max_kb'] / 1024:.1f} MB"
        if t and "redis_cpu_s" in tc and n:
            rcpu = f"{tc['redis_cpu_s'] / n * 1e6:.2f}"
        failed = tc.get("error") or lc.get("error")
        rows.append([label + (" (FAILED)" if failed else ""), thousands(t), spread,
                     "1" if row == "bench" and t else times(t / base if t and base else None), p50, p99, dcpu, rcpu,
                     rss, f"{max(tc.get('other_load_pct', 0), lc.get('other_load_pct', 0)):.0f}%"])
    out.append(table(["case", "msgs/s", "runs", "÷ redis-benchmark", "p50 µs", "p99 µs",
                      "drover CPU s / 1M msgs (of a core)", "redis-server CPU s / 1M msgs", "drover RSS max",
                      "other load"], rows))
    out += ["", "† redis-benchmark's own latency per pipelined XADD (16 in flight), not a message's way from "
            "producer to consumer.", ""]

    def failed(*keys) -> str:
        errs = [f"{k}: {c[k]['error']}" for k in keys if (c.get(k) or {}).get("error")]
        return "; ".join(e if len(e) < 160 else e[:157] + "…" for e in errs) or "not measured"

    red, loc = val("redis_tput"), val("local_tput")
    g = []
    rt = red / base if red and base else None
    g.append(["drover's Redis queue ÷ redis-benchmark XADD, same server",
              f"{thousands(red)} ÷ {thousands(base)}/s = {rt:.2f}" if rt else failed("redis_tput", "bench_tput"),
              f"≥ {TARGET:.2f}", at_target(rt, TARGET) if rt else "FAILED"])
    rl = red / loc if red and loc else None
    g.append(["drover's Redis queue ÷ its local in-memory queue",
              f"{thousands(red)} ÷ {thousands(loc)}/s = {rl:.2f}" if rl else failed("redis_tput", "local_tput"),
              "(no target)", DASH])
    p_red, p_loc = val("redis_lat", "p50_ns"), val("local_lat", "p50_ns")
    g.append(["latency p50, Redis queue ÷ local queue",
              f"{us(p_red)} ÷ {us(p_loc)} µs = {p_red / p_loc:.1f}" if p_red and p_loc
              else failed("redis_lat", "local_lat"), "(no target)", DASH])
    out += ["### Goals", "", table(["goal", "measured", "target", "verdict"], g), ""]
    out.append("For scale: Celery and RQ move a few thousand tasks a second.")
    return out
