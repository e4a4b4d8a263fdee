#!/usr/bin/env python3
"""A small HTTP CONNECT proxy for the tests of crashwatch's proxy settings.

It binds a loopback port, writes it to --port-file once it listens, and for each CONNECT appends
one JSON line to --record (the target and the Proxy-Authorization header it came with), answers
200 and copies bytes both ways until either side closes. Anything but CONNECT gets a 405: the
client under test tunnels every request.
"""

import argparse
import json
import os
import socket
import threading


def pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(client, record, lock):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk:
            client.close()
            return
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    with lock, open(record, "a", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {
                    "method": method,
                    "target": target,
                    "proxy_authorization": headers.get("proxy-authorization"),
                }
            )
            + "\n"
        )
    if method != "CONNECT":
        client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        client.close()
        return
    host, _, port = target.rpartition(":")
    try:
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        client.close()
        return
    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    if rest:
        upstream.sendall(rest)
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    pipe(upstream, client)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    with open(args.port_file + ".part", "w", encoding="utf-8") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(args.port_file + ".part", args.port_file)
    lock = threading.Lock()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client, args.record, lock), daemon=True).start()


if __name__ == "__main__":
    main()
