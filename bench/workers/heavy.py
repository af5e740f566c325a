"""The heavy module of the python suite: a module that loads a large model
or library at import time.

Importing it takes ~300 ms (a sleep) and then holds ~200 MiB of resident
memory (a bytearray with one byte written per 4 KiB page). HEAVY_SLEEP_MS
and HEAVY_MIB in the environment change the two sizes.

`main()` is the worker (`python = "heavy:main"`), `mp_child(conn)` the
multiprocessing target; see stamping.py for what they do.
"""
import os
import time

from stamping import send_time, serve, serve_time

IMPORT_SLEEP_MS = int(os.environ.get("HEAVY_SLEEP_MS", "300"))
BALLAST_MIB = int(os.environ.get("HEAVY_MIB", "200"))

time.sleep(IMPORT_SLEEP_MS / 1000)
BALLAST = bytearray(BALLAST_MIB * 2**20)
BALLAST[::4096] = b"\1" * len(range(0, len(BALLAST), 4096))  # one byte per page: resident


def main():
    serve()


def mp_child(conn):
    send_time(conn)


def mp_serve(conn):
    serve_time(conn)
