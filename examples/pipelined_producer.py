"""Sends numbered jobs to the `jobs` queue WINDOW at a time, then reads the
WINDOW replies: the queue has `confirm = true`, and replies come in the
order the jobs were sent.

Set JOBS to the number of jobs (default 1000) and WINDOW (default 100; keep
it well under 256: unread replies wait in the socket, and when it is full
drover stops reading this producer until it reads them). Exits 0 once
every job was answered `ok`, 1 at the first refusal (`no REASON`).
"""
import os
import socket
import sys

jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
if os.environ.get("DROVER_CONFIRM_JOBS") != "1":
    sys.exit("queue jobs has no `confirm = true`: drover sends no replies")
count = int(os.environ.get("JOBS", "1000"))
window = int(os.environ.get("WINDOW", "100"))

sent = 0
while sent < count:
    batch = range(sent, min(sent + window, count))
    for n in batch:
        jobs.send(f"job {n}".encode())
    for n in batch:
        reply = jobs.recv(64)
        if reply != b"ok":
            sys.exit(f"job {n} refused: {reply.decode()}")
    sent = batch.stop
print(f"producer: {count} jobs confirmed", flush=True)
