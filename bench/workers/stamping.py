"""What every Python worker of the python suite does when it runs: write its
stamp, "<pid> <CLOCK_MONOTONIC ns>\\n" with one write(2) to $STAMP_PATH (the
bench's FIFO), then wait in pause() until it is killed; or, as a
multiprocessing target, send the same time back over a Pipe.

The target modules (heavy, light, npwork) call these from functions of their
own, so that a spawned or forkserver child that unpickles `heavy.mp_child`
imports heavy itself, as a real application's target would.
"""
import os
import signal
import sys
import time


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
        print(f"worker: cannot write the stamp: {e!r}", file=sys.stderr, flush=True)
    return ns


def serve():
    """A worker's whole life: the stamp, then nothing until it is killed."""
    stamp()
    while True:
        signal.pause()


def send_time(conn):
    """A multiprocessing target's whole life: its start time, back to the parent."""
    conn.send(time.monotonic_ns())
    conn.close()


def serve_time(conn):
    """A multiprocessing worker that lives on (one to restart): its start
    time, back to the parent, then nothing until it is killed."""
    conn.send(time.monotonic_ns())
    while True:
        signal.pause()
