"""Produces numbered jobs on the `jobs` queue (DROVER_OUT_JOBS).

`send` blocks while the queue is full: that is drover's back-pressure.
With `confirm = true` on the queue (DROVER_CONFIRM_JOBS=1) it waits for
drover's `ok` after each job: for a durable queue, the job is on disk then.
Set JOBS to the number of jobs (default: one every RATE seconds, forever).
On SIGTERM (drover stopping it) it says how many jobs it sent and exits 0.
"""
import os
import signal
import socket

jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
count = int(os.environ.get("JOBS", "0"))
rate = float(os.environ.get("RATE", "0.2"))
confirm = os.environ.get("DROVER_CONFIRM_JOBS") == "1"
print(f"producer: sending a job every {rate:g}s", flush=True)

# SIGTERM stays pending while a job is being sent, so the count is exact;
# between jobs it ends the wait at once. (A send held up by back-pressure
# holds it up too, until drover's SIGKILL after `stop_timeout`.)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
n = 0
while count == 0 or n < count:
    try:
        jobs.send(f"job {n}".encode())
        reply = jobs.recv(64) if confirm else b"ok"
    except OSError as e:  # drover is gone (killed): nothing more to do
        print(f"producer: drover went away ({e}), stopping after {n} jobs", flush=True)
        break
    if reply != b"ok":
        print(f"producer: job {n} refused: {reply.decode()}", flush=True)
    n += 1
    if signal.sigtimedwait({signal.SIGTERM}, rate):
        print(f"producer: SIGTERM, stopping after {n} job{'' if n == 1 else 's'}", flush=True)
        break
else:
    print(f"producer: sent {n} job{'' if n == 1 else 's'}", flush=True)
