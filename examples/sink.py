"""Prints every result from the `results` queue and acknowledges it."""
import os
import socket

results = socket.socket(fileno=int(os.environ["DROVER_IN_RESULTS"]))
while msg := results.recv(65536):
    print(f"sink: {msg.decode(errors='replace')}", flush=True)
    results.send(b"ack")
print("sink: queue closed, exiting", flush=True)
