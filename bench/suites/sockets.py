"""sockets: a rolling restart of a socket-inheriting HTTP server under load.

drover binds the port (`sockets`) and passes it to PROCESSES children
(bench/workers/http_fd3.py, http.server on fd 3). CLIENTS threads send
requests without pause, each on a new connection (HTTP/1.0, 10 s timeout).
Each round measures a steady window before the reload, then the reload: the
config's `env` changes (a rolling restart: each new child starts, runs
`start_secs`, then its old one gets SIGTERM, finishes its request and
exits), from the rename of the new config until every child was replaced
and every old one is gone, then a steady window after it. Reported per
window: requests/s, latency and failed requests (the goal: none).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from lib import ROOT, BenchError
from lib.drover import Drover, children
from lib.harness import Option
from lib.procs import wait_for
from lib.stats import ms, percentile, table, verdict

TITLE = "Listening sockets: requests/s and failures across a rolling restart"
NEEDS = ()
OPTIONS = [
    Option("--socket-rounds", int, 5, 1, "sockets: reloads measured"),
    Option("--socket-clients", int, 4, 2, "sockets: client threads sending requests"),
    Option("--socket-window", float, 3.0, 1.0, "sockets: seconds of the steady windows before and after"),
]

PROCESSES = 2
WORKER = ROOT / "bench" / "workers" / "http_fd3.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(python: str, port: int, version: int) -> str:
    return (
        "[group.web]\n"
        f"command = {json.dumps([python, str(WORKER)])}\n"
        f"processes = {PROCESSES}\n"
        f'env = {{ VERSION = "{version}" }}\n'
        f'sockets = [{{ name = "http", listen = "tcp://127.0.0.1:{port}" }}]\n'
    )


def get(port: int) -> None:
    """One request on a new connection; raises on anything but a 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    if not data.startswith(b"HTTP/1.0 200"):
        raise OSError(f"answer {data[:40]!r}")


class Load:
    """Client threads; each request's (end time, latency, error) is kept."""

    def __init__(self, port: int, clients: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, float, str | None]] = []
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                get(self.port)
                error = None
            except OSError as e:
                error = str(e) or type(e).__name__
            end = time.monotonic()
            with self.lock:
                self.results.append((end, end - t, error))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def window(self, start: float, end: float) -> dict:
        with self.lock:
            inside = [r for r in self.results if start <= r[0] < end]
        latencies = sorted(r[1] * 1000 for r in inside if r[2] is None)
        errors = [r[2] for r in inside if r[2] is not None]
        return {
            "seconds": end - start, "requests": len(inside), "failed": len(errors), "errors": errors[:5],
            "rps": len(inside) / (end - start) if end > start else None,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else None,
        }


def pids(d: Drover) -> set[int]:
    return {c["pid"] for c in children(d.status_socket(), "web") if c["state"] == "running" and c["pid"]}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run(ctx) -> dict:
    d_dir = ctx.dir("rolling")
    port = free_port()
    path = d_dir / "drover.toml"
    path.write_text(config(ctx.python, port, 0))
    d = Drover(ctx.drover, ctx.procs, d_dir, path)
    d.start()
    d.wait_socket()
    wait_for("2 children running", 30, lambda: len(pids(d)) == PROCESSES, alive=d.alive)
    rounds = []
    window = ctx.opts.socket_window
    with Load(port, ctx.opts.socket_clients) as load:
        for n in range(1, ctx.opts.socket_rounds + 1):
            ctx.step(f"round {n}: {window:g} s steady, the reload, {window:g} s steady")
            old = pids(d)
            t0 = time.monotonic()
            time.sleep(window)  # the steady window before: load runs meanwhile
            t1 = time.monotonic()
            tmp = d_dir / ".drover.toml.new"
            tmp.write_text(config(ctx.python, port, n))
            os.rename(tmp, path)
            wait_for("every child replaced", 60,
                     lambda: (lambda now: len(now) == PROCESSES and not now & old)(pids(d)), interval=0.01,
                     alive=d.alive)
            wait_for("the old children gone", 60, lambda: not any(alive(p) for p in old), interval=0.01)
            t2 = time.monotonic()
            time.sleep(window)  # the steady window after
            t3 = time.monotonic()
            rounds.append({"before": load.window(t0, t1), "reload": load.window(t1, t2),
                           "after": load.window(t2, t3)})
    stop = d.stop()
    if stop["leftovers"]:
        ctx.note(f"processes left after drover's shutdown: {stop['leftovers']}")
    if not rounds:
        raise BenchError("no round measured")
    return {"rounds": rounds, "processes": PROCESSES}


def total(rounds: list[dict], phase: str) -> dict:
    rs = [r[phase] for r in rounds]
    seconds = sum(r["seconds"] for r in rs)
    requests = sum(r["requests"] for r in rs)
    return {"seconds": seconds, "requests": requests, "failed": sum(r["failed"] for r in rs),
            "rps": requests / seconds if seconds else None,
            "p99_ms": max((r["p99_ms"] for r in rs if r["p99_ms"] is not None), default=None),
            "max_ms": max((r["max_ms"] for r in rs if r["max_ms"] is not None), default=None)}


def report(r: dict, header: dict) -> list[str]:
    o = r["options"]
    rows = []
    for i, rnd in enumerate(r["rounds"], 1):
        for phase in ("before", "reload", "after"):
            w = rnd[phase]
            rows.append([str(i), phase, f"{w['seconds']:.2f}", str(w["requests"]), f"{w['rps']:.0f}",
                         ms(w["p50_ms"]), ms(w["p99_ms"]), ms(w["max_ms"]), str(w["failed"])])
    before, during = total(r["rounds"], "before"), total(r["rounds"], "reload")
    failed = sum(total(r["rounds"], p)["failed"] for p in ("before", "reload", "after"))
    errors = [e for rnd in r["rounds"] for p in ("before", "reload", "after") for e in rnd[p]["errors"]]
    share = during["rps"] / before["rps"] if before["rps"] and during["rps"] else None
    return [
        f"{r['processes']} children of bench/workers/http_fd3.py on one drover-bound TCP socket, "
        f"{o['socket_clients']} client threads, a new connection per request; {len(r['rounds'])} reloads that "
        "change the group's `env` (a rolling restart; `start_secs` 1 s). The reload window runs from the rename "
        "of the new config until every old child is gone. Milliseconds.",
        "",
        table(["round", "window", "seconds", "requests", "req/s", "p50", "p99", "max", "failed"], rows),
        "",
        f"- requests/s during the reloads: {during['rps']:.0f}, before: {before['rps']:.0f} "
        f"({share:.0%} of it)" if share else "- requests/s: not measured",
        f"- failed requests, all windows: {failed} — none failed: **{verdict(failed == 0)}**"
        + (f" (first errors: {errors[:3]})" if errors else ""),
    ]
