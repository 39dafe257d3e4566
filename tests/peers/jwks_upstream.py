"""An upstream that checks every request's X-Auth-Assertion against gatehouse's JWKS with PyJWT's
JWKS client (`jwt.PyJWKClient`), as an application behind gatehouse would, on a free loopback port.

The JWK Set is fetched from the URL given to POST /configure and cached for `lifespan` seconds; an
assertion whose `kid` the cached set does not hold is counted as unknown (a real application
would have refused it, or had to fetch the set again at once).

  POST /configure?jwks=URL&audience=AUD&lifespan=S   (called directly, not through gatehouse)
  GET  /stats      {"verified": n, "unknown": [kids], "failed": [errors], "kids": [kids seen]}
  anything else    checks the assertion, answers 200 {"sub": ..., "kid": ...} or 401
Prints its port on stdout once it serves; ends when its stdin closes.
"""

import json
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

LOCK = threading.Lock()
STATE = {"client": None, "audience": None, "verified": 0, "unknown": [], "failed": [], "kids": []}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/configure":
            query = dict(urllib.parse.parse_qsl(url.query))
            with LOCK:
                STATE["client"] = jwt.PyJWKClient(
                    query["jwks"], cache_jwk_set=True, lifespan=float(query["lifespan"])
                )
                STATE["audience"] = query["audience"]
            self.answer(200, {})
        else:
            self.check()

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path == "/stats":
            with LOCK:
                self.answer(200, {k: STATE[k] for k in ("verified", "unknown", "failed", "kids")})
        else:
            self.check()

    def check(self):
        assertion = self.headers.get("x-auth-assertion")
        client = STATE["client"]
        if not assertion or client is None:
            self.answer(401, {"error": "no assertion"})
            return
        try:
            kid = jwt.get_unverified_header(assertion).get("kid")
            # The cached set, fetched again only once `lifespan` has passed.
            keys = {k.key_id: k for k in client.get_jwk_set().keys}
            if kid not in keys:
                with LOCK:
                    STATE["unknown"].append(kid)
                self.answer(401, {"error": f"unknown kid {kid}"})
                return
            claims = jwt.decode(
                assertion, keys[kid].key, algorithms=["EdDSA"], audience=STATE["audience"]
            )
        except Exception as e:  # noqa: BLE001 - every failure is reported to the test
            with LOCK:
                STATE["failed"].append(repr(e))
            self.answer(401, {"error": repr(e)})
            return
        with LOCK:
            STATE["verified"] += 1
            if kid not in STATE["kids"]:
                STATE["kids"].append(kid)
        self.answer(200, {"sub": claims["sub"], "kid": kid})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
