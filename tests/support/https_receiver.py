#!/usr/bin/env python3
"""An HTTP(S) receiver for the tests of crashwatch's webhooks and `crashwatch status`.

Python's own http.server and ssl modules, so the server side of every TLS handshake is OpenSSL's,
not the client's library talking to itself. It binds a loopback port (0: any free one), writes
the port to --port-file once it listens, and appends one JSON line per request to --record:
method, path, headers (lowercase names), body, and the subject CN of the client certificate.

  --cert/--key       speak TLS with this certificate (else plain HTTP)
  --client-ca        require a client certificate signed by this CA
  --basic-auth U:F   answer 401 unless the request carries user U with the password in file F
  --status N         the status of every answer to a POST (default 200)
  --answer-bytes N   that many bytes of body in each answer to a POST
  --redirect-to URL  answer every POST with a 307 to URL ("self": the request's own URL)
  --document FILE    answer GET /api/units with FILE (JSON), any other GET with a 404
"""

import argparse
import base64
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--record")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca")
    parser.add_argument("--basic-auth")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--answer-bytes", type=int, default=0)
    parser.add_argument("--redirect-to")
    parser.add_argument("--document")
    args = parser.parse_args()
    lock = threading.Lock()

    def expected_authorization():
        if not args.basic_auth:
            return None
        user, password_file = args.basic_auth.split(":", 1)
        with open(password_file, encoding="utf-8") as f:
            password = f.read().strip()
        pair = f"{user}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *log_args):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % log_args))

        def record(self, body):
            if not args.record:
                return
            subject = None
            if isinstance(self.connection, ssl.SSLSocket):
                cert = self.connection.getpeercert()
                if cert:
                    for rdn in cert.get("subject", ()):
                        for key, value in rdn:
                            if key == "commonName":
                                subject = value
            line = json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace"),
                    "client_cn": subject,
                }
            )
            with lock, open(args.record, "a", encoding="utf-8") as f:
                f.write(line + "\n")

        def answer(self, status, body, extra=()):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass  # a client that read enough and went away

        def authorized(self):
            expected = expected_authorization()
            if expected is None or self.headers.get("Authorization") == expected:
                return True
            self.answer(401, b"Unauthorized\n", [("WWW-Authenticate", 'Basic realm="test"')])
            return False

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            self.record(body)
            if not self.authorized():
                return
            if args.redirect_to:
                scheme = "https" if args.cert else "http"
                host = self.headers.get("Host")
                target = f"{scheme}://{host}{self.path}" if args.redirect_to == "self" else args.redirect_to
                self.answer(307, b"", [("Location", target)])
                return
            self.answer(args.status, b"x" * args.answer_bytes)

        def do_GET(self):
            self.record(b"")
            if not self.authorized():
                return
            if args.document and self.path == "/api/units":
                with open(args.document, "rb") as f:
                    document = f.read()
                self.answer(200, document, [("Content-Type", "application/json")])
            else:
                self.answer(404, b'{"error": "no such unit is watched"}\n')

    server = ThreadingHTTPServer((args.bind, 0), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    port_file = args.port_file
    with open(port_file + ".part", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".part", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
