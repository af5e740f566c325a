"""Python's multiprocessing, timed like drover's context_bench example: for one
start method, the time from Process.start() to the parent receiving the
child's first message (q.get()).

    python3 bench/workers/context_mp.py spawn|fork|forkserver|forkserver-preload [RUNS]

Prints one JSON line: median and p99 of RUNS timed starts in microseconds,
plus the first (cold) start, which for forkserver includes the server's.
"forkserver-preload" preloads __main__ (this module, the target's) in the
server, as `set_forkserver_preload` does for a real application.
"""
import json
import math
import multiprocessing
import statistics
import sys
import time


def ping(q):
    q.put(1)


def main():
    variant = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    method = "forkserver" if variant.startswith("forkserver") else variant
    ctx = multiprocessing.get_context(method)
    if variant == "forkserver-preload":
        ctx.set_forkserver_preload(["__main__"])
    q = ctx.Queue()
    samples = []
    for _ in range(runs + 1):
        p = ctx.Process(target=ping, args=(q,))
        t0 = time.perf_counter()
        p.start()
        q.get(timeout=30)
        samples.append((time.perf_counter() - t0) * 1e6)
        p.join(30)
    first = samples.pop(0)
    samples.sort()
    n = len(samples)
    print(json.dumps({
        "impl": "python",
        "method": variant,
        "runs": n,
        "median_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[max(math.ceil(n * 0.99), 1) - 1], 1),
        "first_us": round(first, 1),
    }))


if __name__ == "__main__":
    main()
