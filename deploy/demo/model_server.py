#!/usr/bin/env python3
"""A demo model server for the Portcullis demo and compose file.

Answers every POST .../versions/<v>:predict with a fake prediction and
every other request with 200 and what it received, including the identity
headers Portcullis set (x-portcullis-*), so a demo can show what the
upstream sees. Standard library only; listens on 127.0.0.1:PORT (argv[1]),
or on HOST:PORT from MODEL_SERVER_LISTEN (compose). PORT 0 takes a free port;
the bound address is printed as one line, "listening HOST:PORT", once the
socket accepts connections.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-model/1"

    def _reply(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-portcullis-")}
        reply = {"path": self.path, "method": self.command, "portcullis_headers": seen}
        if self.command == "POST" and self.path.endswith(":predict"):
            # Portcullis has validated the body (features per models.yaml).
            reply["prediction"] = {"label": "positive", "score": 0.97}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _reply
    do_POST = _reply

    def log_message(self, *args):
        pass


def main():
    listen = os.environ.get("MODEL_SERVER_LISTEN")
    if listen:
        host, port = listen.rsplit(":", 1)
    else:
        host, port = "127.0.0.1", sys.argv[1]
    server = ThreadingHTTPServer((host, int(port)), Handler)
    bound_host, bound_port = server.server_address[:2]
    print(f"listening {bound_host}:{bound_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
