"""The heavy module of drover's Python-function-worker benchmark.

Importing it takes ~300 ms (a sleep) and then holds ~200 MiB of resident
memory (a bytearray with one byte written per 4 KiB page), like a module that
loads a large model or library at import time. HEAVY_SLEEP_MS and HEAVY_MIB in
the environment change the two sizes.

`main()` is the worker (`python = "heavy:main"`): first thing, it reads
CLOCK_MONOTONIC (time.monotonic_ns(), the clock the C and Rust side read) and
writes "<pid> <ns>\\n" with one write(2) to $STAMP_PATH (the bench's FIFO),
then blocks in signal.pause() until it is killed.

`mp_child(conn)` is the same for multiprocessing: it sends its timestamp back
over a Pipe. Both are defined here (not imported from a helper) so that a
spawned or forkserver child that unpickles `heavy.mp_child` imports *this*
module, as a real application's target would.
"""
import os
import signal
import sys
import time

IMPORT_SLEEP_MS = int(os.environ.get("HEAVY_SLEEP_MS", "300"))
BALLAST_MIB = int(os.environ.get("HEAVY_MIB", "200"))

time.sleep(IMPORT_SLEEP_MS / 1000)
BALLAST = bytearray(BALLAST_MIB * 2**20)
BALLAST[::4096] = b"\1" * len(range(0, len(BALLAST), 4096))  # one byte per page: resident


def stamp():
    """Writes "<pid> <CLOCK_MONOTONIC ns>" to $STAMP_PATH in one write(2)."""
    ns = time.monotonic_ns()
    try:
        fd = os.open(os.environ["STAMP_PATH"], os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, f"{os.getpid()} {ns}\n".encode())
        finally:
            os.close(fd)
    except (KeyError, OSError) as e:  # no reader: the bench is gone
        print(f"heavy: cannot write the stamp: {e!r}", file=sys.stderr, flush=True)
    return ns


def main():
    stamp()
    while True:
        signal.pause()


def mp_child(conn):
    conn.send(time.monotonic_ns())
    conn.close()
