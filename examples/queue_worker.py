"""The documented Python worker (README, "Queues"), telling what it does.

It reads `jobs`, writes `results`, and acknowledges each job after handling
it; if it dies before the `ack`, drover hands the job to another worker.
The protocol is the README's loop, unchanged: recv a job, send its result,
send `ack`. Added for the demo: each result names its worker
(`JOB 17 (worker 2)`) so that the sink can say who did the work; a line per
job; and a last line when drover closes the queue at shutdown (`recv`
returns 0 bytes).
"""
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
me = os.environ["DROVER_INDEX"]
done = 0
while (msg := jobs.recv(65536)):
    results.send(msg.upper() + f" (worker {me})".encode())
    jobs.send(b"ack")
    done += 1
    job = msg.decode(errors="replace")
    print(f"{job} -> {job.upper()}", flush=True)
print(f"queue closed, exiting after {done} job{'' if done == 1 else 's'}", flush=True)
