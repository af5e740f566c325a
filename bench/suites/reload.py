"""reload: from a config file renamed into place to the change applied.

Three measurements, all ending at a CLOCK_MONOTONIC timestamp:

- raw inotify: rename(2) of a file into a watched directory -> a blocked
  reader (bench/c/inotify_watch.c) gets the event;
- drover: rename of the new config (`processes = k+1`) into place -> the new
  child's stamp; drover watches the directory, debounces 10 ms and applies
  the difference. The two are interleaved edit by edit, so both see the
  same machine;
- supervisord: rename of the new config (`numprocs=k+1`) into place ->
  `supervisorctl reread && supervisorctl update` -> the new process's stamp.
"""

from __future__ import annotations

import datetime
import os
import select
import subprocess
import time

from lib import BenchError
from lib.drover import Drover, Supervisord, children, stamp_group, supervisord_config
from lib.harness import Option
from lib.proc import same_process, stat
from lib.procs import wait_for
from lib.stamps import StampFile
from lib.stats import latency_cells, ms, ratio, summary, table, times

TITLE = "Config reload: rename of the new config → the change applied"
NEEDS = ("stamp", "inotify_watch", "supervisord")
OPTIONS = [
    Option("--edits", int, 100, 10, "reload: drover and raw inotify edits"),
    Option("--sv-edits", int, 10, 2, "reload: supervisord edits"),
    Option("--pause-ms", float, 20, 20, "reload: pause after each measured edit"),
    Option("--sv-pause-ms", float, 200, 200, "reload: pause between supervisord edits"),
    Option("--reload-timeout", float, 30, 30, "reload: wait this long at most for one change"),
]

DEBOUNCE_MS = 10  # drover's debounce of config events
GOAL_MS = 25
REFERENCE = {"inotify": "≈ 0.1 ms", "supervisorctl": "≈ 1350 ms"}


def run(ctx) -> dict:
    r: dict = {}
    ctx.step(f"drover and raw inotify, {ctx.opts.edits} edits each, interleaved")
    drover_and_inotify(ctx, r)
    if ctx.supervisord:
        ctx.step(f"supervisord, {ctx.opts.sv_edits} edits")
        supervisord_edits(ctx, r)
    return r


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME − CLOCK_MONOTONIC, read tightly (to map drover's log times)."""
    best = None
    for _ in range(20):
        a = time.monotonic_ns()
        rt = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, rt - (a + b) // 2)
    return best[1]


def log_times(lines: list[str], needle: str) -> list[int]:
    """CLOCK_REALTIME ns of every line of drover's log that contains needle."""
    out = []
    for line in lines:
        if needle not in line:
            continue
        try:
            when = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc)
        except ValueError:
            continue
        out.append(int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000)
    return out


class Watcher:
    """bench/c/inotify_watch.c on one directory: one line per rename into it."""

    def __init__(self, ctx, directory, name: str):
        self.proc = ctx.procs.start([ctx.bins["inotify_watch"], directory, name], stdout=subprocess.PIPE)
        self.poll = select.poll()
        self.poll.register(self.proc.stdout.fileno(), select.POLLIN)
        self.buf = b""

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"inotify_watch said nothing within {timeout:g} s")
            if self.poll.poll(int(left * 1000) + 1):
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise BenchError(f"inotify_watch exited with status {self.proc.wait()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def drover_and_inotify(ctx, r: dict) -> None:
    o = ctx.opts
    stamp = ctx.bins["stamp"]
    d = ctx.dir("drover")
    config, tmp = d / "drover.toml", d / ".drover.toml.tmp"
    config.write_text(stamp_group(stamp, 1, d))
    stamps = StampFile(d / "stamps")
    drover = Drover(ctx.drover, ctx.procs, d, config)
    drover.start()

    b = ctx.dir("inotify")
    watched, btmp = b / "watched.toml", b / ".watched.toml.tmp"
    watched.write_text(stamp_group(stamp, 1, b))
    watcher = Watcher(ctx, b, watched.name)
    if watcher.line(10) != "ready":
        raise BenchError("inotify_watch did not start")

    # drover's first child, then its socket, then status calling it running
    # (a child is `starting` for its first start_secs).
    stamps.wait_new(1, 10, drover.alive)
    drover.wait_socket()
    running = wait_for("drover's first child running", 10, lambda: {
        c["pid"] for c in children(drover.status(), "stamp") if c["state"] == "running"}, 0.01, alive=drover.alive)
    if len(running) != 1:
        raise BenchError(f"drover did not start its one child: {children(drover.status(), 'stamp')}")
    started = {pid: stat(pid).start_time for pid in running}
    offset = realtime_offset_ns()
    time.sleep(0.1)  # let the start settle

    pause = o.pause_ms / 1000
    raw, lat, t0s = [], [], []
    extra_stamps = lost = grew_wrong = restarts = 0
    problems: list[str] = []
    for i in range(o.edits):
        k = 1 + i
        text = stamp_group(stamp, k + 1, d)
        # raw inotify: the same bytes, renamed into the watched directory
        btmp.write_text(text)
        t0 = time.monotonic_ns()
        os.rename(btmp, watched)
        line = watcher.line(5)
        if line == "overflow":
            raise BenchError("inotify queue overflow in the baseline watcher")
        raw.append(int(line) - t0)
        time.sleep(pause)

        # drover: k -> k+1
        tmp.write_text(text)
        t0 = time.monotonic_ns()
        os.rename(tmp, config)
        new = stamps.wait_new(1, o.reload_timeout, drover.alive)
        pid, ns = new[0]
        lat.append(ns - t0)
        t0s.append(t0)
        time.sleep(pause)
        drover.alive()
        new += stamps.new()
        if len(new) != 1:
            extra_stamps += len(new) - 1
            problems.append(f"edit {i + 1}: {len(new)} children started: {new}")
        kids = children(drover.status(), "stamp")
        # The new child is still `starting` (its first start_secs).
        now = {c["pid"] for c in kids if c["state"] in ("running", "starting") and c["pid"]}
        restarts += sum(c["restarts"] for c in kids)
        if not running <= now:
            gone = running - now
            lost += len(gone)
            problems.append(f"edit {i + 1}: existing children {sorted(gone)} no longer running")
        if now != running | {pid} or len(kids) != k + 1:
            grew_wrong += 1
            problems.append(f"edit {i + 1}: expected {k + 1} running children (the old ones + {pid}), "
                            f"status shows {len(now)} running or starting of {len(kids)}")
        for old in running:
            if old in now and not same_process(old, started.get(old)):
                lost += 1
                problems.append(f"edit {i + 1}: pid {old} is not the same process any more")
        st = stat(pid)
        started[pid] = st.start_time if st else None
        running = now
        if (i + 1) % 20 == 0:
            ctx.step(f"{i + 1} edits: drover median so far {ms(summary(lat)['median'])}, "
                     f"raw inotify {ms(summary(raw)['median'])}")
        time.sleep(pause)

    # drover's own record of each reload (CLOCK_REALTIME, µs) mapped to
    # CLOCK_MONOTONIC: t0 → "config reloaded" logged (after the apply).
    log = drover.stderr_lines(1_000_000)
    logged = [t - offset for t in log_times(log, "a config file changed: config reloaded")]
    if len(logged) != len(t0s):
        problems.append(f"drover logged {len(logged)} reloads for {len(t0s)} edits")
    final = wait_for("every child running after the last edit", 5, lambda: (lambda kids: kids if all(
        c["state"] == "running" for c in kids) else None)(children(drover.status(), "stamp")), 0.02, alive=drover.alive)
    stop = drover.stop()
    ctx.procs.kill_session(watcher.proc)
    watcher.proc.stdout.close()
    stamps.close()
    if stop["exit"] != 0:
        problems.append(f"drover shutdown: exit {stop['exit']}")
    for p in problems[:10]:
        ctx.note(p)
    if len(problems) > 10:
        ctx.note(f"... and {len(problems) - 10} more problems")
    for w in [line for line in log if " WARN " in line or " ERROR " in line][:5]:
        ctx.note(f"drover logged: {w.strip()}")
    r["inotify"] = {"raw_ns": raw, **summary(raw)}
    r["drover"] = {
        "raw_ns": lat,
        **summary(lat),
        "to_log": summary([lg - t for lg, t in zip(logged, t0s)] if len(logged) == len(t0s) else []),
        "edits": len(lat),
        "reloads_logged": len(logged),
        "children_final": len(final),
        "running_final": sum(1 for c in final if c["state"] == "running"),
        "stamps_total": len(stamps.all),
        "extra_stamps": extra_stamps,
        "existing_lost": lost,
        "wrong_sets": grew_wrong,
        "restarts_seen": restarts,
        "shutdown_exit": stop["exit"],
    }


def supervisord_edits(ctx, r: dict) -> None:
    o = ctx.opts
    stamp = ctx.bins["stamp"]
    sv = Supervisord(ctx.supervisord, ctx.procs, ctx.dir("supervisord"))
    d = sv.dir
    tmp = d / ".supervisord.conf.tmp"
    sv.config.write_text(supervisord_config(d, stamp, 1))
    stamps = StampFile(d / "stamps")
    sv.start()
    stamps.wait_new(1, 20, sv.alive)
    wait_for("supervisord's first process RUNNING", 20,
             lambda: sv.status().get("stamp:stamp_00", ("", None))[0] == "RUNNING", 0.05, alive=sv.alive)
    time.sleep(0.5)

    new_child, all_running, first_new, cmd_done, reread_done = [], [], [], [], []
    kept_total = old_total = 0
    with open(d / "supervisorctl.log", "w") as ctl_log:
        for i in range(o.sv_edits):
            k = 1 + i
            old = {name: pid for name, (state, pid) in sv.status().items() if state == "RUNNING" and pid}
            if len(old) != k:
                ctx.note(f"supervisord edit {i + 1}: {len(old)} of {k} processes RUNNING before it")
            old_started = {pid: stat(pid).start_time for pid in old.values() if stat(pid)}
            stamps.new()  # skip anything already there
            tmp.write_text(supervisord_config(d, stamp, k + 1))
            t0 = time.monotonic_ns()
            os.rename(tmp, sv.config)
            r1 = sv.ctl("reread")
            t1 = time.monotonic_ns()
            r2 = sv.ctl("update") if r1.returncode == 0 else None
            t2 = time.monotonic_ns()
            ctl_log.write(f"# edit {i + 1}: numprocs {k} -> {k + 1}\n$ supervisorctl reread  (exit {r1.returncode})\n"
                          f"{r1.stdout}{r1.stderr}")
            if r2 is None:
                raise BenchError(f"supervisorctl reread failed: {r1.stdout}{r1.stderr}")
            ctl_log.write(f"$ supervisorctl update  (exit {r2.returncode})\n{r2.stdout}{r2.stderr}")
            if r2.returncode != 0:
                raise BenchError(f"supervisorctl update failed: {r2.stdout}{r2.stderr}")
            # Whatever supervisord starts: at least the new process; wait for
            # all k+1 if it restarts the group (it does; counted below).
            new = stamps.wait_new(1, o.reload_timeout, sv.alive)
            names = [f"stamp:stamp_{j:02d}" for j in range(k + 1)]
            st = wait_for(f"edit {i + 1}: all {k + 1} processes RUNNING", o.reload_timeout,
                          lambda: (lambda st: st if all(st.get(n, ("", None))[0] == "RUNNING" for n in names)
                                   else None)(sv.status()), 0.02, alive=sv.alive)
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
            kept = sum(1 for pid, s in old_started.items() if same_process(pid, s) and pid in now_pids)
            kept_total += kept
            old_total += len(old)
            ctx.step(f"supervisord edit {i + 1}: numprocs {k} -> {k + 1}: new process running after "
                     f"{ms(new_child[-1] / 1e6)} (commands {ms((t2 - t0) / 1e6)}); "
                     f"{len(old) - kept} of {len(old)} running processes restarted")
            time.sleep(o.sv_pause_ms / 1000)
    sv.stop()
    stamps.close()
    r["supervisord"] = {
        "version": subprocess.run([str(ctx.supervisord), "--version"], capture_output=True, text=True).stdout.strip(),
        "raw_ns": new_child,
        **summary(new_child),
        "first_new": summary(first_new),
        "all_running": summary(all_running),
        "commands": summary(cmd_done),
        "reread": summary(reread_done),
        "kept": kept_total,
        "old": old_total,
    }


# ------------------------------------------------------------------ report


def report(r: dict, header: dict) -> list[str]:
    a = r["options"]
    ino, drv, sv = r.get("inotify"), r.get("drover"), r.get("supervisord")
    lines = [
        f"t0 = CLOCK_MONOTONIC just before rename(2) of the new file over the old one; the end is the new child's "
        f"own stamp (same clock). drover and the raw inotify baseline alternate edit by edit ({a['edits']} each, "
        f"{a['pause_ms']:g} ms pauses); supervisord {a['sv_edits']} edits"
        + (f" ({sv['version']})" if sv else " (skipped: not installed)") + ".",
        "",
    ]
    rows = []

    def row(name, s, ref=""):
        rows.append([name, *latency_cells(s), ref])

    row("raw inotify: rename → event read by a blocked reader", ino, REFERENCE["inotify"])
    row("drover: rename → new child running", drv, f"goal ≤ {GOAL_MS} ms")
    if drv["to_log"]["n"]:
        row("drover: rename → `config reloaded` logged (after the apply)", drv["to_log"])
    if sv:
        row("supervisord: rename, `reread && update` → new process running", sv, REFERENCE["supervisorctl"])
        row("supervisord: … → all k+1 processes running again", sv["all_running"])
        row("supervisord: … → `supervisorctl update` returned", sv["commands"])
        row("supervisord: … → `supervisorctl reread` returned", sv["reread"])
    lines += [table(["", "n", "median", "p90", "p99", "max", "reference"], rows), ""]

    rows = [
        ["drover / raw inotify (median)", times(ratio(drv["median"], ino["median"]))],
        [f"drover − {DEBOUNCE_MS} ms debounce − raw inotify (median)", ms(drv["median"] - DEBOUNCE_MS - ino["median"])],
        [f"goal: applied within {GOAL_MS} ms (median / p99 / max)",
         " / ".join("met" if drv[q] <= GOAL_MS else "MISSED" for q in ("median", "p99", "max"))],
    ]
    if sv:
        rows.append(["supervisord / drover (median, new process running)", times(ratio(sv["median"], drv["median"]))])
        rows.append(["supervisord / drover (p99 vs p99)", times(ratio(sv["p99"], drv["p99"]))])
    lines += [table(["ratio", "value"], rows), "", "### What happened to the running children", ""]

    ok = drv["existing_lost"] == 0 and drv["wrong_sets"] == 0 and drv["extra_stamps"] == 0
    rows = [["drover",
             f"{drv['edits']} edits, processes 1 → {drv['edits'] + 1}; {drv['reloads_logged']} reloads logged; "
             f"{drv['stamps_total']} children ever started for {drv['children_final']} at the end "
             f"({drv['running_final']} running); existing children restarted or lost: {drv['existing_lost']}; "
             f"edits where the pid set was not the old set + one: {drv['wrong_sets']}; "
             f"restarts counted by drover: {drv['restarts_seen']} — "
             + ("the pid set only grew" if ok else "NOT only growing, see notes")]]
    if sv:
        rows.append(["supervisord",
                     f"{sv['n']} edits, numprocs 1 → {sv['n'] + 1}: {sv['old'] - sv['kept']} of the {sv['old']} "
                     "processes that were running before an edit were restarted by it (`update` stops and re-adds "
                     "the whole program group when its section changes)"])
    lines.append(table(["", "per edit"], rows))
    return lines
