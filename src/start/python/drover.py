"""drover's queues from Python: read and write the queues drover wired to
this process, without socket code.

    import drover

    results = drover.outbox("results")
    for job in drover.inbox("jobs"):
        results.send(job.upper())

A message is acknowledged when the loop asks for the next one, so a
message is acked only once its loop body finished. Leaving the loop early
(`break`, `return`, or an exception) hands the message in hand back to
drover (`nack`): it is delivered again, here or to another worker. The
worst case is a duplicate, never a loss. When drover closes the queue
(shutdown), the loop ends.

Python function workers (`python = "module:function"`) can `import
drover` as it is. Any other Python program gets this file with
`drover python-module > drover.py`. Standard library only, Python >= 3.8.
"""

import os
import socket

__all__ = ["inbox", "outbox", "Outbox", "Refused"]

# One socket object per fd: two objects on one fd would close it twice.
_sockets = {}
_probe = bytearray(1)


class Refused(Exception):
    """drover answered a message with `no REASON` (a queue with
    `confirm = true`): the message was not accepted."""

    def __init__(self, queue, reason):
        super().__init__(f"queue {queue} refused the message: {reason}")
        self.queue = queue
        self.reason = reason


def _socket(direction, queue):
    variable = f"DROVER_{direction}_{queue.upper()}"
    value = os.environ.get(variable)
    if value is None:
        side = "inputs" if direction == "IN" else "outputs"
        raise LookupError(
            f"queue {queue!r} is not wired to this process ({variable} is not set): "
            f"list it in the group's `{side}`"
        )
    fd = int(value)
    sock = _sockets.get(fd)
    if sock is None:
        sock = _sockets[fd] = socket.socket(fileno=fd)
    return sock


def _next_length(sock):
    """Waits for the next message and returns its length, without reading
    it (0: drover closed the queue; an empty packet is never delivered)."""
    while True:
        try:
            return sock.recv_into(_probe, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        except InterruptedError:
            continue


def inbox(queue, *, ack=True):
    """Yields the messages of input queue `queue` (bytes) until drover
    closes it. Each is acked when the next one is asked for; one in hand
    when the loop is left early is nacked (delivered again).

    For a queue with `delivery = "at-most-once"` pass `ack=False`: such a
    queue takes no acks, and a message is settled once it is read."""
    sock = _socket("IN", queue)
    held = False
    try:
        while True:
            length = _next_length(sock)
            if length == 0:
                return
            message = sock.recv(length)
            if not message:
                return
            held = ack
            yield message
            if held:
                sock.send(b"ack")
                held = False
    finally:
        if held:
            try:
                sock.send(b"nack")
            except OSError:
                pass  # drover is gone: it redelivers what this process held


class Outbox:
    """An output queue: `send(bytes)`. With `confirm = true` on the queue,
    `send` returns once drover accepted the message (stored, for a durable
    queue or one on Redis) and raises `Refused` if it did not."""

    def __init__(self, queue):
        self.queue = queue
        self._sock = _socket("OUT", queue)
        self.confirm = os.environ.get(f"DROVER_CONFIRM_{queue.upper()}") == "1"

    def send(self, message):
        message = bytes(message)
        if not message:
            raise ValueError("an empty message is not a message: drover refuses it")
        self._sock.send(message)
        if not self.confirm:
            return
        reply = self._sock.recv(4096)
        if reply == b"ok":
            return
        if not reply:
            raise ConnectionError(f"drover closed queue {self.queue}")
        reason = reply[3:] if reply.startswith(b"no ") else reply
        raise Refused(self.queue, reason.decode(errors="replace"))


def outbox(queue):
    """The output queue `queue`, for `send`."""
    return Outbox(queue)
