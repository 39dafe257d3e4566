"""A real streaming HTTP/1.1 application (aiohttp) for the integration tests, on a free loopback port.

Paths are matched on their last segment, so any route prefix works (/public/events, /private/events):
  GET  .../events        Server-sent events: event 1 at once, then each further event (2, 3) only
                         after a call of /next; the stream ends after event 3.
  GET  .../ticks         Server-sent events: one every 0.2 s until the client goes away.
  GET  /next             Lets the pending /events stream write its next event.
  POST .../upload        Reads the body as it arrives, keeps none of it: {"bytes": n}.
  GET  .../download?bytes=N
                         N bytes (the letter "x"), generated on the fly in 64 KiB writes, each
                         waiting until the connection can take it.
  GET  /written          {"bytes": n}: what the current or last download has handed to the socket.
  GET  /streams          {"open": n, "ended": [reasons]}: SSE streams now open, and how each ended.
Prints its port on stdout once it serves.
"""

import asyncio
import json
import socket
import sys

from aiohttp import web

CHUNK = b"x" * 65536


class State:
    def __init__(self):
        self.next = asyncio.Queue()
        self.written = 0
        self.open = 0
        self.ended = []


STATE = State()


def sse_response():
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    response.enable_chunked_encoding()
    return response


async def events(request):
    response = sse_response()
    await response.prepare(request)
    STATE.open += 1
    how = "client"
    try:
        for i in (1, 2, 3):
            if i > 1:
                await STATE.next.get()
            await response.write(f"id: {i}\ndata: event {i}\n\n".encode())
        await response.write_eof()
        how = "completed"
    finally:
        STATE.open -= 1
        STATE.ended.append(how)
    return response


async def ticks(request):
    response = sse_response()
    await response.prepare(request)
    STATE.open += 1
    try:
        i = 0
        while True:
            await response.write(f"id: {i}\ndata: tick {i}\n\n".encode())
            i += 1
            await asyncio.sleep(0.2)
    except ConnectionResetError:
        STATE.ended.append("client")
    finally:
        STATE.open -= 1
    return response


async def next_event(request):
    STATE.next.put_nowait(None)
    return web.json_response({"ok": True})


async def upload(request):
    count = 0
    async for chunk in request.content.iter_any():
        count += len(chunk)
    return web.json_response({"bytes": count})


async def download(request):
    size = int(request.query["bytes"])
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    STATE.written = 0
    left = size
    while left > 0:
        piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await response.write(piece)
        left -= len(piece)
        STATE.written += len(piece)
    await response.write_eof()
    return response


async def written(request):
    return web.json_response({"bytes": STATE.written})


async def streams(request):
    return web.json_response({"open": STATE.open, "ended": STATE.ended})


ROUTES = {
    ("GET", "events"): events,
    ("GET", "ticks"): ticks,
    ("GET", "next"): next_event,
    ("POST", "upload"): upload,
    ("GET", "download"): download,
    ("GET", "written"): written,
    ("GET", "streams"): streams,
}


async def dispatch(request):
    handler = ROUTES.get((request.method, request.path.rstrip("/").rsplit("/", 1)[-1]))
    if handler is None:
        return web.json_response({"path": request.path}, status=404)
    return await handler(request)


async def main():
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    print(sock.getsockname()[1], flush=True)
    # Ends with the test: stdin closes when the test process goes away.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
