"""The Python-side anchors of the python suite: Python's own multiprocessing and a
bare os.fork(), run by bench/suites/python.py as separate processes (one per measurement,
each in its own session so that the bench can kill whatever is left).

    python mp_anchors.py mp METHOD MODULE RUNS [preload]
        multiprocessing.get_context(METHOD) (spawn | fork | forkserver):
        Process(target=MODULE.mp_child, args=(w,)).start() -> the child's
        first line (its timestamp) -> the parent's conn.recv() returning.
        With "preload" (forkserver only): set_forkserver_preload([MODULE]).
        Without it, forkserver keeps its default preload ["__main__"], which
        is this file: it imports MODULE only inside main(), so the server does
        not have it.
    python mp_anchors.py mprestart METHOD MODULE RUNS GAP_MS [preload]
        multiprocessing's own restart of a crashed worker, as a supervisor
        written with it would do it: GAP_MS after the running Process (target
        MODULE.mp_serve, which sends its start time and then waits to be
        killed) sent its start time, t0 -> Process.kill() -> join() -> a new
        Process(...).start() -> the new child's time (to_child) -> the
        parent's conn.recv() returning (to_result).
    python mp_anchors.py fork MODULE RUNS
        bare os.fork() from a process that imported MODULE ("-" for none):
        t0 -> the child's timestamp (its first statement after fork returns).
    python mp_anchors.py refork MODULE RUNS [GAP_MS]
        the floor of a restart by a fork template: SIGKILL the running child,
        waitpid, os.fork() -> the new child's timestamp. Each kill comes
        GAP_MS (default 5) after the last child's start, as the bench spaces
        its kills of drover's workers: a child killed after sitting idle
        exits slower than one killed at once.
    python mp_anchors.py dfork MODULE RUNS
        a double fork as drover's template does it (fork, the middle process
        forks the worker and exits; the parent, a child subreaper, waits for
        the middle): t0 -> the grandchild's timestamp.

Prints one JSON object: {"samples": [[to_child_ns, to_result_ns], ...],
"first": [...]} (the first, cold run kept apart; to_result is null where
there is no result message). Every timestamp is time.monotonic_ns(), i.e.
CLOCK_MONOTONIC, read in the parent before start()/fork()/kill() and in the
child first thing.
"""
import ctypes
import importlib
import json
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
TIMEOUT_S = 60


def load(module):
    return None if module == "-" else importlib.import_module(module)


def mp(method, module, runs, preload):
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    if preload:
        ctx.set_forkserver_preload([module])
    target = load(module).mp_child
    r, w = ctx.Pipe(duplex=False)
    out = []
    for _ in range(runs + 1):
        p = ctx.Process(target=target, args=(w,))
        t0 = time.monotonic_ns()
        p.start()
        if not r.poll(TIMEOUT_S):
            p.kill()
            raise SystemExit(f"mp {method}: no result after {TIMEOUT_S} s")
        child_ns = r.recv()
        got = time.monotonic_ns()
        out.append([child_ns - t0, got - t0])
        p.join(TIMEOUT_S)
    return out


def mp_restart(method, module, runs, gap_ms, preload):
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    if preload:
        ctx.set_forkserver_preload([module])
    target = load(module).mp_serve
    r, w = ctx.Pipe(duplex=False)

    def start():
        p = ctx.Process(target=target, args=(w,))
        p.start()
        return p

    def started(what):
        if not r.poll(TIMEOUT_S):
            raise SystemExit(f"mprestart: no start time from {what} after {TIMEOUT_S} s")
        return r.recv()

    cur = start()
    started("the first child")
    out = []
    try:
        for _ in range(runs + 1):
            time.sleep(gap_ms / 1000)
            t0 = time.monotonic_ns()
            cur.kill()
            cur.join(TIMEOUT_S)
            cur = start()
            child_ns = started("a restarted child")
            out.append([child_ns - t0, time.monotonic_ns() - t0])
    finally:
        cur.kill()
        cur.join(TIMEOUT_S)
    return out


def child_stamp(w):
    """In a forked child: the timestamp first, then tell the parent."""
    ns = time.monotonic_ns()
    os.write(w, f"{ns}\n".encode())


def read_line(r):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(r, 64)
        if not chunk:
            raise SystemExit("a child died before writing its timestamp")
        buf += chunk
    return int(buf)


def fork(module, runs):
    load(module)
    r, w = os.pipe()
    out = []
    for _ in range(runs + 1):
        t0 = time.monotonic_ns()
        pid = os.fork()
        if pid == 0:
            child_stamp(w)
            os._exit(0)
        ns = read_line(r)
        os.waitpid(pid, 0)
        out.append([ns - t0, None])
    return out


def refork(module, runs, gap_ms=5):
    load(module)
    r, w = os.pipe()

    def start():
        pid = os.fork()
        if pid == 0:
            child_stamp(w)
            while True:
                signal.pause()
        return pid

    cur = start()
    read_line(r)
    out = []
    try:
        for _ in range(runs + 1):
            time.sleep(gap_ms / 1000)
            t0 = time.monotonic_ns()
            os.kill(cur, signal.SIGKILL)
            os.waitpid(cur, 0)
            cur = start()
            out.append([read_line(r) - t0, None])
    finally:
        os.kill(cur, signal.SIGKILL)
        os.waitpid(cur, 0)
    return out


def dfork(module, runs):
    load(module)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    r, w = os.pipe()
    out = []
    for _ in range(runs + 1):
        t0 = time.monotonic_ns()
        middle = os.fork()
        if middle == 0:
            try:
                if os.fork() == 0:
                    child_stamp(w)
            finally:
                os._exit(0)
        os.waitpid(middle, 0)
        ns = read_line(r)
        os.waitpid(-1, 0)  # the grandchild, ours as the subreaper
        out.append([ns - t0, None])
    return out


def main(argv):
    kind = argv[0]
    if kind == "mp":
        method, module, runs = argv[1], argv[2], int(argv[3])
        samples = mp(method, module, runs, preload=argv[4:] == ["preload"])
    elif kind == "mprestart":
        method, module, runs, gap_ms = argv[1], argv[2], int(argv[3]), int(argv[4])
        samples = mp_restart(method, module, runs, gap_ms, preload=argv[5:] == ["preload"])
    else:
        module, runs = argv[1], int(argv[2])
        extra = [int(a) for a in argv[3:]]  # refork's GAP_MS
        samples = {"fork": fork, "refork": refork, "dfork": dfork}[kind](module, runs, *extra)
    print(json.dumps({"first": samples[0], "samples": samples[1:]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
