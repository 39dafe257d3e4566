#!/usr/bin/env python3
"""Contract test: schemathesis against a live gatehouse, driven by openapi/openapi.json.

Starts target/debug/gatehouse (built when missing) on loopback ports chosen by the kernel, with a
temporary store, a bootstrap file, a small upstream application and a DNS server that answers the
domain verification records the test publishes (NXDOMAIN for everything else); seeds a user
(password, phone, email, organisation admin, file grant), a second user with a pending SMS
enrollment ticket, a Manage service account, an application and a domain;
obtains real credentials for every security scheme of the document (Basic, a Bearer access token
from a real TOTP enrollment, ApplicationToken, WsAccessKey, the admin token) and confirms an SMS
factor through the WS opt-in, so that every operation can reach its success path; then runs
schemathesis twice: the public listener's operations, then the admin listener's (last, because they
delete and reset users), with tests/contract/hooks.py (protobuf bodies, and the codes the success
paths need). Any failed check fails the run (exit status 1), and so does any warning schemathesis
reports (data the API mostly rejects, operations that mostly answer 429 or never get past 404,
answers it could not check against their schema). Every process started here is stopped on the way
out, also on error.

    python3 tests/contract/run.py [--max-examples N] [--seed N] [--binary PATH]
"""

import argparse
import base64
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCUMENT = os.path.join(ROOT, "openapi", "openapi.json")
HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks.py")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
PHASES = "examples,coverage,fuzzing,stateful"
# Operations served by the admin listener (their path items carry its `servers` entry).
ADMIN_PATHS = r"^/(admin/|healthz$|readyz$|metrics$|openapi\.json$)"
# Left out of the public run: sign-in at an OpenID Connect provider. This run configures no
# provider (one needs a real OpenID provider, which the integration tests start), so every id
# answers 404 and schemathesis would only report that it found no data; the answers' shapes and
# logic are checked by tests/it/oidc*.rs and tests/it/openapi.rs.
PUBLIC_EXCLUDED = r"^/(admin/|healthz$|readyz$|metrics$|openapi\.json$|auth/(login|callback|backchannel-logout)/)"

PASSWORD = "contract-Passw0rd!"
USER = "ada"                 # Basic and Bearer; organisation admin, file member
SERVICE = "manage-svc"       # the Manage family's service account
TARGET = "carol"             # the admin run reads, patches, resets and deletes this one
ENROLLING = "grace"          # holds a pending SMS enrollment ticket (the enrollment page's)
PHONE = "+15551230001"
ENROLLING_PHONE = "+15551230002"
ORGANIZATION = 7
FILE = 12
DOMAIN = "acme.example"
RECORD_NAME = "_gatehouse-challenge"


def log(message):
    print(f"contract: {message}", flush=True)


class Upstream(http.server.BaseHTTPRequestHandler):
    """The protected application: 200 to everything."""

    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"upstream\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = answer

    def log_message(self, *args):
        pass


class Dns(threading.Thread):
    """A DNS server that answers TXT queries for the names in the JSON file `records` (written by
    the hooks: `{name: [text, ...]}`) and every other query NXDOMAIN, so domain verification gets
    its answer at once instead of waiting for a resolver that is not there."""

    def __init__(self, records):
        super().__init__(daemon=True)
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def texts(self, name):
        try:
            with open(self.records) as f:
                return json.load(f).get(name.lower().rstrip("."), [])
        except (OSError, ValueError):
            return []

    def run(self):
        while True:
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                return
            if len(query) < 12:
                continue
            end = 12
            labels = []
            while end < len(query) and query[end] != 0:
                labels.append(query[end + 1:end + 1 + query[end]].decode(errors="replace"))
                end += query[end] + 1
            question = query[12:end + 5]
            qtype = struct.unpack(">H", query[end + 1:end + 3])[0] if len(query) >= end + 3 else 0
            texts = self.texts(".".join(labels)) if qtype == 16 else []
            answers = b""
            for text in texts:
                data = text.encode()
                rdata = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                                 for i in range(0, len(data), 255))
                answers += struct.pack(">HHHIH", 0xC00C, 16, 1, 0, len(rdata)) + rdata
            rcode = 0 if texts else 3
            flags = 0x8180 | rcode | (struct.unpack(">H", query[2:4])[0] & 0x0100)
            header = query[:2] + struct.pack(">HHHHH", flags, 1, len(texts), 0, 0)
            self.sock.sendto(header + question + answers, peer)

    def stop(self):
        self.sock.close()


def request(url, method="GET", body=None, headers=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    headers = dict(headers or {})
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def expect(what, status, answer, *wanted):
    if status not in wanted:
        raise RuntimeError(f"{what} answered {status}: {answer[:300]!r}")
    return answer


def toml_str(value):
    return json.dumps(value)


class Gatehouse:
    def __init__(self, binary, tmp, upstream_url, dns_port):
        self.tmp = tmp
        self.admin_token = secrets.token_urlsafe(32)
        self.app_token = secrets.token_urlsafe(32)
        bootstrap = os.path.join(tmp, "bootstrap.toml")
        with open(bootstrap, "w") as f:
            f.write(f"""
[[users]]
user_name = "{USER}"
password = {toml_str(PASSWORD)}
email = "ada@example.com"
phone = "{PHONE}"
first_name = "Ada"
last_name = "Lovelace"

[[users]]
user_name = "{SERVICE}"
password = {toml_str(PASSWORD)}
scopes = ["manage.otp.verify"]

[[users]]
user_name = "{TARGET}"
password = {toml_str(PASSWORD)}
email = "carol@example.com"

[[users]]
user_name = "{ENROLLING}"
password = {toml_str(PASSWORD)}
phone = "{ENROLLING_PHONE}"

[[applications]]
name = "contract"
token = {toml_str(self.app_token)}

[[organizations]]
id = {ORGANIZATION}
name = "Acme"
members = [{{ user_name = "{USER}", role = "admin" }}]

[[files]]
id = {FILE}
members = ["{USER}"]

[[domains]]
organization_id = {ORGANIZATION}
domain = "{DOMAIN}"
""")
        config = os.path.join(tmp, "gatehouse.toml")
        settings = f"""
[server]
environment = "development"
public_url = "http://localhost"
trusted_proxies = ["127.0.0.1/32"]
[listen]
https = ""
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
url = "{upstream_url}"
[[routes]]
path_prefix = "/public/"
access = "public"
[store]
path = {toml_str(os.path.join(tmp, "data"))}
[sms]
kind = "log"
[domains]
resolver = "127.0.0.1:{dns_port}"
record_name = "{RECORD_NAME}"
[bootstrap]
file = {toml_str(bootstrap)}
[log]
format = "json"
level = "info"
# Limits that would otherwise answer most of a run's requests with 429: the run sends far more
# codes, wrong codes and wrong passwords per minute than a person could. The defaults stay as
# they are; the hooks reach the success paths within these limits.
[auth]
failed_password_limit = 0
[mfa]
send_limit = 100
send_window = "1s"
[mfa.lockout]
max_failures = 100
window = "1s"
duration = "1s"
[apis.manage]
client_ip_limit = 0
"""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k != "RUST_LOG"}
        env.update(GATEHOUSE_ADMIN_TOKEN=self.admin_token,
                   GATEHOUSE_MASTER_KEY=base64.b64encode(os.urandom(32)).decode())
        with open(config, "w") as f:
            f.write(settings)
        self.log_path = os.path.join(tmp, "gatehouse.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "--config", config, "serve"], cwd=tmp, env=env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        self.http, self.admin = self.wait_listening()

    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gatehouse exited with {self.proc.returncode}:\n{self.tail()}")
            addrs = {}
            with open(self.log_path, "rb") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    fields = event.get("fields", event)
                    if fields.get("message") == "listening":
                        addrs[fields.get("listener")] = fields.get("addr")
            if "listen.http" in addrs and "listen.admin" in addrs:
                return f"http://{addrs['listen.http']}", f"http://{addrs['listen.admin']}"
            time.sleep(0.05)
        raise RuntimeError(f"gatehouse did not report its listeners within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines=40):
        with open(self.log_path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def admin_call(self, method, path, body=None):
        return request(self.admin + path, method, body,
                       headers={"Authorization": f"Bearer {self.admin_token}"})

    def credentials(self):
        """Real credentials for every security scheme of the document."""
        import pyotp

        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        answer = expect("mfa-enrollment", *request(
            self.http + "/v1/me/mfa-enrollment?isInteractive=true", "POST",
            headers={"Authorization": basic}), 200)
        ticket_path = "/" + json.loads(answer)["ticketUrl"].split("://", 1)[1].split("/", 1)[1]
        page = expect("the enrollment page", *request(self.http + ticket_path), 200)
        found = re.search(rb'<code id="secret">([^<]+)</code>', page)
        if not found:
            raise RuntimeError("the enrollment page shows no secret")
        secret = re.sub(r"\s", "", found.group(1).decode())
        answer = expect("verify-enrollment-otp", *request(
            self.http + "/v1/me/verify-enrollment-otp", "POST", {"otp": pyotp.TOTP(secret).now()},
            headers={"Authorization": basic}), 200)
        access_token = json.loads(answer)["accessToken"]

        # An SMS factor (mfa-challenge and verify-otp send codes to it), confirmed through the WS
        # opt-in with the code from the outbox.
        outbox = os.path.join(self.tmp, "data", "sms-outbox.log")
        since = os.path.getsize(outbox) if os.path.exists(outbox) else 0
        bearer = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        answer = expect("2fa-opt-in", *request(
            f"{self.http}/User/2fa-opt-in?FileId={FILE}", "POST", {"MobileNumber": PHONE}, headers=bearer), 200)
        provider_user_id = json.loads(answer)["ProviderUserId"]
        with open(outbox, "rb") as f:
            f.seek(since)
            code = re.search(rb"code is (\d+)", f.read()).group(1).decode()
        expect("verify-2fa-opt-in", *request(
            f"{self.http}/User/verify-2fa-opt-in?FileId={FILE}", "POST",
            {"ProviderUserId": provider_user_id, "Otp": code}, headers=bearer), 200)

        # The enrollment page's ticket: another user's, so that no factor added to the first one
        # voids it.
        answer = expect("the SMS enrollment ticket", *request(
            self.http + "/v1/me/mfa-enrollment?factor=sms&isInteractive=true", "POST",
            headers={"Authorization": "Basic " + base64.b64encode(f"{ENROLLING}:{PASSWORD}".encode()).decode()}),
            200)
        ticket = json.loads(answer)["ticketId"]

        answer = expect("creating the WsAccessKey", *self.admin_call(
            "POST", "/admin/v1/ws-keys", {"userName": USER, "fileId": FILE}), 201)
        ws_key = json.loads(answer)["key"]
        self.state = {
            "http": self.http, "user": USER, "password": PASSWORD, "service": SERVICE,
            "access_token": access_token, "app_token": self.app_token, "phone": PHONE,
            "file": FILE, "organization": ORGANIZATION, "domain": DOMAIN, "record_name": RECORD_NAME,
            "outbox": outbox, "dns_records": os.path.join(self.tmp, "dns.json"), "ticket": ticket,
            "admin": self.admin, "admin_token": self.admin_token, "target": TARGET,
        }
        return {
            "Bearer": {"bearer": access_token},
            "ApplicationToken": {"api_key": self.app_token},
            "Basic": {"username": USER, "password": PASSWORD},
            "basicAuth": {"username": SERVICE, "password": PASSWORD},
            "WsAccessKey": {"api_key": ws_key},
            "AdminToken": {"bearer": self.admin_token},
        }


def toml_table(name, values):
    lines = [f"[{name}]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_config(tmp, credentials, state):
    """schemathesis.toml: OpenAPI-aware auth for each scheme, the seeded ids where an operation
    only reaches its logic for them (the organisation the user administers, the file it may use, the
    enrollment ticket, the user the admin run works on), and every warning that says an operation's
    logic went untested made fatal."""
    parts = [toml_table(f"auth.openapi.{scheme}", values) for scheme, values in credentials.items()]
    parts.append(f"""
[warnings]
fail-on = true

[[operations]]
include-path-regex = "^/enroll/"
parameters = {{ ticketId = "{state['ticket']}" }}

[[operations]]
include-path-regex = "^/v1/organizations/"
parameters = {{ organizationId = {ORGANIZATION} }}

[[operations]]
include-path-regex = "^/User/"
parameters = {{ FileId = {FILE} }}

[[operations]]
include-path-regex = "^/admin/v1/users/"
parameters = {{ userName = "{TARGET}" }}

# The sign-in pages answer a form post only with this browser's CSRF cookie and token, and the
# session document and the passkeys page only with a session cookie: generated requests carry
# neither, so these operations are checked for their answers' shape here, and their logic in
# tests/it/signin*.rs and tests/it/passkeys.rs.
[[operations]]
include-path-regex = "^/auth/(login|step-up|logout|session|passkeys)$"
warnings = {{ fail-on = ["missing_test_data", "validation_mismatch", "missing_deserializer", "method_not_allowed", "unresolvable_reference"] }}
""")
    path = os.path.join(tmp, "schemathesis.toml")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def schemathesis(config, url, paths, args, report_dir, exclude=False):
    argv = ["schemathesis", "--config-file", config, "--no-color", "run", DOCUMENT, "--url", url,
            "--checks", args.checks, "--phases", PHASES, "--max-examples", str(args.max_examples),
            "--seed", str(args.seed), "--workers", str(args.workers), "--request-timeout", "10",
            "--generation-database", "none", "--report", "junit", "--report-dir", report_dir,
            "--exclude-path-regex" if exclude else "--include-path-regex", paths]
    log(" ".join(argv[1:]))
    env = dict(os.environ, SCHEMATHESIS_HOOKS="hooks",
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HOOKS), os.environ.get("PYTHONPATH")])),
               GATEHOUSE_CONTRACT_STATE=os.path.join(os.path.dirname(config), "state.json"))
    return subprocess.run(argv, cwd=os.path.dirname(config), env=env).returncode


def binary_path(explicit):
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "debug", "gatehouse")
    if not os.path.exists(path):
        log("building target/debug/gatehouse")
        subprocess.run(["cargo", "build", "--locked", "--bin", "gatehouse"], cwd=ROOT, check=True)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", help="gatehouse binary (default: target/debug/gatehouse, built when missing)")
    parser.add_argument("--max-examples", type=int, default=50, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--checks", default=CHECKS, help=f"schemathesis checks (default: {CHECKS})")
    # One worker: Hypothesis describes strategies with `ast`, which is not safe across the threads
    # of several workers on Python 3.11 (a sporadic "AST constructor recursion depth mismatch").
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, reports)")
    args = parser.parse_args()
    try:
        import google.protobuf  # noqa: F401 (the hooks' protobuf bodies)
        import pyotp  # noqa: F401
    except ImportError:
        sys.exit("contract: pyotp or protobuf is not installed (python3 -m pip install schemathesis pyotp protobuf)")
    if shutil.which("schemathesis") is None:
        sys.exit("contract: schemathesis is not installed (python3 -m pip install schemathesis pyotp protobuf)")
    binary = os.path.abspath(binary_path(args.binary))

    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="gatehouse-contract-")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    dns = Dns(os.path.join(tmp, "dns.json"))
    dns.start()
    gatehouse = None
    failed = []
    try:
        gatehouse = Gatehouse(binary, tmp, f"http://127.0.0.1:{upstream.server_port}", dns.port)
        config = write_config(tmp, gatehouse.credentials(), gatehouse.state)
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(gatehouse.state, f)
        log(f"gatehouse at {gatehouse.http} (admin {gatehouse.admin}), work directory {tmp}")
        if schemathesis(config, gatehouse.http, PUBLIC_EXCLUDED, args, os.path.join(tmp, "public"), exclude=True):
            failed.append("public listener")
        if schemathesis(config, gatehouse.admin, ADMIN_PATHS, args, os.path.join(tmp, "admin")):
            failed.append("admin listener")
        if gatehouse.proc.poll() is not None:
            failed.append(f"gatehouse exited with {gatehouse.proc.returncode}")
    except BaseException:
        if gatehouse is not None:
            print(gatehouse.tail(), file=sys.stderr)
        raise
    finally:
        if gatehouse is not None:
            gatehouse.stop()
        upstream.shutdown()
        upstream.server_close()
        dns.stop()
        if failed and gatehouse is not None:
            print("--- gatehouse log (last lines) ---\n" + gatehouse.tail(), file=sys.stderr)
        if args.keep or failed:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{'FAILED: ' + ', '.join(failed) if failed else 'passed'} in {time.monotonic() - started:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
