"""A light target for reference: Python's multiprocessing start cost with a
module that imports nothing heavy (the setting of the issue's reference
figures). See heavy.py for what main() and mp_child() do."""
import os
import signal
import sys
import time


def stamp():
    ns = time.monotonic_ns()
    try:
        fd = os.open(os.environ["STAMP_PATH"], os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, f"{os.getpid()} {ns}\n".encode())
        finally:
            os.close(fd)
    except (KeyError, OSError) as e:
        print(f"light: cannot write the stamp: {e!r}", file=sys.stderr, flush=True)
    return ns


def main():
    stamp()
    while True:
        signal.pause()


def mp_child(conn):
    conn.send(time.monotonic_ns())
    conn.close()
