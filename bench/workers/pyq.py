"""Python baselines for drover's queue benchmark: multiprocessing.Queue and
SimpleQueue between two processes, measured like bench/c/qb.c measures
the bare socketpair and drover.

    python3 pyq.py queue|simple tput|lat N SIZE RATE

The parent produces, a forked child consumes; the parent starts once the
child is ready. Messages are `bytes` of SIZE; the first 16 bytes carry the
CLOCK_MONOTONIC send time (ns) and the sequence number. In `tput` mode only
the first message is stamped (the producer sends one prebuilt `bytes` object
after it, the cheapest thing Python can put), as fast as it can; elapsed =
receipt of the Nth - stamped send of the first. In `lat` mode every message
is stamped and sent at RATE messages/s; latency = receipt - stamped send.
Prints one JSON object (the same fields as qb's results).
"""

import json
import math
import multiprocessing as mp
import struct
import sys
import time

STAMP = struct.Struct("<QQ")


def message(size: int, seq: int) -> bytes:
    return STAMP.pack(time.monotonic_ns(), seq) + b"x" * (size - STAMP.size)


def consumer(q, ready, results, mode: str, n: int, size: int) -> None:
    ready.set()
    get = q.get
    clock = time.monotonic_ns
    if mode == "tput":
        first = get()
        first_recv = clock()
        for _ in range(n - 1):
            last = get()
        last_recv = clock()
        sent, seq = STAMP.unpack_from(first)
        out = {
            "received": n,
            "size": len(last),
            "bad_size": int(len(first) != size) + int(len(last) != size),
            "out_of_order": int(seq != 0),
            "error": None,
            "elapsed_ns": last_recv - sent,
            "from_first_recv_ns": last_recv - first_recv,
            "msgs_per_s": n * 1e9 / (last_recv - sent),
            "steady_msgs_per_s": (n - 1) * 1e9 / (last_recv - first_recv),
        }
    else:
        lat = []
        bad = order = 0
        for i in range(n):
            m = get()
            t = clock()
            sent, seq = STAMP.unpack_from(m)
            lat.append(t - sent)
            bad += len(m) != size
            order += seq != i
        lat.sort()

        def pct(q: float) -> int:
            return lat[min(len(lat), max(1, math.ceil(q * len(lat)))) - 1]  # nearest rank

        out = {
            "received": n, "size": size, "bad_size": bad, "out_of_order": order, "error": None,
            "samples": n, "p50_ns": pct(0.5), "p90_ns": pct(0.9), "p99_ns": pct(0.99),
            "p999_ns": pct(0.999), "min_ns": lat[0], "max_ns": lat[-1],
            "mean_ns": sum(lat) / n,
        }
    results.send(out)


def main() -> int:
    kind, mode, n, size, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    ctx = mp.get_context("fork")
    q = ctx.Queue() if kind == "queue" else ctx.SimpleQueue()
    ready = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=consumer, args=(q, ready, sender, mode, n, size))
    child.start()
    if not ready.wait(30):
        raise SystemExit("pyq: the consumer did not start")
    put = q.put
    if mode == "tput":
        filler = b"x" * size
        put(message(size, 0))
        for _ in range(n - 1):
            put(filler)
    else:
        interval = 1e9 / rate
        nxt = time.monotonic_ns()
        for i in range(n):
            nxt += interval
            delay = nxt - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            put(message(size, i))
    out = receiver.recv()
    child.join(30)
    if kind == "queue":
        q.close()
        q.join_thread()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
