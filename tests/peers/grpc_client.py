"""A real gRPC client (grpcio) for the integration tests: calls one method of grpc_upstream.py.

    grpc_client.py TARGET METHOD REQUEST_JSON [--service NAME] [--tls ROOT_PEM]
                   [--metadata NAME=VALUE]...

TARGET is host:port; without --tls the channel is insecure (h2c, prior knowledge), with it TLS
trusting only ROOT_PEM and expecting the certificate of "localhost". Prints one JSON line per
message received ({"message": ...}) as it arrives, then one last line:
{"code": "OK", "details": ..., "messages": [...], "initial_metadata": {...}, "trailing_metadata": {...}}.
"""

import argparse
import json
import sys

import grpc

STREAMING = {"Count"}


def as_dict(metadata):
    return {item.key: item.value for item in metadata or () if not item.key.endswith("-bin")}


def emit(doc):
    print(json.dumps(doc), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("method")
    parser.add_argument("request")
    parser.add_argument("--service", default="gatehouse.test.Probe")
    parser.add_argument("--tls")
    parser.add_argument("--metadata", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    options = [("grpc.enable_http_proxy", 0)]
    if args.tls:
        with open(args.tls, "rb") as pem:
            credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
        options.append(("grpc.ssl_target_name_override", "localhost"))
        channel = grpc.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.target, options=options)
    metadata = [tuple(item.split("=", 1)) for item in args.metadata]
    request = args.request.encode()
    path = f"/{args.service}/{args.method}"
    identity = lambda data: data  # noqa: E731 - messages stay bytes here
    messages = []
    try:
        if args.method in STREAMING:
            call = channel.unary_stream(
                path, request_serializer=identity, response_deserializer=identity
            )(request, metadata=metadata, timeout=args.timeout)
            for data in call:
                message = json.loads(data)
                messages.append(message)
                emit({"message": message})
        else:
            data, call = channel.unary_unary(
                path, request_serializer=identity, response_deserializer=identity
            ).with_call(request, metadata=metadata, timeout=args.timeout)
            messages.append(json.loads(data))
    except grpc.RpcError as error:
        call = error
    emit(
        {
            "code": call.code().name,
            "details": call.details(),
            "messages": messages,
            "initial_metadata": as_dict(call.initial_metadata()),
            "trailing_metadata": as_dict(call.trailing_metadata()),
        }
    )
    channel.close()


if __name__ == "__main__":
    sys.exit(main())
