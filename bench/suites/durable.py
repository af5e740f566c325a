"""durable: what `durable = true` costs, side by side in one run.

1. Throughput producer → drover → consumer (at-least-once, prefetch 64,
   64 B and 4 KiB): an in-memory queue without confirms, the same with
   `confirm = true`, and a durable queue with confirms. The producers of
   confirm queues are `qb produce-confirm` (bench/c/qb.c): pipelined, at
   most `--window` messages unconfirmed. Ratios durable ÷ in-memory.
2. The disk's own limit, measured in the same run: write of a 64 B record
   + fdatasync in a loop, in the directory of the state_dirs; durable msgs/s
   ÷ that rate = messages per commit. In a separate untimed run, perf
   counts drover's fsync/fdatasync calls: the store's commits per second.
3. Restart with N stored 64 B messages (1,000,000; 10,000 alongside for
   memory): filled through drover (a producer with confirms, no consumer),
   drover SIGKILLed (a crash), started again with a consumer: `drover run`
   exec → the consumer's first message, → the first `status` answer, and
   drover's memory with N stored.

The SQLite vs redb comparison of the store engines is bench/store's own
project (bench/store/README.md); it is not run here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lib import BenchError
from lib.drover import Drover, toml_list
from lib.harness import Option
from lib.load import QUIET_PCT, OthersCpu, wait_quiet
from lib.proc import CLK_TCK, status_kb
from lib.procs import interrupt, wait_for
from lib.stats import DASH, at_least, percentile, table, thousands, times, verdict
from suites.queues import consumer_state, cpu_ticks, median_run, queue_of, read_pid

TITLE = "Durable queues: throughput with confirms and fsync, restart with 1M stored messages"
NEEDS = ("qb",)
OPTIONS = [
    Option("--durable-n64", int, 300_000, 20_000, "durable: messages per throughput run, 64 B"),
    Option("--durable-n4k", int, 100_000, 5_000, "durable: messages per throughput run, 4 KiB"),
    Option("--durable-repeat", int, 3, 1, "durable: throughput runs per case (the median is shown)"),
    Option("--window", int, 128, 128, "durable: messages a confirm producer keeps unconfirmed at most"),
    Option("--stored", int, 1_000_000, 100_000, "durable: messages stored before the restart (64 B)"),
    Option("--stored-small", int, 10_000, 10_000, "durable: the small stored count memory is compared with"),
    Option("--fsync-secs", float, 2.0, 0.5, "durable: seconds of each fdatasync-rate measurement"),
    Option("--no-commit-count", bool, False, False, "durable: skip the perf run counting drover's fsyncs"),
]

SIZES = [64, 4096]
CASES = [
    # key, label, durable, confirm
    ("mem", "in-memory queue, no confirm", False, False),
    ("memc", "in-memory queue, confirm = true", False, True),
    ("dur", "durable queue, confirm = true", True, True),
]
LABELS = {k: label for k, label, *_ in CASES}
CAPACITY = 1_000_000  # the maximum drover allows; every case uses it
STALL_SECS = 5


def config(state: Path, *, durable: bool, confirm: bool, consumer: list | None, producer: list | None) -> str:
    lines = [
        "[supervisor]", f"state_dir = {json.dumps(str(state))}", "",
        "[queue.bench]", f"capacity = {CAPACITY}", "max_message_bytes = 65536", 'delivery = "at-least-once"',
        "prefetch = 64", f"durable = {str(durable).lower()}", f"confirm = {str(confirm).lower()}", "",
    ]
    if consumer:
        lines += ["[group.consumer]", f"command = {toml_list(consumer)}", 'inputs = ["bench"]',
                  'restart = "never"', 'start_secs = "100ms"', ""]
    if producer:
        lines += ["[group.producer]", f"command = {toml_list(producer)}", 'outputs = ["bench"]',
                  'restart = "never"', 'start_secs = "100ms"', ""]
    return "\n".join(lines)


def fsync_rate(directory: Path, secs: float, overwrite: bool) -> dict:
    """write(64 B) + fdatasync in a loop for `secs` on a fresh file in
    `directory`: appended records (the file grows, as a WAL does until it
    wraps) or the same record rewritten in place."""
    path = directory / f"fsync-probe.{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    rec = b"r" * 63 + b"\n"
    lat: list[int] = []
    try:
        t0 = time.monotonic_ns()
        end = t0 + int(secs * 1e9)
        now = t0
        while now < end:
            if overwrite:
                os.pwrite(fd, rec, 0)
            else:
                os.write(fd, rec)
            os.fdatasync(fd)
            t = time.monotonic_ns()
            lat.append(t - now)
            now = t
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    lat.sort()
    return {"n": len(lat), "per_s": len(lat) * 1e9 / (now - t0), "p50_us": percentile(lat, 50) / 1000,
            "p99_us": percentile(lat, 99) / 1000}


class DurableBench:
    def __init__(self, ctx):
        self.ctx = ctx
        self.o = ctx.opts
        self.qb = ctx.bins["qb"]
        self.r: dict = {"cases": {}, "fsync": {}, "commits": {}, "restart": {}, "load": {}}

    def n(self, size: int) -> int:
        return self.o.durable_n64 if size == 64 else self.o.durable_n4k

    def drover(self, d: Path, state: Path, **cfg) -> Drover:
        (d / "drover.toml").write_text(config(state, **cfg))
        return Drover(self.ctx.drover, self.ctx.procs, d, d / "drover.toml")

    def measured(self, key: str, label: str, fn) -> dict:
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

    # -- 1. throughput

    def producer_argv(self, confirm: bool, n: int, size: int, ready: Path, result: Path) -> list:
        if confirm:
            return [self.qb, "produce-confirm", n, size, self.o.window, ready, result]
        return [self.qb, "produce", n, size, 0, ready]

    def throughput(self, name: str, size: int, durable: bool, confirm: bool, n: int,
                   perf: list | None = None) -> dict:
        d = self.ctx.dir(name)
        state = d / "state"
        state.mkdir()
        ready_c, ready_p, result_c, result_p = d / "ready.consumer", d / "ready.producer", d / "result.json", \
            d / "producer.json"
        dr = self.drover(d, state, durable=durable, confirm=confirm,
                         consumer=[self.qb, "consume", n, size, "tput", 1, ready_c, result_c],
                         producer=self.producer_argv(confirm, n, size, ready_p, result_p))
        tool = None
        try:
            dr.start()
            pids = wait_for("the consumer and producer to start", 15,
                            lambda: (read_pid(ready_c), read_pid(Path(f"{ready_p}.0")))
                            if ready_c.exists() and Path(f"{ready_p}.0").exists() else None,
                            interval=0.005, alive=dr.alive)
            time.sleep(0.05)
            rss_start = status_kb(dr.pid, "VmRSS")
            if perf:
                tool = subprocess.Popen([*perf, "-p", str(dr.pid)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                time.sleep(0.5)  # perf needs a moment to attach
            cpu0, t0 = cpu_ticks(dr.pid), time.monotonic()
            os.kill(pids[1], signal.SIGUSR1)
            rss_max = rss_start
            timeout = 60 + n / 5_000
            deadline = time.monotonic() + timeout
            next_check, progress = time.monotonic() + 1, (-1, time.monotonic())
            while not (result_c.exists() and (result_p.exists() or not confirm)):
                dr.alive()
                rss_max = max(rss_max, status_kb(dr.pid, "VmRSS"))
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(f"no result after {timeout:g} s; queue: {queue_of(dr)}")
                if now >= next_check:
                    next_check = now + 1
                    q = queue_of(dr)
                    mark = (q["delivered"], q.get("confirmed", 0))
                    if mark != progress[0]:
                        progress = (mark, now)
                    elif now - progress[1] >= STALL_SECS:
                        raise BenchError(
                            f"STALLED: nothing delivered or confirmed for {now - progress[1]:.0f} s after "
                            f"{q['delivered']:,} delivered, {q.get('confirmed', 0):,} confirmed of {n:,} "
                            f"(consumer {consumer_state(pids[0])}); queue: {q}")
                time.sleep(0.02)
            cpu1, t1 = cpu_ticks(dr.pid), time.monotonic()
            interrupt(tool)
            tool = None
            res = json.loads(result_c.read_text())
            if confirm:
                res["producer"] = json.loads(result_p.read_text())
            # The last acks (and, durable, their deletes) may still be on their way.
            want = (lambda q: q["delivered"] == n and q["acked"] == n and q.get("stored", 0) == 0
                    and q.get("confirmed", 0) == (n if confirm else 0))
            try:
                q = wait_for("drover to count every delivery and ack", 5,
                             lambda: (lambda q: q if want(q) else None)(queue_of(dr)), interval=0.02)
            except BenchError:
                q = queue_of(dr)
            res.update(drover_cpu_s=(cpu1 - cpu0) / CLK_TCK, drover_wall_s=t1 - t0, rss_start_kb=rss_start,
                       rss_max_kb=rss_max, queue=q)
            if not want(q) or q["redelivered"] or q.get("store_error"):
                res["error"] = res.get("error") or f"unexpected queue counters: {q}"
            p = res.get("producer") or {}
            if p.get("error") or p.get("refused"):
                res["error"] = res.get("error") or f"producer: {p}"
            if res.get("bad_size") or res.get("out_of_order"):
                res["error"] = res.get("error") or (
                    f"{res['bad_size']} messages of a wrong size, {res['out_of_order']} out of order")
            return res
        finally:
            interrupt(tool)
            dr.stop(timeout=30)

    def fsync_baseline(self, rnd: int) -> None:
        d = self.ctx.dir(f"fsync_{rnd}")
        for mode, overwrite in (("append", False), ("overwrite", True)):
            key = f"{mode}_{rnd}"
            self.r["fsync"][key] = self.measured(
                key, f"disk: write 64 B + fdatasync ({mode}), {self.o.fsync_secs:g} s",
                lambda: fsync_rate(d, self.o.fsync_secs, overwrite))

    def commit_count(self) -> None:
        """A separate, untimed run of each durable case under `perf stat`,
        counting drover's fsync and fdatasync calls (one per commit of the
        WAL, plus the checkpoints')."""
        perf = shutil.which("perf")
        if not perf:
            self.r["commits"]["note"] = "perf is not installed: the store's commits were not counted"
            return
        for size in SIZES:
            n = self.n(size)
            out = self.ctx.root / f"commits_{size}.csv"
            events = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"

            def run(size=size, n=n, out=out):
                res = self.throughput(f"commits_{size}", size, True, True, n,
                                      perf=[perf, "stat", "-x,", "-o", str(out), "-e", events])
                counts = {}
                for line in out.read_text().splitlines():
                    parts = line.split(",")
                    if len(parts) >= 3 and not line.startswith("#") and parts[0].isdigit():
                        counts[parts[2].split("sys_enter_")[-1]] = int(parts[0])
                if not counts:
                    raise BenchError(f"perf stat counted nothing: {out.read_text()[-300:]}")
                return {"n": n, "counts": counts, "msgs_per_s": res.get("msgs_per_s"),
                        "elapsed_s": res.get("elapsed_ns", 0) / 1e9, "error": res.get("error")}

            self.r["commits"][str(size)] = self.measured(
                f"commits_{size}", f"perf: drover's fsyncs, durable + confirm, {size} B, {n:,} messages", run)

    # -- 3. restart with N stored

    def fill(self, name: str, n: int) -> tuple[dict, Path]:
        """N messages of 64 B into a durable queue through drover (a confirm
        producer, no consumer), then drover is SIGKILLed."""
        d = self.ctx.dir(f"{name}_fill")
        state = d / "state"
        state.mkdir()
        ready_p, result_p = d / "ready.producer", d / "producer.json"
        dr = self.drover(d, state, durable=True, confirm=True, consumer=None,
                         producer=self.producer_argv(True, n, 64, ready_p, result_p))
        res: dict = {"n": n}
        try:
            dr.start()
            pid = wait_for("the producer to start", 15, lambda: read_pid(Path(f"{ready_p}.0")), 0.005,
                           alive=dr.alive)
            time.sleep(0.05)
            res["rss_empty_kb"] = status_kb(dr.pid, "RssAnon")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGUSR1)
            timeout = 120 + n / 5_000
            progress = (-1, t0)
            while not result_p.exists():
                dr.alive()
                now = time.monotonic()
                if now - t0 > timeout:
                    raise BenchError(f"filling: no result after {timeout:g} s; queue: {queue_of(dr)}")
                q = queue_of(dr)
                if q.get("confirmed", 0) != progress[0]:
                    progress = (q.get("confirmed", 0), now)
                elif now - progress[1] >= STALL_SECS:
                    raise BenchError(f"filling STALLED: {q.get('confirmed', 0):,} of {n:,} confirmed, nothing "
                                     f"more for {now - progress[1]:.0f} s; queue: {q}")
                time.sleep(0.25)
            res["seconds"] = time.monotonic() - t0
            res["producer"] = p = json.loads(result_p.read_text())
            if p.get("error") or p.get("ok") != n:
                raise BenchError(f"filling: the producer says {p}")
            q = queue_of(dr)
            res.update(queue=q, vmrss_kb=status_kb(dr.pid, "VmRSS"), rss_anon_kb=status_kb(dr.pid, "RssAnon"),
                       hwm_kb=status_kb(dr.pid, "VmHWM"))
            if q.get("stored") != n or q["depth"] != n:
                raise BenchError(f"filling: {n:,} confirmed but the queue says {q}")
            # A crash: no shutdown, no last commit, no checkpoint.
            dr.proc.kill()
            dr.proc.wait(10)
        finally:
            self.ctx.procs.kill_session(dr.proc) if dr.proc else None
        res["file_mb"] = sum(f.stat().st_size for f in state.glob("queues.sqlite*")) / 2**20
        return res, state

    def restart(self, name: str, state: Path, n: int, poll_status: bool) -> dict:
        """`drover run` with a consumer on the state_dir of a crashed drover:
        exec → the consumer's first message (and when the consumer ran);
        with poll_status, `status` is asked over the socket back to back from
        the exec until it answers (that run's first message is affected)."""
        d = self.ctx.dir(name)
        ready_c, result_c = d / "ready.consumer", d / "first.json"
        dr = self.drover(d, state, durable=True, confirm=True, consumer=[self.qb, "first", 64, ready_c, result_c],
                         producer=None)
        res: dict = {}
        try:
            dr.start()
            t0 = dr.t0
            if poll_status:
                def answer():
                    try:
                        return dr.status_socket(timeout=30)
                    except BenchError:
                        return None
                st = wait_for("drover's first status answer", 60, answer, interval=0.001, alive=dr.alive)
                res["status_ms"] = (time.monotonic_ns() - t0) / 1e6
                q = next(q for q in st["queues"] if q["name"] == "bench")
                res["status_stored"] = q.get("stored")
            first = wait_for("the consumer's first message", 60,
                             lambda: json.loads(result_c.read_text()) if result_c.exists() else None,
                             interval=0.001, alive=dr.alive)
            res.update(first_ms=(first["first_ns"] - t0) / 1e6, consumer_ms=(first["started_ns"] - t0) / 1e6,
                       first_seq=first["seq"], first_size=first["size"])
            time.sleep(1.0)  # settled: the consumer holds its prefetch, the rest waits in the store
            res.update(vmrss_kb=status_kb(dr.pid, "VmRSS"), rss_anon_kb=status_kb(dr.pid, "RssAnon"),
                       hwm_kb=status_kb(dr.pid, "VmHWM"))
            t = time.monotonic()
            r = dr.ctl("status", "--json", timeout=30)
            res["status_cli_ms"] = (time.monotonic() - t) * 1000
            if r.returncode != 0:
                raise BenchError(f"drover status failed: {r.stderr.strip()}")
            q = next(q for q in json.loads(r.stdout)["queues"] if q["name"] == "bench")
            res["queue"] = q
            if q.get("stored") != n or q["depth"] + q["in_flight"] != n or q.get("store_error"):
                res["error"] = f"{n:,} messages were stored before the crash; after the restart the queue says {q}"
            elif first["seq"] != 0:
                res["error"] = f"the first message after the restart is #{first['seq']}, not #0 (the oldest)"
            log = [line for line in dr.stderr_lines(50) if "stored" in line or "back from the store" in line]
            res["log"] = log[-3:]
            dr.proc.kill()
            dr.proc.wait(10)
        finally:
            self.ctx.procs.kill_session(dr.proc) if dr.proc else None
        return res

    def stored(self, n: int) -> None:
        key = str(n)
        entry: dict = {"n": n}
        self.r["restart"][key] = entry
        label = f"{n:,} stored"
        filled = self.measured(f"fill_{n}", f"restart: filling a durable queue with {n:,} messages of 64 B "
                               "through drover, then SIGKILL", lambda: {"fill": self.fill(f"stored_{n}", n)})
        if filled.get("error"):
            entry["error"] = filled["error"]
            return
        entry["fill"], state = filled["fill"]
        entry["fill"]["other_load_pct"] = filled["other_load_pct"]
        entry["state"] = str(state)
        entry["first"] = self.measured(f"restart_{n}", f"restart, {label}: exec → first message",
                                       lambda: self.restart(f"restart_{n}", state, n, False))
        entry["status"] = self.measured(f"restart_status_{n}", f"restart again, {label}: exec → status answer",
                                        lambda: self.restart(f"restart_status_{n}", state, n, True))

    # --

    def quiet(self, when: str) -> None:
        self.r["load"][when] = wait_quiet(self.o.quiet_wait if when != "end" else 0, say=self.ctx.step)

    def run(self) -> dict:
        runs: dict[str, list[dict]] = {}
        for rnd in range(self.o.durable_repeat):
            self.quiet(f"round {rnd + 1}")
            self.fsync_baseline(rnd)
            for size in SIZES:
                n = self.n(size)
                for key, label, durable, confirm in CASES:
                    runs.setdefault(f"{key}_{size}", []).append(self.measured(
                        f"{key}_{size}", f"{label}, {size} B, {n:,} messages (round {rnd + 1})",
                        lambda: self.throughput(f"{key}_{size}", size, durable, confirm, n)))
        for key, tries in runs.items():
            self.r["cases"][key] = median_run(tries)
        if not self.o.no_commit_count:
            self.commit_count()
        self.quiet("restart")
        for n in dict.fromkeys([self.o.stored_small, self.o.stored]):
            self.stored(n)
        self.quiet("end")
        return self.r


def run(ctx) -> dict:
    return DurableBench(ctx).run()


# ------------------------------------------------------------------ report


def fsync_summary(r: dict, mode: str) -> dict | None:
    """The median round of the fdatasync-rate measurements of one mode."""
    got = sorted((v for k, v in r["fsync"].items() if k.startswith(mode + "_") and not v.get("error")),
                 key=lambda v: v["per_s"])
    if not got:
        return None
    med = dict(got[(len(got) - 1) // 2])
    med["runs"] = [v["per_s"] for v in got]
    return med


def report(r: dict, header: dict) -> list[str]:
    c, a = r["cases"], r["options"]
    out = []
    loads = [ld["busy_pct"] for ld in r["load"].values()]
    busy = [f"{when}: {ld['busy_pct']:.0f}%" + (f" ({', '.join(ld['top'])})" if ld["top"] else "")
            for when, ld in r["load"].items() if ld["busy_pct"] > QUIET_PCT]
    out.append(f"- other load at the {len(loads)} quiet checks (1 s each): {min(loads):.1f}–{max(loads):.1f}% of "
               "the CPUs" + (f"; busy at {'; '.join(busy)}" if busy else ""))
    out.append(f"- throughput: one producer → drover → one consumer (`bench/c/qb.c`), queue `at-least-once`, "
               f"prefetch 64, capacity {CAPACITY:,}; the consumer acks each message; N = {a['durable_n64']:,} "
               f"messages of 64 B, {a['durable_n4k']:,} of 4 KiB, timed from the send stamp in the first to the "
               f"receipt of the last; median of {a['durable_repeat']} runs interleaved in rounds. Producers of "
               f"`confirm = true` queues keep at most {a['window']} messages unconfirmed (`qb produce-confirm`: "
               "when the window is full it blocks for one reply, takes every reply already there, sends again); "
               "without confirm the producer sends flat out (blocking sends)")
    out.append("- durable: `durable = true`, SQLite WAL with synchronous=FULL; a message is delivered and "
               "confirmed only once its group commit is fsynced; every case starts on an empty state_dir under "
               "target/bench/run/durable/")
    out.append("")

    def val(key, field="msgs_per_s"):
        v = c.get(key) or {}
        return None if v.get("error") else v.get(field)

    rows = []
    for size in SIZES:
        base = val(f"mem_{size}")
        for key, label, *_ in CASES:
            tc = c.get(f"{key}_{size}") or {}
            t = val(f"{key}_{size}")
            runs = [x for x in tc.get("runs", []) if x]
            spread = f"{min(runs) / 1000:,.0f}–{max(runs) / 1000:,.0f}k" if len(runs) > 1 else DASH
            if tc.get("failed_runs"):
                spread += f" ({tc['failed_runs']} of {len(tc['runs'])} failed)"
            cpu = rss = conf = DASH
            if "drover_cpu_s" in tc and not tc.get("error"):
                cpu = (f"{tc['drover_cpu_s'] / tc['received'] * 1e6:.2f} "
                       f"({100 * tc['drover_cpu_s'] / tc['drover_wall_s']:.0f}% of a core)")
                rss = f"{tc['rss_max_kb'] / 1024:.1f} MB"
                if tc.get("producer"):
                    conf = thousands(tc["producer"].get("msgs_per_s"))
            rows.append([label + (" (FAILED)" if tc.get("error") else ""), f"{size} B" if size < 1024 else "4 KiB",
                         thousands(t), spread, "1" if key == "mem" and t else times(t / base if t and base else None),
                         conf, cpu, rss, f"{tc.get('other_load_pct', 0):.0f}%"])
    out.append(table(["case", "size", "msgs/s", "runs", "÷ in-memory", "producer confirms/s",
                      "drover CPU s / 1M msgs", "drover RSS max", "other load"], rows))

    # -- the disk
    app, ovw = fsync_summary(r, "append"), fsync_summary(r, "overwrite")
    out += ["", "### The disk's limit", ""]
    drows = []
    for label, s in (("write 64 B appended + fdatasync", app), ("write 64 B in place + fdatasync", ovw)):
        if s:
            spread = f"{min(s['runs']):,.0f}–{max(s['runs']):,.0f}" if len(s["runs"]) > 1 else DASH
            drows.append([label, f"{s['per_s']:,.0f}", spread, f"{s['p50_us']:.0f}", f"{s['p99_us']:.0f}"])
    if drows:
        out += [f"Measured in the same run, {a['fsync_secs']:g} s per round, on a file in the directory of the "
                "cases' state_dirs (the same file system), by the bench itself (Python `os.write` + "
                "`os.fdatasync`; the interpreter's overhead is a few µs next to the sync):", "",
                table(["loop", "syncs/s (median round)", "rounds", "p50 µs", "p99 µs"], drows), ""]
    fs = app["per_s"] if app else None
    mrows = []
    cm = r.get("commits") or {}
    for size in SIZES:
        t = val(f"dur_{size}")
        e = cm.get(str(size)) or {}
        counted = per_s = per_commit = DASH
        if e.get("counts") and not e.get("error"):
            syncs = sum(e["counts"].values())
            counted = " + ".join(f"{v:,} {k}" for k, v in sorted(e["counts"].items()))
            if e.get("elapsed_s"):
                per_s = f"{syncs / e['elapsed_s']:,.0f}"
            per_commit = f"{e['n'] / syncs:.1f}" if syncs else DASH
            counted += f" ({e['n']:,} msgs at {thousands(e.get('msgs_per_s'))}/s)"
        elif e.get("error"):
            counted = f"failed: {e['error'][:120]}"
        mrows.append([f"{size} B" if size < 1024 else "4 KiB", thousands(t), f"{t / fs:.1f}" if t and fs else DASH,
                      counted, per_s, per_commit])
    out += ["Durable msgs/s against that rate: *msgs per sync* = durable msgs/s ÷ appended syncs/s, the messages "
            "one commit must carry for the measured rate if every commit costs one sync of this disk. The "
            "store's actual syncs were counted in a separate, untimed run of the same case with `perf stat -e "
            "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p drover` (WAL commits, plus the "
            "checkpoints' syncs of the database file):", "",
            table(["size", "durable msgs/s", "msgs per sync (derived)", "drover's syncs counted", "syncs/s",
                   "msgs per sync (counted)"], mrows)]
    if cm.get("note"):
        out += ["", cm["note"]]

    # -- restart
    out += ["", "### Restart with stored messages", "",
            "A durable queue (capacity 1,000,000) filled with 64 B messages through drover by a confirm "
            "producer, no consumer; drover SIGKILLed once every message was confirmed (a crash: no shutdown, no "
            "checkpoint); then `drover run` again on the same state_dir, with a consumer group (`qb first`: "
            "reads CLOCK_MONOTONIC first thing in main(), then receives and holds its prefetch, never acks). "
            "t0 = CLOCK_MONOTONIC just before the exec of `drover run`. *consumer ran*: the consumer's first "
            "instruction (drover opens the store before it starts groups); *status answer*: a second crash and "
            "restart, `status` asked over the socket back to back from t0 until it answers; *status, settled*: "
            "one `drover status --json` (a CLI process) 1 s after the first message. Memory 1 s after the first "
            "message, with everything but the consumer's 64 in the store (drover keeps at most 1024 ready "
            "messages of a durable queue in memory). The page cache is warm (the file was just written); a "
            "cold start after a reboot reads the file from disk.", ""]
    rr = r["restart"]
    rrows = []
    for key, e in rr.items():
        f, s1, s2 = e.get("fill") or {}, e.get("first") or {}, e.get("status") or {}
        if e.get("error"):
            rrows.append([f"{int(key):,}", f"FAILED: {e['error'][:150]}"] + [""] * 9)
            continue
        p = f.get("producer") or {}
        rrows.append([
            f"{int(key):,}", f"{f.get('seconds', 0):.1f} s ({thousands(p.get('msgs_per_s'))}/s)",
            f"{f.get('file_mb', 0):.0f} MB",
            f"{s1['consumer_ms']:.0f} ms" if "consumer_ms" in s1 else "FAILED" if s1.get("error") else DASH,
            f"{s1['first_ms']:.0f} ms" if "first_ms" in s1 else DASH,
            f"{s2['status_ms']:.0f} ms" if "status_ms" in s2 else "FAILED" if s2.get("error") else DASH,
            f"{s1['status_cli_ms']:.1f} ms" if "status_cli_ms" in s1 else DASH,
            f"{s1['vmrss_kb'] / 1024:.2f} MB" if "vmrss_kb" in s1 else DASH,
            f"{s1['rss_anon_kb'] / 1024:.2f} MB" if "rss_anon_kb" in s1 else DASH,
            f"{s1['hwm_kb'] / 1024:.2f} MB" if "hwm_kb" in s1 else DASH,
            f"{f['rss_anon_kb'] / 1024:.2f} MB" if "rss_anon_kb" in f else DASH,
        ])
    out.append(table(["stored", "fill (through drover)", "store file", "exec → consumer ran", "exec → first message",
                      "exec → status answer", "status, settled", "VmRSS", "RssAnon", "VmHWM",
                      "RssAnon of the filling drover, full"], rrows))
    checks = []
    for key, e in rr.items():
        for what in ("first", "status"):
            s = e.get(what) or {}
            if s.get("error"):
                checks.append(f"{int(key):,} stored, {what} run: **{s['error']}**")
            elif "queue" in s:
                q = s["queue"]
                checks.append(f"{int(key):,} stored, {'first' if what == 'first' else 'second'} restart: first "
                              f"message #{s['first_seq']} (the oldest is #0), status after it: stored "
                              f"{q.get('stored'):,}, depth {q['depth']:,}, in flight {q['in_flight']}, redelivered "
                              f"{q['redelivered']}" + (f"; status answered listing {s['status_stored']:,} stored"
                                                       if "status_stored" in s else ""))
    if checks:
        out += ["", "Checks (nothing lost across the crash, FIFO order kept):", ""] + [f"- {x}" for x in checks]

    # -- goals
    g = []
    for size in SIZES:
        d_, m_, mc = val(f"dur_{size}"), val(f"mem_{size}"), val(f"memc_{size}")
        sz = f"{size} B" if size < 1024 else "4 KiB"
        for base, what in ((m_, "in-memory, no confirm"), (mc, "in-memory with confirm")):
            rt = d_ / base if d_ and base else None
            g.append([f"durable + confirm ÷ {what}, {sz}",
                      f"{thousands(d_)} ÷ {thousands(base)}/s = {times(rt)}" if rt else "not measured", "≥ 0.30×",
                      at_least(rt, 0.3) if rt else DASH])
    big = rr.get(str(a["stored"])) or {}
    small = rr.get(str(a["stored_small"])) or {}
    s1 = big.get("first") or {}
    fm = s1.get("first_ms")
    g.append([f"restart with {a['stored']:,} stored: exec → first message", f"{fm:.0f} ms" if fm else "not measured",
              "< 1 s", verdict(fm < 1000) if fm else DASH])
    sm = (big.get("status") or {}).get("status_ms")
    g.append([f"restart with {a['stored']:,} stored: exec → status answer", f"{sm:.0f} ms" if sm else "not measured",
              "(no target; < 1 s taken)", verdict(sm < 1000) if sm else DASH])
    b_rss, s_rss = s1.get("rss_anon_kb"), (small.get("first") or {}).get("rss_anon_kb")
    if b_rss and s_rss and a["stored"] != a["stored_small"]:
        delta = b_rss - s_rss
        per = delta * 1024 / (a["stored"] - a["stored_small"])
        g.append([f"memory not proportional to stored messages: RssAnon with {a['stored']:,} − with "
                  f"{a['stored_small']:,}",
                  f"{b_rss / 1024:.2f} − {s_rss / 1024:.2f} MB = {delta / 1024:+.2f} MB ({per:.2f} B per extra stored "
                  f"message; holding them would take ≥ 64 B each)", "≤ +4 MB (SQLite's cache is 2 MiB)",
                  verdict(delta <= 4096)])
    out += ["", "### Goals", "", table(["goal", "measured", "target", "verdict"], g), ""]
    out.append("The store engine itself (SQLite vs redb on the store's access pattern: appends per commit, "
               "recovery reads, deletes) is compared by the standalone project bench/store, not run here: see "
               "bench/store/README.md for its numbers on this machine.")
    return out
