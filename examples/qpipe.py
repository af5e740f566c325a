"""Bridges a drover queue and a line-oriented program, for shell workers.

    qpipe.py in QUEUE    -- each message of queue QUEUE becomes a line on stdout
                            (acknowledged once written)
    qpipe.py out QUEUE   -- each line on stdin becomes a message on queue QUEUE

For example, a worker written in shell:

    command = ["sh", "-c", "python3 examples/qpipe.py in jobs | tr a-z A-Z | python3 examples/qpipe.py out results"]
"""
import os
import socket
import sys


def main(direction, queue):
    name = f"DROVER_{direction.upper()}_{queue.upper()}"
    if name not in os.environ:
        sys.exit(f"qpipe: {name} is not set: is `{queue}` in this group's {direction}puts?")
    sock = socket.socket(fileno=int(os.environ[name]))
    if direction == "in":
        out = sys.stdout.buffer
        while msg := sock.recv(1 << 20):
            out.write(msg.replace(b"\n", b" ") + b"\n")
            out.flush()
            sock.send(b"ack")
    else:
        for line in sys.stdin.buffer:
            sock.send(line.rstrip(b"\n"))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("in", "out"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
