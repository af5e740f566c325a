"""Sends numbered jobs to the `jobs` queue and waits for drover's answer to
each before sending the next: the queue has `confirm = true`.

Set JOBS to the number of jobs (default 10). Exits 0 once every job was
answered `ok`, 1 at the first refusal (`no REASON`).
"""
import os
import socket
import sys

jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
if os.environ.get("DROVER_CONFIRM_JOBS") != "1":
    sys.exit("queue jobs has no `confirm = true`: drover sends no replies")
count = int(os.environ.get("JOBS", "10"))

for n in range(count):
    jobs.send(f"job {n}".encode())
    reply = jobs.recv(64)  # one reply per packet, in order
    if reply != b"ok":
        sys.exit(f"job {n} refused: {reply.decode()}")
print(f"producer: {count} jobs confirmed", flush=True)
