"""A light target for reference: Python's multiprocessing start cost with a
module that imports nothing heavy (the setting of the issue's reference
figures). See stamping.py for what main() and mp_child() do."""
from stamping import send_time, serve, serve_time


def main():
    serve()


def mp_child(conn):
    send_time(conn)


def mp_serve(conn):
    serve_time(conn)
