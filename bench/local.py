#!/usr/bin/env python3
"""Throughput and CPU per request of gatehouse's own OTP endpoints, each answer backed by a durable write.

Usage: python3 bench/local.py [--users N] [--repeats R] [--duration S] [--binary PATH] [--out FILE.json]

- `POST /manage/v2/user/validate/otp`: every request validates a different user's texted code, once.
  Gatehouse marks the code used and updates the user's `lastLoginTimestamp`, durably, before it answers.
- `POST /v1/me/verify-otp`: every request is a different user's current authenticator-app code.
  Gatehouse records the accepted time step, durably, before it answers with a fresh access token.

A code is accepted once, so each request needs a code of its own: the bench prepares `--users` users
of each kind (through the admin API, the Manage send endpoint, and enrolment with tokens from its own
trusted issuer), and each measured run spends a slice of their codes. wrk reads them from a list; a
run that finishes its list early is refused rather than reported. Server and load generator are
pinned like bench/run.py's (gatehouse on cpu0 with one worker, wrk on cpu1), and the same noise
gate applies.
"""

import argparse
import base64
import concurrent.futures
import datetime
import http.client
import http.server
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (shares the installer, process and CPU accounting code)

SETUP_THREADS = 8
STEP_S = 30
WARMUP_SHARE = 0.2

# Reads one `Authorization<TAB>body` line per request (and sends an ApplicationToken when given one). After the list, it sends a cheap local read
# (JWKS) that is counted apart, so a list that ran out is seen instead of producing failures.
LUA = r"""
ok, bad, spare, exhausted = 0, 0, 0, 0
local lines, i, path, app = {}, 0, nil, nil
function init(args)
  path, app = args[1], args[3]
  for line in io.lines(args[2]) do lines[#lines + 1] = line end
end
function request()
  i = i + 1
  local line = lines[i]
  if line == nil then
    exhausted = 1
    return wrk.format("GET", "/.well-known/jwks.json")
  end
  local tab = line:find("\t", 1, true)
  local headers = {["Authorization"] = line:sub(1, tab - 1), ["Content-Type"] = "application/json"}
  if app then headers["ApplicationToken"] = app end
  return wrk.format("POST", path, headers, line:sub(tab + 1))
end
function response(status, headers, body)
  if body:find('"keys"', 1, true) then spare = spare + 1
  elseif status == 200 then ok = ok + 1
  else bad = bad + 1 end
end
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("lua: ok=%d bad=%d spare=%d exhausted=%d\n",
                           t:get("ok"), t:get("bad"), t:get("spare"), t:get("exhausted")))
  end
end
"""


def log(msg):
    bench.log(msg)


class Setup:
    """A keep-alive HTTP connection per thread, for preparing users and codes in parallel."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def call(self, method, path, headers=None, body=None):
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def expect(self, want, method, path, headers=None, body=None):
        status, answer = self.call(method, path, headers, body)
        if status != want:
            raise RuntimeError(f"{method} {path} answered {status}, not {want}: {answer[:300]!r}")
        return answer


def parallel(fn, items):
    with concurrent.futures.ThreadPoolExecutor(SETUP_THREADS) as pool:
        return list(pool.map(fn, items))


class Issuer:
    """The bench's own OpenID-style issuer: an ES256 key, its JWKS over HTTP, and tokens for users."""

    def __init__(self):
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        self.jwt = jwt
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="bench", use="sig", alg="ES256")
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, subject):
        now = int(time.time())
        claims = {"iss": self.url, "sub": subject, "aud": "gatehouse-bench", "iat": now, "nbf": now,
                  "exp": now + 3 * 3600, "preferred_username": subject}
        return self.jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "bench"})

    def stop(self):
        self.server.shutdown()


def phone(i):
    return f"+1415{5_000_000 + i:07d}"


def prepare_manage_users(client, admin, count):
    """The service account `billing` and `count` users with phone numbers; returns Basic for billing."""
    password = "bench-" + secrets.token_urlsafe(18)
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    client.expect(201, "POST", "/admin/v1/users", headers, json.dumps(
        {"userName": "billing", "password": password, "scopes": ["manage.otp.verify"]}).encode())

    def create(i):
        client.expect(201, "POST", "/admin/v1/users", headers,
                      json.dumps({"userName": f"m{i}", "phone": phone(i)}).encode())

    parallel(create, range(count))
    return "Basic " + base64.b64encode(f"billing:{password}".encode()).decode()


def texted_codes(outbox, offset):
    """Codes texted since `offset` of the outbox, by number, and the new offset."""
    codes = {}
    with open(outbox) as f:
        f.seek(offset)
        for line in f:
            m = re.match(r"to=(\+\d+) body=.*?\b(\d{6})\b", line)
            if m:
                codes[m.group(1)] = m.group(2)
        return codes, f.tell()


def validate_lines(client, service, count, outbox, offset):
    """Texts every Manage user a fresh code; one validate/otp request line per user."""
    headers = {"Authorization": service, "Content-Type": "application/json"}

    def send(i):
        client.expect(200, "POST", "/manage/v2/user/send/otp", headers,
                      json.dumps({"userName": f"m{i}", "phoneNumber": phone(i)}).encode())

    parallel(send, range(count))
    codes, offset = texted_codes(outbox, offset)
    lines = []
    for i in range(count):
        code = codes.get(phone(i))
        if code is None:
            raise RuntimeError(f"no code was texted to {phone(i)}")
        body = json.dumps({"userName": f"m{i}", "phoneNumber": phone(i), "otp": code}, separators=(",", ":"))
        lines.append(f"{service}\t{body}")
    return lines, offset


def register_application(admin, admin_token):
    """An ApplicationToken: the Nexus family takes a Bearer token only together with one."""
    answer = admin.expect(201, "POST", "/admin/v1/applications",
                          {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
                          json.dumps({"name": "bench"}).encode())
    return json.loads(answer)["token"]


def enrol_users(client, issuer, app_token, count):
    """`count` users who signed in with the bench issuer's tokens and enrolled an authenticator app."""
    import pyotp

    def enrol(i):
        bearer = "Bearer " + issuer.token(f"v{i}")
        answer = client.expect(200, "POST", "/v1/me/mfa-enrollment?isInteractive=true",
                               {"Authorization": bearer, "ApplicationToken": app_token}, b"")
        ticket = "/" + json.loads(answer)["ticketUrl"].split("://", 1)[1].split("/", 1)[1]
        page = client.expect(200, "GET", ticket)
        found = re.search(rb'<code id="secret">([^<]+)</code>', page)
        if not found:
            raise RuntimeError("the enrolment page shows no secret")
        secret = re.sub(r"\s", "", found.group(1).decode())
        client.expect(200, "POST", "/v1/me/verify-enrollment-otp",
                      {"Authorization": bearer, "ApplicationToken": app_token,
                       "Content-Type": "application/json"},
                      json.dumps({"otp": pyotp.TOTP(secret).now()}).encode())
        return bearer, pyotp.TOTP(secret)

    return parallel(enrol, range(count))


def verify_lines(users):
    """One verify-otp request line per user, with the code of a time step none of them used yet."""
    # Every enrolment spent the code of the step it ran in: start at the next step boundary.
    boundary = (int(time.time()) // STEP_S + 1) * STEP_S
    time.sleep(max(0.0, boundary - time.time()) + 0.2)
    at = int(time.time())
    return [f"{bearer}\t{json.dumps({'otp': totp.at(at)}, separators=(',', ':'))}" for bearer, totp in users]


def run_wrk(services, tmp, port, path, lines, seconds, name, app_token=None):
    lines_file = os.path.join(tmp, f"{name}.lines")
    with open(lines_file, "w") as f:
        f.write("\n".join(lines) + "\n")
    script = os.path.join(tmp, "codes.lua")
    with open(script, "w") as f:
        f.write(LUA)
    argv = ["wrk", "-t1", f"-c{bench.CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            "-s", script, f"http://127.0.0.1:{port}/", "--", path, lines_file] + ([app_token] if app_token else [])
    loadgen, output = bench.run_loadgen(services, argv, seconds + 30)
    os.unlink(lines_file)
    counts = re.search(r"lua: ok=(\d+) bad=(\d+) spare=(\d+) exhausted=(\d+)", output)
    if not counts:
        raise RuntimeError(f"wrk printed no counts:\n{output[-2000:]}")
    ok, bad, spare, exhausted = (int(g) for g in counts.groups())
    result = bench.parse_wrk(output)
    result.update(ok=ok, bad=bad, spare=spare, exhausted=bool(exhausted))
    return loadgen, result


def measure(services, tmp, gh, path, lines, seconds, label, app_token=None):
    """A warm-up on the first share of `lines`, then a run of at most `seconds` on the rest, shortened
    so that the list (at the warm-up's rate) lasts. `gh` is the Gatehouse."""
    pgid = gh.pgid
    warm = max(1, int(len(lines) * WARMUP_SHARE))
    _, warmup = run_wrk(services, tmp, gh.port, path, lines[:warm], bench.WARMUP_S, "warmup",
                        app_token)
    rest = lines[warm:]
    rate = max(warmup["ok"] / bench.WARMUP_S, 1.0)
    planned = max(1, min(seconds, int(0.8 * len(rest) / rate)))
    before = bench.process_table()
    started = time.monotonic()
    loadgen, result = run_wrk(services, tmp, gh.port, path, rest, planned, "measured", app_token)
    wall = time.monotonic() - started
    after = bench.process_table()
    cpu = bench.cpu_delta(before, after, {pgid})
    others, busiest = bench.others_delta(before, after, {pgid, loadgen.pgid})
    result.update(
        seconds=planned,
        rps=result["ok"] / planned,
        cpu_us_per_req=cpu * 1e6 / max(result["requests"], 1),
        others_cpu_share=others / wall,
        busiest_other=f"{busiest[1]} {busiest[0] / wall:.1%}" if busiest[1] else "",
        noisy=others / wall > bench.NOISE_LIMIT,
    )
    result["clean"] = (not result["noisy"] and not result["exhausted"] and result["bad"] == 0
                       and result["socket_errors"] == 0 and result["spare"] == 0)
    return result


class Gatehouse:
    def __init__(self, binary, tmp, issuer):
        self.binary, self.tmp, self.issuer = binary, tmp, issuer
        self.admin_token = secrets.token_urlsafe(32)
        self.service = None

    def start(self, services):
        for attempt in range(3):
            self.port, self.admin_port = bench.free_port(), bench.free_port()
            config = bench.render("gatehouse-local.toml", os.path.join(self.tmp, "gatehouse-local.toml"),
                                  tmp=self.tmp, port=self.port, admin_port=self.admin_port,
                                  upstream_port=bench.free_port(), issuer=self.issuer.url,
                                  jwks_url=self.issuer.url + "/jwks.json")
            env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k != "RUST_LOG"}
            env.update(GATEHOUSE_ADMIN_TOKEN=self.admin_token,
                       GATEHOUSE_MASTER_KEY=base64.b64encode(os.urandom(32)).decode())
            self.service = services.start("gatehouse", [self.binary, "--config", config, "serve"], env=env)
            try:
                bench.wait_ready(self.service, f"http://127.0.0.1:{self.admin_port}/readyz")
                return
            except RuntimeError as e:
                if attempt == 2 or "Address already in use" not in str(e):
                    raise

    @property
    def pgid(self):
        return self.service.pgid

    @property
    def outbox(self):
        return os.path.join(self.tmp, "gatehouse-local-data", "sms-outbox.log")


def summary(runs, label, path):
    clean = [r for r in runs if r["clean"]]
    row = {"label": label, "path": path, "clean_runs": len(clean), "runs": len(runs)}
    if not clean:
        row["note"] = f"unreliable (0/{len(runs)} clean)"
        return row
    for field in ("rps", "p50_us", "p99_us", "cpu_us_per_req"):
        row[field] = statistics.median(r[field] for r in clean)
    row["note"] = "" if len(clean) == len(runs) else f"{len(clean)}/{len(runs)} clean"
    return row


def table(rows):
    out = ["| endpoint | req/s | p50 | p99 | CPU µs/req | note |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "rps" not in r:
            out.append(f"| `{r['path']}` | – | – | – | – | {r['note']} |")
            continue
        out.append(f"| `{r['path']}` | {r['rps']:,.0f} | {bench.fmt_ms(r['p50_us'])} | "
                   f"{bench.fmt_ms(r['p99_us'])} | {r['cpu_us_per_req']:.1f} | {r['note']} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=80000,
                        help="users prepared for each endpoint; each measured run spends one code of each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="longest measured run, in seconds")
    parser.add_argument("--binary", help="gatehouse binary to use as it is (default: target/release, rebuilt when stale)")
    parser.add_argument("--out", help="write the raw numbers to this JSON file")
    args = parser.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs two CPUs: cpu0 for gatehouse, cpu1 for the load generator")

    began = time.monotonic()
    bench.ensure_tools([])
    try:
        import cryptography  # noqa: F401
        import jwt  # noqa: F401
    except ImportError:
        log("installing pyjwt[crypto] (pip)")
        bench.quiet([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                     "--root-user-action=ignore", "pyjwt[crypto]"])
    binary = bench.ensure_gatehouse(args.binary)

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-local-")
    services = bench.Services(tmp)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    issuer = Issuer()
    validate_runs, verify_runs = [], []
    gh = Gatehouse(binary, tmp, issuer)
    try:
        gh.start(services)
        client = Setup(gh.port)
        admin = Setup(gh.admin_port)
        log(f"preparing {args.users} Manage users and {args.users} users with an authenticator app")
        service = prepare_manage_users(admin, gh.admin_token, args.users)
        app_token = register_application(admin, gh.admin_token)
        enrolled = enrol_users(client, issuer, app_token, args.users)
        log(f"  prepared in {time.monotonic() - began:.0f} s")

        def repeat_once(repeat, label, runs, make_lines, path, token=None):
            for attempt in range(bench.NOISE_RETRIES + 1):
                result = measure(services, tmp, gh, path, make_lines(), args.duration, label, token)
                if result["clean"] or attempt == bench.NOISE_RETRIES:
                    break
                log(f"  redo {label}: {describe(result)}")
                bench.wait_quiet({"gatehouse": gh.pgid})
            result.update(repeat=repeat, attempt=attempt)
            runs.append(result)
            log(f"  {repeat + 1}/{args.repeats} {label:<12} {result['rps']:>8.0f} req/s "
                f"{result['cpu_us_per_req']:6.1f} µs/req ({result['seconds']} s){describe(result, ' ')}")

        outbox = {"offset": 0}

        def texted():
            lines, outbox["offset"] = validate_lines(client, service, args.users, gh.outbox, outbox["offset"])
            return lines

        for repeat in range(args.repeats):
            repeat_once(repeat, "validate/otp", validate_runs, texted, "/manage/v2/user/validate/otp")
            repeat_once(repeat, "verify-otp", verify_runs, lambda: verify_lines(enrolled), "/v1/me/verify-otp",
                        app_token)
    except Exception:
        if gh.service is not None:
            log(f"gatehouse's log ends with:\n{gh.service.tail()}")
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        services.stop_all()
        issuer.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [summary(validate_runs, "validate/otp", "POST /manage/v2/user/validate/otp"),
            summary(verify_runs, "verify-otp", "POST /v1/me/verify-otp")]
    elapsed = time.monotonic() - began
    print(f"gatehouse's OTP endpoints, {platform.node()}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
          f"{args.repeats} repeat(s), each a {bench.WARMUP_S} s warm-up and a run of at most {args.duration} s; "
          f"gatehouse on cpu{bench.SERVER_CPU} (worker_threads = 1, sled store), wrk -t1 -c{bench.CONNECTIONS} "
          f"on cpu{bench.LOADGEN_CPU}.")
    print("Every request spends a different user's code and is answered 200 only after its write is durable. "
          "Figures are medians of clean runs (all 200, list not exhausted, other processes under "
          f"{bench.NOISE_LIMIT:.0%} of a core).")
    print()
    print(table(rows))
    print(f"\n({elapsed:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                "host": platform.node(), "users": args.users, "repeats": args.repeats,
                                "duration_s": args.duration, "gatehouse": binary},
                       "summary": rows, "runs": {"validate": validate_runs, "verify": verify_runs}}, f, indent=2)


def describe(result, prefix=""):
    why = []
    if result["bad"]:
        why.append(f"{result['bad']} answers not 200")
    if result["socket_errors"]:
        why.append(f"{result['socket_errors']} socket errors")
    if result["exhausted"] or result["spare"]:
        why.append("the list of codes ran out (use more --users)")
    if result["noisy"]:
        why.append(f"others used {result['others_cpu_share']:.1%} of a core ({result['busiest_other']})")
    return (prefix + "; ".join(why)) if why else ""


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started here has been stopped")
