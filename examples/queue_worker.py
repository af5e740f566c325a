"""The documented Python worker, verbatim: upper-cases every job.

It reads `jobs`, writes `results`, and acknowledges each job after handling
it; if it dies before the `ack`, drover hands the job to another worker.
"""
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
while (msg := jobs.recv(65536)):
    results.send(msg.upper())
    jobs.send(b"ack")
