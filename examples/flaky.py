"""A worker that crashes now and then, to show drover's immediate restart.

It runs for 2-6 seconds, then exits with status 1 (or is killed by its own
SIGABRT one time in four). drover restarts it within a millisecond; see
`drover status` for its restart count and last exit.
"""
import os
import random
import signal
import time

lifetime = random.uniform(2, 6)
print(f"flaky: up (pid {os.getpid()}), will crash in {lifetime:.1f}s", flush=True)
time.sleep(lifetime)
if random.random() < 0.25:
    print("flaky: aborting", flush=True)
    os.kill(os.getpid(), signal.SIGABRT)
print("flaky: exiting with status 1", flush=True)
raise SystemExit(1)
