"""Produces numbered jobs on the `jobs` queue (DROVER_OUT_JOBS).

`send` blocks while the queue is full: that is drover's back-pressure.
Set JOBS to the number of jobs (default: one every RATE seconds, forever).
"""
import os
import socket
import time

jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
count = int(os.environ.get("JOBS", "0"))
rate = float(os.environ.get("RATE", "0.2"))
n = 0
while count == 0 or n < count:
    jobs.send(f"job {n}".encode())
    n += 1
    if rate:
        time.sleep(rate)
print(f"producer: sent {n} jobs", flush=True)
