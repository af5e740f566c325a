"""An HTTP server on an inherited listening socket (fd 3, drover's
`sockets`), answering every GET with its PID: the socket-activated server of
the `sockets` suite. SIGTERM stops it accepting; the request in hand is
finished first. The listening socket gets a 100 ms receive timeout so that
`accept` comes back to look for the signal, which is blocked, never
interrupting a request."""

import http.server
import os
import signal
import socket
import struct
import types

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
listener = socket.socket(fileno=3)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100000))
BODY = str(os.getpid()).encode()


class Pid(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


server = types.SimpleNamespace()
while signal.SIGTERM not in signal.sigpending():
    try:
        conn, addr = listener.accept()
    except (BlockingIOError, InterruptedError):
        continue
    conn.settimeout(10)
    try:
        Pid(conn, addr, server)
    except OSError:
        pass
    finally:
        conn.close()
