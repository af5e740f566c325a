"""The workers of the chaos soak (bench/chaos/soak.py): producers, consumers
and the dead-letter sink. Standard library only.

Run as a command (`python3 chaos_worker.py produce|consume|dead`) or, for a
Python function group, as `python = "chaos_worker:consume"`. Every process
writes its records to its own file under $CHAOS_RECORDS, named after a
random incarnation id (pids may be reused, incarnation ids are not).

Record files, one line per message, written with one os.write(2) each on an
O_APPEND fd (nothing buffered in the process, so a SIGKILL loses nothing
that was written):

- producer `prod/<inc>`: first `wchar <N>` (the bytes the process had
  written before, from /proc/self/io), then per message the line `<seq>`
  (`<seq> p` for a poison message), written *before* the message is sent
  and only once the socket is writable, so the write(2) of the message that
  follows at once does not block. A line is followed by the next line only
  after its message was sent, so every line but the last is certainly
  sent. A producer stopped with SIGTERM ends its file with `done` (its last
  line was sent) or `unsent` (it was not). One killed by the soak is first
  stopped with SIGSTOP and its wchar read: the bytes of its record lines
  and of its sent messages add up to it exactly, with or without the last
  message, which says whether that one was sent. Only a producer that died
  any other way leaves a last line whose fate is unknown ("in doubt").
- consumer `cons/<inc>` and dead-letter sink `dead/<inc>`: the message id
  `<inc>:<seq>` is written before the `ack` is sent, so a consumer killed
  between the two shows up as a duplicate (the message is redelivered),
  never as a loss.

Poison messages (about one in POISON_EVERY) are always answered with
`nack`, so they are dead-lettered after `max_deliveries` deliveries; they
exercise the dead-letter path in every run.
"""

import os
import random
import select
import signal
import socket
import sys

POISON_EVERY = 4000
PAD = b"." * 40  # messages are about 64 bytes


def _records(kind):
    # Workers yield the CPU to drover and to the soak that drives it: the
    # soak's kills and status requests stay on time however busy they are.
    os.nice(10)
    inc = os.urandom(6).hex()
    path = os.path.join(os.environ["CHAOS_RECORDS"], kind, inc)
    return inc, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _wchar():
    """Bytes this process has written so far (its successful write(2)s)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def message(inc, seq, poison):
    return b"%s:%d:%s:%s" % (inc.encode(), seq, b"p" if poison else b"n", PAD)


def produce():
    """Sends `<inc>:<seq>:<n|p>:<padding>` until SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    out = int(os.environ["DROVER_OUT_JOBS"])
    os.set_blocking(out, False)
    inc, rec = _records("prod")
    # Everything this process writes from here on is a record line or a
    # message, so /proc/PID/io's wchar, read while it is stopped, tells the
    # soak whether the message of the last line was sent.
    base = _wchar()
    os.write(rec, b"wchar %d\n" % base)
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    seq = 0
    pending = None  # the next message, and whether its line is written
    recorded = False
    while True:
        if stop:
            os.write(rec, b"unsent\n" if recorded else b"done\n")
            return 0
        if pending is None:
            poison = random.randrange(POISON_EVERY) == 0
            pending = message(inc, seq, poison)
            line = b"%d p\n" % seq if poison else b"%d\n" % seq
        # Wait for room first, so that the record and the send are
        # adjacent and the send does not block.
        if not poller.poll(200):
            continue
        if not recorded:
            os.write(rec, line)
            recorded = True
        try:
            os.write(out, pending)  # one write = one packet = one message
        except BlockingIOError:
            continue  # room went away between poll and write: same message again
        except OSError:
            os.write(rec, b"unsent\n")
            return 1
        pending, recorded = None, False
        seq += 1


def _consume(queue, kind):
    sock = socket.socket(fileno=int(os.environ[f"DROVER_IN_{queue}"]))
    inc, rec = _records(kind)
    nack_poison = kind == "cons"
    # The soak's self-check (--inject-loss): acknowledge one message without
    # recording it, once per process, as a broker that lost it would.
    forget_at = 1000 if os.environ.get("CHAOS_INJECT_LOSS") and kind == "cons" else -1
    handled = 0
    while True:
        first = sock.recv(4096)
        if not first:
            return 0  # the queue was closed: drover is shutting down
        batch = [first]
        closed = False
        while len(batch) < 64:
            try:
                more = sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not more:
                closed = True
                break
            batch.append(more)
        settle = []
        ids = []
        for message in batch:
            parts = message.split(b":", 3)
            if nack_poison and parts[2] == b"p":
                settle.append(b"nack")
            else:
                handled += 1
                if handled != forget_at:
                    ids.append(parts[0] + b":" + parts[1] + b"\n")
                settle.append(b"ack")
        if ids:
            os.write(rec, b"".join(ids))  # recorded before any ack
        try:
            for answer in settle:
                sock.send(answer)
        except OSError:
            return 0
        if closed:
            return 0


def consume():
    """Consumes `jobs`: records each id, then acks (poison: nack)."""
    return _consume("JOBS", "cons")


def dead():
    """Consumes the dead-letter queue: records each id, then acks."""
    return _consume("DEAD", "dead")


if __name__ == "__main__":
    sys.exit({"produce": produce, "consume": consume, "dead": dead}[sys.argv[1]]())
