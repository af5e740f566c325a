#!/usr/bin/env python3
"""Finds the functions a running drover executes, and writes src/hot.ld.

Why: the kernel maps a program's code into a process in 64 KiB blocks
around every page it touches, and the linker scatters the few hundred
functions a supervisor runs once started (the loop, exits, restarts,
`status`, output) among thousands it runs only at start or never. Gathered
at the front of the code, they fill a few blocks instead of touching
nearly all of them (see src/hot.ld for the numbers).

How: a uprobe on the entry of every function of a copy of the release
binary (the kernel counts each probe's hits in uprobe_profile), then a
workload run against that copy, in phases: the start (not recorded: what
it ran is released after it, see src/sys/code.rs), then each tier's
workload; a function belongs to the first tier whose phase ran it.

    sudo python3 bench/hot_code.py [--binary target/release/drover] [--out src/hot.ld]

Needs root (uprobes, through tracefs) and a release build. Run it after a
change that moves work between functions; a function it does not name is
only laid out where the linker puts it (a few more resident blocks), never
wrong.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = "drover_hot"


def tracefs() -> Path:
    for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (p / "uprobe_events").exists():
            return p
    sys.exit("hot_code: no tracefs with uprobe_events (mount it, and run as root)")


def load_segments(binary: Path) -> list[tuple[int, int, int]]:
    """PT_LOAD (vaddr, memsz, offset) of the binary."""
    out = subprocess.run(["readelf", "-lW", str(binary)], capture_output=True, text=True, check=True).stdout
    segs = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            segs.append((int(f[2], 16), int(f[5], 16), int(f[1], 16)))
    return segs


def function_table(binary: Path) -> dict[int, tuple[tuple[int, int], list[str]]]:
    """File offset of each defined function's entry -> ((address, size),
    its mangled names)."""
    segs = load_segments(binary)
    out = subprocess.run(["nm", "-S", "--defined-only", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) != 4 or f[2] not in "tTwW" or int(f[1], 16) == 0:
            continue
        addr = int(f[0], 16)
        for vaddr, size, off in segs:
            if vaddr <= addr < vaddr + size:
                found.setdefault(addr - vaddr + off, ((addr, int(f[1], 16)), []))[1].append(f[3])
                break
    return found


def running_functions(pid: int, binary: Path, table) -> set[int]:
    """The functions (file offsets) on the stacks of `pid`'s threads: one
    that loops for as long as drover runs (the event loop, a thread's body)
    was entered before any phase began, so no probe counts it. The main
    thread's frames count from its innermost to the event loop's (or to
    the function it was inlined into); the ones below it (the command
    line's) wait for it to return."""
    base = None
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == str(binary) and int(f[2], 16) == 0:
            base = int(f[0].split("-")[0], 16)
            break
    if base is None:
        raise RuntimeError(f"{binary} is not mapped in {pid}")
    out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt"],
                         capture_output=True, text=True, timeout=120).stdout
    starts = sorted((addr, size, off) for off, ((addr, size), _) in table.items())
    keys = [a for a, _, _ in starts]
    import bisect
    found: set[int] = set()
    main = main_loop = main_done = False
    for line in out.splitlines():
        if line.startswith("Thread "):
            main = " (LWP " + str(pid) + ")" in line
            main_loop = main_done = False
            continue
        m = re.match(r"#\d+\s+0x([0-9a-f]+) in ", line)
        if main and main_done:
            continue
        if main and "main_loop" in line:
            main_loop = True
        if not m:
            continue
        # The event loop's own frame, or the one it was inlined into.
        main_done = main and main_loop
        pc = int(m.group(1), 16) - base - 1  # a return address: inside the call
        i = bisect.bisect_right(keys, pc) - 1
        if i >= 0 and pc < starts[i][0] + max(starts[i][1], 1):
            found.add(starts[i][2])
    return found


# uprobes refuse an instruction with a LOCK or segment-override prefix (an
# inlined `Arc::clone` or a thread-local access, often a function's first
# instruction): such a function is probed at its first other instruction,
# which runs right after (none of those prefixed instructions branches).
UNPROBEABLE = re.compile(r"^(lock|xacquire|xrelease|cs|ds|es|ss|fs|gs)\b|%[cdefgs]s:")


def probe_points(binary: Path, offsets: list[int], table) -> dict[int, int]:
    """Function entry (file offset) -> the file offset to probe it at."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    insns: dict[int, str] = {}
    order: list[int] = []
    for line in out.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+(.*)$", line)
        if m:
            addr = int(m.group(1), 16)
            insns[addr] = m.group(2).strip()
            order.append(addr)
    position = {a: i for i, a in enumerate(order)}
    points = {}
    for off in offsets:
        (addr, size), _ = table[off]
        at = addr
        i = position.get(addr)
        steps = 0
        while i is not None and UNPROBEABLE.search(insns[order[i]]) and steps < 4 and i + 1 < len(order) \
                and order[i + 1] < addr + max(size, 1):
            i += 1
            steps += 1
            at = order[i]
        points[off] = off + (at - addr)
    return points


class Probes:
    """One uprobe per function entry of `binary`, counted by the kernel."""

    def __init__(self, binary: Path, offsets: list[int], points: dict[int, int]):
        self.t = tracefs()
        self.binary = binary
        self.events = self.t / "uprobe_events"
        self.clear()
        fd = os.open(self.events, os.O_WRONLY | os.O_APPEND)
        try:
            for i, off in enumerate(offsets):
                try:  # one write per probe: the kernel parses one buffer at a time
                    os.write(fd, f"p:{GROUP}/f{i} {binary}:{points[off]:#x}\n".encode())
                except OSError:
                    pass  # an entry the kernel cannot probe: never counted
        finally:
            os.close(fd)
        (self.t / "events" / GROUP / "enable").write_text("1\n")
        (self.t / "tracing_on").write_text("0\n")  # count only; no trace buffer

    def hits(self) -> dict[int, int]:
        counts = {}
        for line in (self.t / "uprobe_profile").read_text().splitlines():
            f = line.split()
            if len(f) >= 3 and f[1].startswith("f") and f[0] == str(self.binary):
                counts[int(f[1][1:])] = int(f[2])
        return counts

    def wait_for(self, probe: int, d: "Drover", since: int, deadline: float = 120.0) -> dict[int, int]:
        """The counts once `probe` has run more than `since` times: drover releases the code its start
        ran when the start is done (src/sys/code.rs), and what runs from there
        on is what stays resident."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            hits = self.hits()
            if hits.get(probe, 0) > since:
                return hits
            if d.proc.poll() is not None:
                raise RuntimeError(f"drover exited with {d.proc.returncode}")
            time.sleep(0.005)
        raise RuntimeError("drover: no code release after its start")

    def clear(self) -> None:
        enable = self.t / "events" / GROUP / "enable"
        if enable.exists():
            enable.write_text("0\n")
            with open(self.events, "w") as f:
                f.write("")
        (self.t / "tracing_on").write_text("1\n")


class Drover:
    def __init__(self, probed: Path, client: Path, config: Path, sock: Path, log: Path):
        self.client, self.sock, self.config = client, sock, config
        self.proc = subprocess.Popen([str(probed), "run", str(config)], stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def cli(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([str(self.client), *args, "--socket", str(self.sock)], capture_output=True, text=True,
                           timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"drover {' '.join(args)}: {r.stderr}")
        return r.stdout

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json"))

    def wait(self, what, deadline: float = 120.0):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                if what(self.status()):
                    return
            except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)
        raise RuntimeError("drover: condition not reached")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def children(st: dict, group: str) -> list[dict]:
    return next(g["children"] for g in st["groups"] if g["name"] == group)


def all_running(st: dict) -> bool:
    return all(c["state"] == "running" for g in st["groups"] for c in g["children"])


CORE = """\
[supervisor]
control_socket = "{sock}"

[group.sleepers]
command = ["sleep", "100000"]
processes = 20

[group.talker]
command = ["sh", "-c", "i=0; while [ $i -lt 50 ]; do echo line $i; echo err $i >&2; i=$((i+1)); done; sleep 100000"]
"""


def core_workload(d: Drover) -> None:
    """What every running drover does: exits and restarts, output, status."""
    d.wait(all_running)
    for _ in range(10):
        d.cli("status")
        d.status()
    # Files saved next to the config that are not configs: the watcher
    # looks at each event and lets it go.
    for n in range(5):
        (d.config.parent / f"notes{n}.txt").write_text("not a config\n")
        with open(d.config.parent / "drover.log.old", "a") as f:
            f.write("a log kept next to the config\n")
    d.cli("restart", "sleepers")  # every child of a group at once
    d.cli("stop", "sleepers")
    d.cli("start", "sleepers")
    d.cli("signal", "sleepers", "HUP")
    talker = children(d.status(), "talker")[0]
    os.kill(talker["pid"], signal.SIGKILL)  # its replacement's 100 lines go through the log writer
    d.wait(lambda st: (c := children(st, "talker")[0])["pid"] != talker["pid"] and c["state"] == "running")
    for n in range(20):
        victim = children(d.status(), "sleepers")[n % 20]
        os.kill(victim["pid"], signal.SIGKILL if n % 2 else signal.SIGTERM)
        d.wait(lambda st: (c := children(st, "sleepers")[n % 20])["pid"] != victim["pid"]
               and c["state"] == "running")


SERVICES = """\
[supervisor]
control_socket = "{sock}"
metrics = "127.0.0.1:0"

[queue.jobs]
prefetch = 8

[queue.results]
delivery = "at-most-once"

[group.producer]
command = ["python3", "{root}/examples/producer.py"]
outputs = ["jobs"]
env = {{ RATE = "0.002" }}

[group.workers]
command = ["python3", "{root}/examples/queue_worker.py"]
processes = 2
inputs = ["jobs"]
outputs = ["results"]

[group.sink]
command = ["python3", "{root}/examples/sink.py"]
inputs = ["results"]
env = {{ PERIOD = "0.5" }}

[group.checked]
command = ["sleep", "100000"]
ready = {{ command = ["true"] }}
health = {{ command = ["true"], interval = "100ms" }}
"""


def services_workload(d: Drover, log: Path) -> None:
    """What a drover with queues, metrics and probes does besides: relaying
    messages, scrapes, health checks, `drover logs`."""
    import urllib.request
    end = time.monotonic() + 60
    while not (m := re.search(r"metrics at (http://\S+)", log.read_text())):
        if time.monotonic() > end:
            raise RuntimeError("drover: no metrics address logged")
        time.sleep(0.05)
    url = m.group(1)
    for _ in range(10):
        urllib.request.urlopen(url, timeout=30).read()
        d.cli("logs", "workers")
        time.sleep(0.3)  # messages flow, probes run meanwhile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/drover")
    ap.add_argument("--out", type=Path, default=ROOT / "src/hot.ld")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drover-hot-"))
    probed, client = work / "drover-probed", work / "drover-client"
    shutil.copy(a.binary, probed)
    shutil.copy(a.binary, client)
    table = function_table(probed)
    funcs = {off: names for off, (_, names) in table.items()}
    offsets = sorted(funcs)
    index = {off: i for i, off in enumerate(offsets)}
    release = next((index[off] for off, names in funcs.items() if any(RELEASE in n for n in names)), None)
    if release is None:
        sys.exit(f"hot_code: {a.binary} has no function named like {RELEASE}")
    t0 = time.monotonic()
    probes = Probes(probed, offsets, probe_points(probed, offsets, table))
    print(f"hot_code: {len(offsets)} uprobes placed ({time.monotonic() - t0:.0f} s)")
    tiers: list[tuple[str, set[int]]] = []
    runs = [("the loop, exits, restarts, output and status", CORE, core_workload),
            ("queues, metrics, probes and `drover logs`", SERVICES, services_workload)]
    try:
        for n, (title, text, workload) in enumerate(runs):
            t0 = time.monotonic()
            sock = work / f"drover{n}.sock"
            config = work / f"drover{n}.toml"
            log = work / f"drover{n}.log"
            config.write_text(text.format(sock=sock, root=ROOT))
            (work / "drover.log.old").write_text("")
            released = probes.hits().get(release, 0)
            d = Drover(probed, client, config, sock, log)
            try:
                before = probes.wait_for(release, d, released)
                if n == 0:
                    workload(d)
                else:
                    workload(d, log)
                after = probes.hits()
                looping = {index[off] for off in running_functions(d.proc.pid, probed, table)}
            finally:
                d.stop()
            ran = {i for i, c in after.items() if c > before.get(i, 0)} | looping
            for _, earlier in tiers:
                ran -= earlier
            tiers.append((title, ran))
            print(f"hot_code: {title}: {len(ran)} functions ({time.monotonic() - t0:.0f} s)")
    finally:
        probes.clear()
        shutil.rmtree(work, ignore_errors=True)
    write(a.out, a.binary, funcs, offsets, tiers)


# The function that ends drover's start (src/sys/code.rs), and the ones that
# run while and after it releases the start's code: they are laid out with
# the loop's, whatever the workload.
RELEASE = "_ZN6drover3sys4code18release_code_pages17h"
ALWAYS = [".text*._ZN6drover3sys4code*", ".text*._ZN6drover7runtime18release_code_pages17h*"]

HASH = re.compile(r"17h[0-9a-f]{16}E$")
CRATE = re.compile(r"Cs[0-9A-Za-z]+_")


def pattern(name: str) -> str:
    """The input section names of a function: `.text.<mangled>` (or
    `.text.unlikely.<mangled>`), with the hashes left open (the legacy
    mangling's trailing one, the v0 mangling's crate disambiguators), as
    they change with the compiler and the dependency graph."""
    return ".text*." + CRATE.sub("Cs*_", HASH.sub("17h*", name))


def write(out: Path, binary: Path, funcs: dict[int, list[str]], offsets: list[int],
          tiers: list[tuple[str, set[int]]]) -> None:
    sizes = {}
    for line in subprocess.run(["nm", "-S", "--defined-only", str(binary)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        f = line.split()
        if len(f) == 4:
            sizes[f[3]] = int(f[1], 16)
    # A pattern that several functions of the build match (the instances
    # of a generic function, whose names differ only in the hash) keeps
    # the hash: the instances not run stay out.
    matches: dict[str, int] = {}
    for names in funcs.values():
        for n in names:
            matches[pattern(n)] = matches.get(pattern(n), 0) + 1

    def exact(name: str) -> str:
        p = pattern(name)
        return p if matches[p] == 1 else ".text*." + name

    lines = [HEADER.rstrip("\n"), "SECTIONS", "{", "  .text.hot : ALIGN(65536)", "  {"]
    lines.append("    /* what runs while drover releases its start's code */")
    lines.extend(f"    *({n})" for n in ALWAYS)
    seen: set[str] = set()
    for title, ids in tiers:
        names = sorted({exact(n) for i in ids for n in funcs[offsets[i]]} - seen)
        seen.update(names)
        total = sum(sizes.get(funcs[offsets[i]][0], 0) for i in ids)
        lines.append(f"    /* {title}: {len(ids)} functions, {total / 1024:.0f} kB in the build measured */")
        lines.extend(f"    *({n})" for n in names)
    lines += ["    . = ALIGN(65536);", "  }", "}", "INSERT BEFORE .text;", ""]
    out.write_text("\n".join(lines))
    print(f"hot_code: wrote {out} ({len(seen)} patterns)")


HEADER = """\
/*
 * drover's code that a running supervisor executes, gathered at the front
 * of the text. Generated by bench/hot_code.py (uprobes on a release build
 * running a workload): do not edit by hand, run it again.
 *
 * Why: the kernel maps code into a process in 64 KiB blocks around each
 * page touched, and the linker scatters these functions among thousands
 * that run only at start (released after it: src/sys/code.rs) or never.
 * Only where functions go changes, not what they do; a pattern that
 * matches nothing leaves that code where it was.
 */
"""

if __name__ == "__main__":
    main()
