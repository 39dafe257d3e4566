#!/usr/bin/env python3
"""Time from exec to the first `/readyz` 200, for a sidecar whose start-up delays its pod.

Usage: bench/startup.py [BINARY] [RUNS]   (default: target/release/gatehouse, 20 runs)

Each run starts gatehouse on a fresh store (a new temporary directory: the first start also
creates the store, the token signing key and the development master key), polls
http://127.0.0.1:PORT/readyz every millisecond, and stops it. Prints min / median / max.
"""

import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def spawn(binary, tmp):
    """Starts gatehouse on a fresh store in `tmp`: (process, admin port, plain port, start time)."""
    admin, plain = free_port(), free_port()
    config = os.path.join(tmp, "gatehouse.toml")
    with open(config, "w") as f:
        f.write(
            f"""
[listen]
https = ""
http = "127.0.0.1:{plain}"
admin = "127.0.0.1:{admin}"
[upstream]
url = "http://127.0.0.1:9"
[store]
path = "{tmp}/data"
[sms]
kind = "none"
[log]
level = "warn"
"""
        )
    env = dict(os.environ, GATEHOUSE_MASTER_KEY="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    started = time.perf_counter()
    child = subprocess.Popen(
        [binary, "--config", config, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return child, admin, plain, started


def one_run(binary):
    with tempfile.TemporaryDirectory() as tmp:
        child, admin, _, started = spawn(binary, tmp)
        try:
            while not ready(admin):
                if child.poll() is not None:
                    sys.exit(f"gatehouse exited with {child.returncode} before it was ready")
                if time.perf_counter() - started > 30:
                    sys.exit("gatehouse was not ready within 30 s")
                time.sleep(0.001)
            return (time.perf_counter() - started) * 1000
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/gatehouse"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    times = sorted(one_run(binary) for _ in range(runs))
    print(
        f"exec to /readyz 200 over {runs} runs: min {times[0]:.1f} ms, "
        f"median {statistics.median(times):.1f} ms, max {times[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
