"""Counts the results from the `results` queue and acknowledges each one.

Every PERIOD seconds (default 5) it prints a summary: results so far, the
rate since the last summary, and which workers they came from (a result
ends with `(worker N)`, see queue_worker.py). When drover closes the queue
at shutdown (`recv` returns 0 bytes) it prints the final count and exits.
"""
import os
import re
import select
import socket
import time

results = socket.socket(fileno=int(os.environ["DROVER_IN_RESULTS"]))
period = float(os.environ.get("PERIOD", "5"))
worker = re.compile(rb"\(worker (\d+)\)$")
total = 0
workers = set()


def summary(what):
    names = ",".join(sorted(workers, key=int)) or "none"
    return f"sink: {total} results {what}, from workers {names}"


last_total, last_time = 0, time.monotonic()
while True:
    due = last_time + period
    readable, _, _ = select.select([results], [], [], max(0.0, due - time.monotonic()))
    if readable:
        msg = results.recv(65536)
        if not msg:
            break
        total += 1
        if m := worker.search(msg):
            workers.add(m.group(1).decode())
        results.send(b"ack")
    now = time.monotonic()
    if now >= due:
        rate = (total - last_total) / (now - last_time)
        print(summary(f"so far, {rate:.1f}/s"), flush=True)
        last_total, last_time = total, now
print(summary("in all") + "; queue closed, exiting", flush=True)
