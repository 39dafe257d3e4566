"""A real gRPC application for the integration tests: grpcio over h2c on a free loopback port.

Services `gatehouse.test.Probe` and `gatehouse.test.Ops` (the same methods under two names, so a
route rule can treat them differently); messages are JSON documents (no protoc, no generated code):
  Who     (unary)            replies {"metadata": {name: value}}: the invocation metadata it saw,
                             after {"delay": seconds} if asked.
  Fail    (unary)            {"code": "NOT_FOUND", "message": "..."} -> ends the call with that
                             status and message, plus the trailing metadata x-probe-trailer: kept.
  Count   (server streaming) {"n": N, "delay": seconds} -> yields {"i": 0} .. {"i": N-1}, one every
                             `delay` seconds; N = 0 streams until the call is cancelled.
Prints its port on stdout once it serves, then "call <Method>" as each call starts and
"count ended completed|cancelled" as each Count call ends.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICES = ("gatehouse.test.Probe", "gatehouse.test.Ops")


def decode(data):
    return json.loads(data.decode()) if data else {}


def encode(doc):
    return json.dumps(doc).encode()


def who(request, context):
    print("call Who", flush=True)
    time.sleep(float(request.get("delay", 0)))
    seen = {}
    for item in context.invocation_metadata():
        if not item.key.endswith("-bin"):
            seen[item.key] = item.value
    return {"metadata": seen}


def fail(request, context):
    print("call Fail", flush=True)
    code = getattr(grpc.StatusCode, request.get("code", "NOT_FOUND"))
    context.set_trailing_metadata((("x-probe-trailer", "kept"),))
    context.abort(code, request.get("message", ""))


def count(request, context):
    print("call Count", flush=True)
    n = int(request.get("n", 3))
    delay = float(request.get("delay", 0))
    ended = threading.Event()
    context.add_callback(ended.set)
    i = 0
    try:
        while n == 0 or i < n:
            if i and delay and ended.wait(delay):
                break
            if not context.is_active():
                break
            yield {"i": i}
            i += 1
    finally:
        how = "cancelled" if not context.is_active() and (n == 0 or i < n) else "completed"
        print(f"count ended {how}", flush=True)


def main():
    handlers = {
        "Who": grpc.unary_unary_rpc_method_handler(
            who, request_deserializer=decode, response_serializer=encode
        ),
        "Fail": grpc.unary_unary_rpc_method_handler(
            fail, request_deserializer=decode, response_serializer=encode
        ),
        "Count": grpc.unary_stream_rpc_method_handler(
            count, request_deserializer=decode, response_serializer=encode
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(name, handlers) for name in SERVICES)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Ends with the test: stdin closes when the test process drops its end.
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
