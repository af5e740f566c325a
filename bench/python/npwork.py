"""A numpy target: importing it imports numpy (nothing else heavy). Used for
the optional numpy variant of the benchmark; see heavy.py for what main()
and mp_child() do."""
import os
import signal
import sys
import time

import numpy  # noqa: F401  (the point: its import cost)


def stamp():
    ns = time.monotonic_ns()
    try:
        fd = os.open(os.environ["STAMP_PATH"], os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, f"{os.getpid()} {ns}\n".encode())
        finally:
            os.close(fd)
    except (KeyError, OSError) as e:
        print(f"npwork: cannot write the stamp: {e!r}", file=sys.stderr, flush=True)
    return ns


def main():
    stamp()
    while True:
        signal.pause()


def mp_child(conn):
    conn.send(time.monotonic_ns())
    conn.close()
