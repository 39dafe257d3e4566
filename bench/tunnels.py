#!/usr/bin/env python3
"""WebSocket message throughput and gRPC unary calls through gatehouse, beside nginx doing the same.

Usage: python3 bench/tunnels.py [--quick] [--only ws|grpc] [--repeats N] [--duration S]
                                [--out FILE.json] [--binary PATH] [--ws-client PATH]

The method is run.py's (and BENCH.md's): one worker everywhere, proxies and upstreams on cpu0, the
load generator alone on cpu1, one interleaved run per group whose order is reversed on every
repeat, ratios against nginx in the same repeat, CPU µs per message or call of the proxy process,
and the same noise gate. It shares run.py's code for all of that.

- WebSocket: `examples/ws_bench.rs` is both the upstream (an echo server) and the load client
  (N connections, each sending one small text message at a time and waiting for its echo). Targets:
  the echo server directly, nginx `proxy_pass` with the Upgrade and Connection headers, gatehouse
  on a public route and with a Bearer token.
- gRPC unary: an nginx upstream speaking HTTP/2 over cleartext answers every call with a canned
  message and `grpc-status: 0`; h2load sends gRPC-framed requests (`content-type:
  application/grpc`, `te: trailers`) over h2c to it directly, through nginx `grpc_pass`, and
  through gatehouse (`upstream.protocol = "h2c"`) on a public route and with a Bearer token.

Before any load, every target is checked with a real client: Python `websockets` exchanges a
message, `grpcio` makes a call and reads `grpc-status: 0`, and gatehouse's protected targets are
refused without credentials (401 for the upgrade, UNAUTHENTICATED for the call).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the installer, processes, CPU accounting, noise gate and table)

# One message in flight per connection, like wrk's one request per connection: the server core is
# the bottleneck and throughput follows the proxy's CPU per message.
WS_CONNECTIONS = bench.CONNECTIONS
WS_MESSAGE_BYTES = 64
GRPC_PUBLIC = "/bench.Public/Unary"
GRPC_PRIVATE = "/bench.Echo/Unary"


def proto_string(text):
    """A protobuf message whose field 1 is the string `text` (under 128 bytes)."""
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data


def grpc_frame(message):
    """gRPC's length-prefixed message: uncompressed flag, 4-byte length, message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


GRPC_REQUEST = proto_string("ping " * 6)
GRPC_REPLY = proto_string("pong " * 6)


def ensure_python_clients():
    pip = [name for module, name in (("websockets", "websockets"), ("grpc", "grpcio"))
           if importlib.util.find_spec(module) is None]
    if pip:
        bench.log(f"installing {' '.join(pip)} (pip)")
        bench.quiet([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                     "--root-user-action=ignore", *pip])
        importlib.invalidate_caches()


# --- targets --------------------------------------------------------------------------------------


class WsTarget(bench.Target):
    client = None  # the ws_bench binary

    def loadgen_argv(self, seconds, log_file=None):
        argv = [self.client, "load", self.url, "--connections", str(WS_CONNECTIONS),
                "--seconds", str(seconds), "--size", str(WS_MESSAGE_BYTES)]
        for name, value in self.headers.items():
            argv += ["--header", f"{name}: {value}"]
        return argv

    def parse(self, output, log_file):
        values = {}
        for line in output.splitlines():
            name, _, value = line.partition(" ")
            values[name] = value
        try:
            return {
                "requests": int(values["messages"]),
                "rps": float(values["rate"]),
                "p50_us": float(values["p50_us"]),
                "p99_us": float(values["p99_us"]),
                # A handshake not answered 101 counts like a non-2xx answer, a connection that
                # failed or closed (or an echo that differed) like a socket error.
                "non2xx": int(values["refused"]),
                "socket_errors": int(values["errors"]),
                "first_problem": values.get("first_problem", ""),
            }
        except (KeyError, ValueError) as e:
            raise ValueError(f"unexpected ws_bench output ({e}):\n{output}") from None


class GrpcTarget(bench.Target):
    request_file = None  # the gRPC-framed request body h2load sends

    def __init__(self, key, label, address, method, measured, metadata=None, needs_auth=False):
        headers = {"content-type": "application/grpc", "te": "trailers", **(metadata or {})}
        super().__init__(key, label, "grpc", f"http://{address}{method}", measured, headers, needs_auth)
        self.address, self.method, self.metadata = address, method, metadata or {}

    def loadgen_argv(self, seconds, log_file=None):
        argv = bench.h2load_argv(self, seconds, log_file)
        return argv[:-1] + ["-d", self.request_file, argv[-1]]

    def parse(self, output, log_file):
        return bench.parse_h2load(output, log_file)


def check_ws(target):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(target.url, additional_headers=target.headers, open_timeout=5, close_timeout=2) as ws:
            ws.send("hello through " + target.label)
            echo = ws.recv(timeout=5)
    except InvalidStatus as e:
        raise RuntimeError(f"{target.label}: the upgrade was answered {e.response.status_code}, not 101") from None
    if echo != "hello through " + target.label:
        raise RuntimeError(f"{target.label}: the echo was {echo!r}")
    if target.needs_auth:
        try:
            with connect(target.url, open_timeout=5, close_timeout=2):
                pass
        except InvalidStatus as e:
            if e.response.status_code == 401:
                return
            raise RuntimeError(f"{target.label}: expected 401 without credentials, got "
                               f"{e.response.status_code}") from None
        raise RuntimeError(f"{target.label}: the upgrade was accepted without credentials")


def check_grpc(target):
    import grpc

    with grpc.insecure_channel(target.address) as channel:
        # No serialisers: the call takes and returns bytes, the messages above as they are.
        call = channel.unary_unary(target.method)
        try:
            reply, state = call.with_call(GRPC_REQUEST, metadata=list(target.metadata.items()), timeout=5)
        except grpc.RpcError as e:
            raise RuntimeError(f"{target.label}: the call ended {e.code().name}: {e.details()!r}") from None
        if reply != GRPC_REPLY or state.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"{target.label}: the call answered {reply!r} with {state.code().name}")
        if target.needs_auth:
            try:
                call(GRPC_REQUEST, timeout=5)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return
                raise RuntimeError(f"{target.label}: expected UNAUTHENTICATED without credentials, got "
                                   f"{e.code().name}: {e.details()!r}") from None
            raise RuntimeError(f"{target.label}: the call succeeded without credentials")


def wait_h2c(service, url, timeout=30.0):
    """wait_ready for a listener that speaks HTTP/2 with prior knowledge only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
                               "--http2-prior-knowledge", url], capture_output=True, text=True)
        if done.stdout.strip() not in ("", "000") and int(done.stdout) < 500:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{service.name} was not ready within {timeout:.0f} s:\n{service.tail()}")


# --- the run --------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repeat of 1 s, no retries, ws_bench built unoptimised")
    parser.add_argument("--only", choices=["ws", "grpc"], help="one group only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--out", help="write the raw numbers to this JSON file")
    parser.add_argument("--binary", help="gatehouse binary to use as it is (default: target/release, rebuilt when stale)")
    parser.add_argument("--ws-client", help="ws_bench binary to use as it is (default: built from examples/)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.duration = 1, 1
    retries = 0 if args.quick else bench.NOISE_RETRIES
    min_clean = 1 if args.quick else min(bench.MIN_CLEAN, args.repeats)
    groups = [args.only] if args.only else ["ws", "grpc"]

    if os.cpu_count() < 2 or not os.path.exists("/proc/stat"):
        sys.exit("needs Linux with two CPUs: cpu0 for the servers, cpu1 for the load generator")
    began = time.monotonic()
    bench.ensure_tools([])
    ensure_python_clients()
    binary = bench.ensure_gatehouse(args.binary)
    if "ws" in groups:
        WsTarget.client = os.path.abspath(args.ws_client) if args.ws_client else \
            bench.ensure_example("ws_bench", "debug" if args.quick else "release")

    tmp = tempfile.mkdtemp(prefix="gatehouse-tunnels-")
    services = bench.Services(tmp)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    results = {}
    try:
        gh = None
        credentials = None

        def gatehouse(upstream_port, protocol):
            """gatehouse (plaintext listener only) in front of `upstream_port`, restarted if it ran:
            the user and its token live in the store, so they outlive the restart."""
            nonlocal gh, credentials
            if gh is None:
                gh = bench.Gatehouse(binary, tmp, upstream_port, template="gatehouse-tunnels.toml")
            elif gh.service is not None:
                services.stop(gh.service)
            gh.upstream_port, gh.values["protocol"] = upstream_port, protocol
            service = gh.start(services, https=False)
            if credentials is None:
                credentials = gh.credentials()
            return service, credentials[1]

        if "ws" in groups:
            up_port, port = bench.free_port(), bench.free_port()
            echo = services.start("ws-echo", [WsTarget.client, "echo", f"127.0.0.1:{up_port}"])
            bench.wait_ready(echo, f"http://127.0.0.1:{up_port}/")
            nginx = bench.start_nginx(services, tmp, "nginx-ws-proxy", "nginx-ws-proxy.conf", port=port,
                                      upstream_port=up_port)
            bench.wait_ready(nginx, f"http://127.0.0.1:{port}/")
            service, bearer = gatehouse(up_port, "auto")
            targets = [
                WsTarget("ws-direct", "direct (echo server)", "ws", f"ws://127.0.0.1:{up_port}/public/ws", [echo]),
                WsTarget("ws-nginx", "nginx proxy_pass (Upgrade)", "ws", f"ws://127.0.0.1:{port}/public/ws", [nginx]),
                WsTarget("ws-gatehouse-public", "gatehouse public", "ws", f"ws://127.0.0.1:{gh.port}/public/ws",
                         [service]),
                WsTarget("ws-gatehouse-bearer", "gatehouse Bearer", "ws", f"ws://127.0.0.1:{gh.port}/private/ws",
                         [service], {"Authorization": bearer}, needs_auth=True),
            ]
            for t in targets:
                check_ws(t)
            bench.log(f"WebSocket: {len(targets)} targets × {args.repeats} repeats × "
                      f"({bench.WARMUP_S} s warm-up + {args.duration} s)")
            runs = bench.measure(services, targets, args.repeats, args.duration, retries,
                                 {"upstream": echo.pgid}, unit="msg")
            results["ws"] = (targets, runs)

        if "grpc" in groups:
            files = os.path.join(tmp, "grpc")
            os.makedirs(files, mode=0o755, exist_ok=True)
            # nginx's workers (www-data when started as root) read the reply file: they may pass
            # through the private temporary directory, not list it.
            os.chmod(tmp, 0o711)
            with open(os.path.join(files, "reply.grpc"), "wb") as f:
                f.write(grpc_frame(GRPC_REPLY))
            GrpcTarget.request_file = os.path.join(tmp, "request.grpc")
            with open(GrpcTarget.request_file, "wb") as f:
                f.write(grpc_frame(GRPC_REQUEST))
            up_port, port = bench.free_port(), bench.free_port()
            upstream = bench.start_nginx(services, tmp, "nginx-grpc-upstream", "nginx-grpc-upstream.conf",
                                         port=up_port)
            wait_h2c(upstream, f"http://127.0.0.1:{up_port}/")
            nginx = bench.start_nginx(services, tmp, "nginx-grpc-proxy", "nginx-grpc-proxy.conf", port=port,
                                      upstream_port=up_port)
            wait_h2c(nginx, f"http://127.0.0.1:{port}/")
            service, bearer = gatehouse(up_port, "h2c")
            gh_address = f"127.0.0.1:{gh.port}"
            targets = [
                GrpcTarget("grpc-direct", "direct (upstream)", f"127.0.0.1:{up_port}", GRPC_PUBLIC, [upstream]),
                GrpcTarget("grpc-nginx", "nginx grpc_pass", f"127.0.0.1:{port}", GRPC_PUBLIC, [nginx]),
                GrpcTarget("grpc-gatehouse-public", "gatehouse public", gh_address, GRPC_PUBLIC, [service]),
                GrpcTarget("grpc-gatehouse-bearer", "gatehouse Bearer", gh_address, GRPC_PRIVATE, [service],
                           {"authorization": bearer}, needs_auth=True),
            ]
            for t in targets:
                check_grpc(t)
            bench.log(f"gRPC unary: {len(targets)} targets × {args.repeats} repeats × "
                      f"({bench.WARMUP_S} s warm-up + {args.duration} s)")
            runs = bench.measure(services, targets, args.repeats, args.duration, retries,
                                 {"upstream": upstream.pgid}, unit="call")
            results["grpc"] = (targets, runs)
        found = bench.versions([], {})
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        services.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.monotonic() - began
    print(f"gatehouse tunnels vs nginx, {platform.node()}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
          f"{args.repeats} repeat(s) × {args.duration} s after {bench.WARMUP_S} s warm-up, order reversed each "
          f"repeat; servers on cpu{bench.SERVER_CPU}, load generator on cpu{bench.LOADGEN_CPU}; one worker each "
          f"(nginx worker_processes, gatehouse worker_threads = 1). Figures are medians of clean runs (no "
          f"refusals or errors, other processes under {bench.NOISE_LIMIT:.0%} of a core); "
          + (f"a noisy run is redone up to {retries}×." if retries else "no run is redone."))
    if args.quick:
        print("Quick smoke run: one short repeat, not a measurement.")
    summary = {}
    if "ws" in results:
        targets, runs = results["ws"]
        summary["ws"] = bench.summarise(targets, runs, "ws-nginx", min_clean)
        print(f"\nWebSocket: ws_bench, {WS_CONNECTIONS} connections each with one {WS_MESSAGE_BYTES}-byte text "
              "message in flight; p50/p99 are round trips.\n")
        print(bench.table(summary["ws"], unit="msg", baseline="nginx proxy_pass"))
    if "grpc" in results:
        targets, runs = results["grpc"]
        summary["grpc"] = bench.summarise(targets, runs, "grpc-nginx", min_clean)
        print(f"\ngRPC unary over h2c: h2load -t1 -c{bench.CONNECTIONS} -m{bench.H2_STREAMS}, "
              f"{len(grpc_frame(GRPC_REQUEST))}-byte request, {len(grpc_frame(GRPC_REPLY))}-byte reply + trailers.\n")
        print(bench.table(summary["grpc"], unit="call", baseline="nginx grpc_pass"))
    print(f"\n({elapsed:.0f} s)")

    if args.out:
        with open(args.out, "w") as f:
            json.dump({
                "meta": {
                    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "host": platform.node(), "kernel": platform.release(), "quick": args.quick,
                    "repeats": args.repeats, "duration_s": args.duration, "warmup_s": bench.WARMUP_S,
                    "ws_connections": WS_CONNECTIONS, "ws_message_bytes": WS_MESSAGE_BYTES,
                    "grpc_connections": bench.CONNECTIONS, "grpc_streams": bench.H2_STREAMS,
                    "noise_limit": bench.NOISE_LIMIT, "retries": retries, "min_clean": min_clean,
                    "gatehouse": binary, "versions": found, "elapsed_s": round(elapsed, 1),
                },
                "summary": summary,
                "runs": {t.key: {"label": t.label, "protocol": t.protocol, "runs": runs[t.key]}
                         for targets, runs in results.values() for t in targets},
            }, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started here has been stopped")
