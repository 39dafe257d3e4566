#!/usr/bin/env python3
"""Resource figures: idle RSS, RSS with 10 000 idle keep-alive connections, and exec to ready.

Usage: bench/resources.py [BINARY] [CONNECTIONS]   (default: target/release/gatehouse, 10000)

Gatehouse starts on a fresh store with one worker thread per core (its default). Idle RSS is read
from /proc/PID/status once /readyz answers 200 and a few requests have been served (so that lazy
initialisation has happened). Then CONNECTIONS clients each open a connection, send one request on
it (the JWKS, which gatehouse answers itself), read the answer and keep the connection open; RSS is
read again once all are idle.
"""

import http.client
import os
import resource
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import one_run, ready, spawn  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/gatehouse"
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 1024
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    # Every connection comes from 127.0.0.1: raise the connection caps above the count measured.
    os.environ["GATEHOUSE_SERVER__MAX_CONNECTIONS"] = str(connections + 100)
    os.environ["GATEHOUSE_SERVER__MAX_CONNECTIONS_PER_IP"] = str(connections + 100)
    with tempfile.TemporaryDirectory() as tmp:
        child, admin, plain, _ = spawn(binary, tmp)
        os.environ.pop("GATEHOUSE_SERVER__MAX_CONNECTIONS")
        os.environ.pop("GATEHOUSE_SERVER__MAX_CONNECTIONS_PER_IP")
        sockets = []
        try:
            deadline = time.time() + 30
            while not ready(admin):
                if time.time() > deadline:
                    sys.exit("gatehouse was not ready within 30 s")
                time.sleep(0.01)
            time.sleep(0.5)
            for _ in range(20):
                conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=5)
                conn.request("GET", "/.well-known/jwks.json")
                conn.getresponse().read()
                conn.close()
            time.sleep(0.5)
            idle = rss_kib(child.pid)
            # Answered by gatehouse itself: the figure is gatehouse's, not an upstream's.
            request = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: bench\r\n\r\n"
            for i in range(connections):
                s = socket.create_connection(("127.0.0.1", plain), timeout=10)
                s.sendall(request)
                sockets.append(s)
                if i % 500 == 499:
                    for pending in sockets[-500:]:
                        pending.recv(4096)
            for pending in sockets[len(sockets) - len(sockets) % 500 :]:
                pending.recv(4096)
            time.sleep(1.0)
            loaded = rss_kib(child.pid)
            alive = child.poll() is None
        finally:
            for s in sockets:
                s.close()
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)
    startup = sorted(one_run(binary) for _ in range(10))
    print(f"idle RSS: {idle / 1024:.1f} MiB")
    print(
        f"RSS with {connections} idle keep-alive connections: {loaded / 1024:.1f} MiB "
        f"({(loaded - idle) / connections:.1f} KiB per connection; still serving: {alive})"
    )
    print(f"exec to /readyz 200: median {startup[len(startup) // 2]:.1f} ms over 10 runs")


if __name__ == "__main__":
    main()
