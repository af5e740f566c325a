"""A Python worker: does a unit of "work" every half second.

Run as a command (`command = ["python3", "examples/worker.py"]`) or as a
function worker (`python = "examples.worker:main"`); either way it reads its
identity from the environment drover sets.
"""
import os
import signal
import sys
import time


def main():
    group = os.environ.get("DROVER_GROUP", "?")
    index = os.environ.get("DROVER_INDEX", "?")
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    done = 0
    print(f"worker {group}[{index}] up, pid {os.getpid()}", flush=True)
    while not stopping:
        time.sleep(0.5)
        done += 1
        if done % 10 == 0:
            print(f"worker {group}[{index}] finished {done} job{'' if done == 1 else 's'}", flush=True)
    print(f"worker {group}[{index}] stopping after {done} job{'' if done == 1 else 's'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
