#!/usr/bin/env python3
"""An MTA-STS policy host for Ferrymail's end-to-end tests (RFC 8461 §3.3):
Python's http.server behind its ssl module, answering every GET with one
policy file.

Usage: mta_sts_policy_server.py JSON-OPTIONS

Options (all required):
  host, port    where to listen (MTA-STS fetches from port 443)
  cert, key     PEM files of the certificate for mta-sts.<domain>
  policy        the policy file's text, served as text/plain
  log           file receiving one line per request: "PATH HOST"

Prints "READY" on stdout when listening; stops when stdin closes.
"""

import http.server
import json
import ssl
import sys
import threading

opts = json.loads(sys.argv[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(opts["log"], "a") as f:
            f.write(f"{self.path} {self.headers.get('Host', '')}\n")
        body = opts["policy"].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer((opts["host"], opts["port"]), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(opts["cert"], opts["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()
    server.shutdown()


main()
