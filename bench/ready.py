"""Restart → ready latency: `ready = "notify"` against `ready = "started"`.

One child, SIGKILLed once it is running; measured from the kill
(CLOCK_MONOTONIC just before kill(2)) to the first `status` answer that
shows its replacement ready (`"ready": true`, a new PID). The status is
read from the control socket in a tight loop, the same way in both modes.

- `started`: the replacement is ready once up `start_secs` (the minimum,
  100 ms): the latency is start_secs plus the restart.
- `notify`: the child (a small C program) sends `READY=1` to its
  `NOTIFY_SOCKET` at once; the latency is the restart plus the datagram.

Usage: python3 bench/ready.py [--restarts N] [--drover PATH]
(default: 30 restarts per mode, target/release/drover).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD_C = r"""
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdlib.h>
#include <unistd.h>

int main(void) {
    const char *addr = getenv("NOTIFY_SOCKET");
    if (addr && *addr) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t n = strlen(addr);
        if (n >= sizeof sa.sun_path) return 1;
        memcpy(sa.sun_path, addr, n);
        if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0';
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
        close(fd);
    }
    for (;;) pause();
}
"""


def status(sock: Path) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b'{"cmd":"status"}\n')
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))["status"]


def child(sock: Path) -> dict:
    return status(sock)["groups"][0]["children"][0]


def wait_ready(sock: Path, old: int | None, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = child(sock)
        except (OSError, KeyError, IndexError, json.JSONDecodeError):
            continue
        if c.get("ready") and c.get("pid") and c["pid"] != old:
            return c["pid"]
    raise SystemExit(f"no ready replacement within {timeout} s")


def measure(drover: Path, prog: Path, mode: str, restarts: int, work: Path) -> list[float]:
    d = work / mode
    d.mkdir()
    (d / "drover.toml").write_text(
        f'[group.svc]\ncommand = ["{prog}"]\nstart_secs = "100ms"\nready = "{mode}"\n'
    )
    sock = d / "drover.sock"
    with open(d / "stderr.log", "wb") as err:
        proc = subprocess.Popen([drover, "run", d / "drover.toml", "--socket", sock],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline:
                raise SystemExit("drover did not start")
            time.sleep(0.01)
        pid = wait_ready(sock, None)
        lat = []
        for _ in range(restarts):
            # Past start_secs and the respawn floor: a plain crash of a
            # running child, restarted at once.
            time.sleep(0.15)
            t0 = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)
            pid = wait_ready(sock, pid)
            lat.append((time.monotonic_ns() - t0) / 1e6)
        return lat
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restarts", type=int, default=30)
    ap.add_argument("--drover", type=Path, default=ROOT / "target" / "release" / "drover")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drover-bench-ready-"))
    try:
        prog = work / "notify_ready"
        (work / "notify_ready.c").write_text(CHILD_C)
        subprocess.run(["cc", "-O2", "-include", "stddef.h", "-o", prog, work / "notify_ready.c"],
                       check=True)
        results = {m: measure(args.drover, prog, m, args.restarts, work)
                   for m in ("started", "notify")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"restart → ready latency, {args.restarts} SIGKILLs of a running child each (ms)")
    print(f"{'ready':<10} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
    for mode, lat in results.items():
        q = statistics.quantiles(lat, n=10)
        print(f"{mode:<10} {statistics.median(lat):8.2f} {q[-1]:8.2f} {min(lat):8.2f} {max(lat):8.2f}")
    ratio = statistics.median(results["started"]) / statistics.median(results["notify"])
    print(f"median started / notify: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
