"""A Python *function* worker: drover imports this module and calls `main`.

Module-level code runs once per template under `start_method = "fork"`, so
expensive imports and tables built here are shared by every worker,
copy-on-write; under `spawn` each worker pays for them again.
"""
import os
import signal
import time

# Stands in for a heavy import (a model, numpy, a big table).
STARTED = time.monotonic()
TABLE = {i: i * i for i in range(200_000)}
LOADED_BY = os.getpid()


def main():
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    index = os.environ["DROVER_INDEX"]
    how = "shares the template's import" if LOADED_BY != os.getpid() else "imported it itself"
    print(f"pyworker[{index}] pid {os.getpid()} {how} (module loaded by {LOADED_BY})", flush=True)
    while not stopping:
        time.sleep(1)
    print(f"pyworker[{index}] got SIGTERM, stopping", flush=True)
