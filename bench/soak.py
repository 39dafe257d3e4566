#!/usr/bin/env python3
"""Soak: gatehouse's RSS under full load for a long time, with nobody scraping /metrics.

Usage: python3 bench/soak.py [--duration S] [--settle S] [--interval S] [--tolerance F] [--binary PATH]

SPEC §10 says memory is flat: no per-request state outlives its request unless bounded. This runs
gatehouse (one worker, as in run.py) in front of the bench's nginx upstream and drives `wrk -t1 -c32`
at the proxied `/public/` route for `--duration` seconds (default 600), pinned like run.py (servers
on cpu0, wrk on cpu1). Nothing reads `/metrics` meanwhile, so only gatehouse's own timer frees the
exporter's histogram samples. RSS is read from /proc/PID/status every `--interval` seconds (10).
The run fails (exit 1) when any sample after `--settle` seconds (60: the first minute fills caches,
pools and allocator arenas) exceeds the sample taken at `--settle` by more than `--tolerance` (0.10),
or when wrk saw errors or non-2xx answers.

`python3 bench/soak.py --duration 40 --settle 10 --interval 5` is a short smoke run.
"""

import argparse
import os
import re
import sys
import tempfile
import shutil
import signal
import subprocess
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (  # noqa: E402
    CONNECTIONS, LOADGEN_CPU, Gatehouse, Services, ensure_gatehouse, ensure_tools, free_port, log,
    start_nginx, wait_ready,
)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    parser.add_argument("--settle", type=int, default=60,
                        help="seconds after which RSS is the baseline (default 60)")
    parser.add_argument("--interval", type=int, default=10, help="seconds between RSS samples (default 10)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="allowed growth over the baseline, as a fraction (default 0.10)")
    parser.add_argument("--binary", help="gatehouse binary to use as it is (default: target/release, rebuilt when stale)")
    args = parser.parse_args()
    if args.settle >= args.duration:
        parser.error("--settle must be shorter than --duration")

    ensure_tools([])
    binary = ensure_gatehouse(args.binary)
    tmp = tempfile.mkdtemp(prefix="gatehouse-soak-")
    services = Services(tmp)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    samples = []
    try:
        up_port = free_port()
        upstream = start_nginx(services, tmp, "nginx-upstream", "nginx-upstream.conf", port=up_port)
        wait_ready(upstream, f"http://127.0.0.1:{up_port}/")
        gatehouse = Gatehouse(binary, tmp, up_port)
        service = gatehouse.start(services, https=False)
        pid = service.proc.pid
        url = gatehouse.plain("/public/")
        log(f"soak: wrk -t1 -c{CONNECTIONS} {url} for {args.duration} s, RSS every {args.interval} s, "
            f"no /metrics scraper")
        wrk = services.start("wrk", ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{args.duration}s", "--timeout", "5s", url],
                             cpu=LOADGEN_CPU)
        began = time.monotonic()
        next_sample = began
        while wrk.proc.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                if service.proc.poll() is not None:
                    raise RuntimeError(f"gatehouse exited during the soak:\n{service.tail()}")
                elapsed = now - began
                samples.append((elapsed, rss_kib(pid)))
                log(f"  {elapsed:6.0f} s  RSS {samples[-1][1] / 1024:7.1f} MiB")
                next_sample += args.interval
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        with open(wrk.log_path, errors="replace") as f:
            output = f.read()
        if wrk.proc.returncode != 0:
            raise RuntimeError(f"wrk exited with {wrk.proc.returncode}:\n{output[-2000:]}")
        samples.append((time.monotonic() - began, rss_kib(pid)))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        services.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    settled = [s for s in samples if s[0] >= args.settle]
    baseline = settled[0][1]
    peak = max(kib for _, kib in settled)
    growth = peak / baseline - 1
    print(f"soak: {args.duration} s of wrk -t1 -c{CONNECTIONS} on /public/, no /metrics scraper; "
          f"{requests.group(1) if requests else '?'} requests, {rate.group(1) if rate else '?'} req/s")
    print(f"RSS: {samples[0][1] / 1024:.1f} MiB at start, {baseline / 1024:.1f} MiB at {settled[0][0]:.0f} s, "
          f"peak after that {peak / 1024:.1f} MiB ({growth:+.1%}), {samples[-1][1] / 1024:.1f} MiB at the end")
    failures = []
    if growth > args.tolerance:
        failures.append(f"RSS grew {growth:.1%} after {args.settle} s (limit {args.tolerance:.0%})")
    if errors:
        failures.append(f"wrk socket errors: {errors.group(1)}")
    if non2xx:
        failures.append(f"{non2xx.group(1)} non-2xx answers")
    if failures:
        print("FAIL: " + "; ".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started here has been stopped")
    except (RuntimeError, subprocess.SubprocessError) as e:
        sys.exit(f"soak: {e}")
