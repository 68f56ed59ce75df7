"""An HTTP proxy in front of the test S3 server that holds back chosen uploads.

A checkpoint upload on loopback takes milliseconds; to kill a worker while
one is in flight, the proxy delays every write whose path contains a marker
(e.g. the step-00000008 folder) by a fixed time before passing it on. Reads
and other writes go through at once. Plain HTTP/1.1 with keep-alive, which
is what the AWS SDK inside pyarrow speaks to an http:// endpoint.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length", "expect"}


class DelayProxy:
    def __init__(self, target_port: int, marker: str, delay_s: float):
        self.target_port, self.marker, self.delay_s = target_port, marker, delay_s
        self.delayed = 0  # writes held back so far
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    body = self._chunked()
                else:
                    n = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(n) if n else None
                if self.command in ("PUT", "POST") and proxy.marker in self.path:
                    proxy.delayed += 1
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                # A HEAD answer has no body but the object's real length.
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _chunked(self) -> bytes:
                """A chunked request body, decoded (the AWS SDK streams uploads this way)."""
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()  # the chunk's CRLF

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
