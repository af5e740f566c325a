"""Operators' tools: what metrics and kept log lines cost.

Three measurements, each against a baseline taken in the same run:

- **Idle wake-ups with metrics on**: drover with 100 idle children and
  `[supervisor] metrics` set, nobody scraping; the context switches of
  drover's event-loop thread over `--idle` seconds (from
  /proc/PID/task/PID/status), against the same drover without metrics.
  Target: 0 more. (Its config watcher's threads are not counted: they wake
  for any change in the config directory's parent, here a shared /tmp.)
- **A scrape with 1000 children**: the time of `GET /metrics` (connect to
  the last byte), median of `--scrapes` scrapes, against a `status` over
  the control socket of the same drover (the same snapshot, as JSON).
- **Memory of kept lines**: 100 groups whose child each printed 1000 lines
  of 100 bytes; drover's VmRSS with `log_lines = 1000` against
  `log_lines = 0` (nothing kept).

Usage: python3 bench/ops.py [--drover PATH] [--idle S] [--scrapes N]
(default: target/release/drover, 10 s, 50 scrapes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


class Drover:
    def __init__(self, binary: Path, config: str):
        self.dir = Path(tempfile.mkdtemp(prefix="drover-ops-"))
        (self.dir / "drover.toml").write_text(config)
        self.sock = self.dir / "drover.sock"
        self.err = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "run", str(self.dir / "drover.toml"), "--socket", str(self.sock)],
            stdout=subprocess.DEVNULL, stderr=self.err, start_new_session=True,
        )

    def status(self) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            s.sendall(b'{"cmd":"status"}\n')
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))["status"]

    def running(self, n: int) -> bool:
        try:
            s = self.status()
        except (OSError, ValueError, KeyError):
            return False
        kids = [c for g in s["groups"] for c in g["children"]]
        return len(kids) == n and all(c["state"] == "running" for c in kids)

    def metrics_addr(self) -> str:
        def found():
            m = re.search(r"metrics at http://([0-9.:]+)/metrics",
                          (self.dir / "stderr.log").read_text(errors="replace"))
            return m and m.group(1)
        return wait("the metrics address", found)

    def switches(self, loop_only: bool = True) -> int:
        """Context switches of drover's loop thread (the main one), or of
        all its threads (the config watcher's threads also wake for any
        change in the config directory's parent, e.g. a busy /tmp)."""
        total = 0
        tasks = [str(self.proc.pid)] if loop_only else os.listdir(f"/proc/{self.proc.pid}/task")
        for task in tasks:
            for line in open(f"/proc/{self.proc.pid}/task/{task}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        return total

    def rss_kb(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.err.close()


def sleepers(groups: int, processes: int) -> str:
    return "".join(
        f'[group.g{i}]\ncommand = ["sleep", "100000"]\nprocesses = {processes}\nstart_secs = "100ms"\n\n'
        for i in range(groups)
    )


def idle(binary: Path, seconds: float) -> dict:
    out = {}
    for label, head in [("without metrics", ""), ("with metrics", '[supervisor]\nmetrics = "127.0.0.1:0"\n\n')]:
        d = Drover(binary, head + sleepers(10, 10))
        try:
            wait("100 children running", lambda: d.running(100))
            time.sleep(1.0)  # settle: the last starts' timers
            before = d.switches()
            time.sleep(seconds)  # the measured idle period
            out[label] = d.switches() - before
        finally:
            d.stop()
    return out


def scrape_once(addr: str) -> tuple[float, int]:
    host, port = addr.rsplit(":", 1)
    t = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    return (time.perf_counter() - t) * 1000, len(data)


def scrape(binary: Path, n: int) -> dict:
    d = Drover(binary, '[supervisor]\nmetrics = "127.0.0.1:0"\n\n' + sleepers(100, 10))
    try:
        wait("1000 children running", lambda: d.running(1000), timeout=300)
        addr = d.metrics_addr()
        scrapes, statuses, size = [], [], 0
        for _ in range(n):  # alternating
            ms, size = scrape_once(addr)
            scrapes.append(ms)
            t = time.perf_counter()
            d.status()
            statuses.append((time.perf_counter() - t) * 1000)
        return {"scrape_ms": statistics.median(scrapes), "status_ms": statistics.median(statuses),
                "page_bytes": size}
    finally:
        d.stop()


def kept_lines(binary: Path) -> dict:
    printer = ('[group.g{i}]\ncommand = ["python3", "-c", "import signal\\nfor n in range(1000): '
               "print(f'{n:06d} ' + 'x' * 93, flush=False)\\nimport sys; sys.stdout.flush(); "
               'signal.pause()"]\nstart_secs = "100ms"\n\n')
    out = {}
    for lines in (0, 1000):
        config = f"[supervisor]\nlog_lines = {lines}\n\n" + "".join(
            printer.replace("{i}", str(i)) for i in range(100))
        d = Drover(binary, config)
        try:
            wait("100 printers running", lambda: d.running(100), timeout=300)
            if lines:
                def all_kept():
                    r = subprocess.run([str(binary), "logs", "-n", "1", "--socket", str(d.sock)],
                                       capture_output=True, text=True)
                    return r.stdout.count(" 000999 ") == 100
                wait("every group's last line kept", all_kept, timeout=300)
            else:
                time.sleep(3)  # the printers are done long before; nothing to wait for
            out[lines] = d.rss_kb()
        finally:
            d.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drover", type=Path, default=ROOT / "target/release/drover")
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--scrapes", type=int, default=50)
    a = p.parse_args()
    if not a.drover.exists():
        sys.exit(f"{a.drover}: build it first (cargo build --release)")
    w = idle(a.drover, a.idle)
    print(f"idle {a.idle:g} s, 100 children: context switches without metrics {w['without metrics']}, "
          f"with metrics {w['with metrics']} (target: no more)")
    s = scrape(a.drover, a.scrapes)
    print(f"1000 children: GET /metrics {s['scrape_ms']:.2f} ms median ({s['page_bytes']} bytes), "
          f"status over the socket {s['status_ms']:.2f} ms; ratio {s['scrape_ms'] / s['status_ms']:.2f}x")
    k = kept_lines(a.drover)
    extra = k[1000] - k[0]
    print(f"100 groups x 1000 lines of 100 B kept: VmRSS {k[1000] / 1024:.1f} MB vs {k[0] / 1024:.1f} MB "
          f"with log_lines = 0: +{extra / 1024:.1f} MB ({extra * 1024 / 100_000:.0f} B per kept line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
