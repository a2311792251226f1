#!/bin/sh
# An exposed service (mode: http): the watchdog runs this script once and proxies every
# request to the server it starts, which must listen on 127.0.0.1:$upstream_port.
# A real service would load its model here, once, and serve many requests with it.
# `exec` makes the server the process the watchdog watches: if it dies, the watchdog
# exits non-zero and the orchestrator restarts the container.
exec python3 - <<'PY'
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = os.environ.get("MODEL", "tiny")  # from environment.variables in the config


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1, as the watchdog asks: an answer streamed in chunks needs it (these carry
    # Content-Length). No keep-alive: each request comes on a connection of its own.
    protocol_version = "HTTP/1.1"

    def _send(self, status, body, content_type):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        # A client may send its body in chunks (`curl -T -`, any stream of unknown
        # length): the watchdog passes it on as it came.
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            data += self.rfile.read(size)
            self.rfile.readline()  # the line end after each chunk
        while self.rfile.readline().strip():
            pass  # trailers, up to the empty line
        return data

    def do_GET(self):
        if self.path == "/":
            self._send(200, f"Hello from an exposed service (model {MODEL})\n", "text/plain")
        else:
            self._send(404, "not found\n", "text/plain")

    def do_POST(self):
        if self.path != "/predict":
            self._send(404, "not found\n", "text/plain")
            return
        text = self._body().decode()
        result = {"model": MODEL, "length": len(text), "upper": text.upper()}
        self._send(200, json.dumps(result) + "\n", "application/json")


port = int(os.environ.get("upstream_port", "8081"))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
PY
