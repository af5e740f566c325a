"""A numpy target: importing it imports numpy (nothing else heavy). Used for
the optional numpy variant of the python suite; see stamping.py for what
main() and mp_child() do."""
import numpy  # noqa: F401  (the point: its import cost)
from stamping import send_time, serve, serve_time


def main():
    serve()


def mp_child(conn):
    send_time(conn)


def mp_serve(conn):
    serve_time(conn)
