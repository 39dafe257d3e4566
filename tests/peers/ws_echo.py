"""A WebSocket echo application for the tests, on Python's `websockets` (tests/run.sh installs it).

    python3 ws_echo.py

Listens on a free loopback port and prints one JSON line {"port": <port>} when ready; exits when
its standard input closes (or on SIGTERM).

- A WebSocket handshake on any path is accepted. The first message the client gets is one JSON
  text message describing the handshake request as received: {"path": "...", "headers": [[name,
  value], ...]} (names lower-cased, in order, repeated headers kept), so that a test can see
  what gatehouse forwarded (identity headers, X-Forwarded-*, no Authorization or Cookie). Then
  every message is echoed back as it came (text as text, binary as binary).
- Any other request (a plain GET) is answered 200 with an HTML page whose script opens a
  WebSocket to `socket` beside the page's own path, on its own origin, shows the first message
  in #handshake, sends one message, shows the echo in #echo, and records the socket's state in
  #state and each close event in #events: what a browser test drives.
- Each event is printed on standard output as one JSON line: {"event": "page" | "open" |
  "close", "path": "..."}, so a test can tell what reached the application and when the
  application saw a tunnel end.

Keep-alive pings are off: the tests measure idle time and bytes, and a ping would be traffic.
"""

import asyncio
import json
import os
import sys
import threading

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Echo</title></head>
<body>
<main>
<h1>Echo</h1>
<p>State: <span id="state">connecting</span></p>
<p>Echo: <span id="echo"></span></p>
<pre id="handshake"></pre>
<ul id="events"></ul>
</main>
<script>
const socket = new WebSocket(
  (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
  location.pathname.replace(/[^/]*$/, "socket"));
const state = document.getElementById("state");
const events = document.getElementById("events");
let first = true;
socket.onopen = () => { state.textContent = "open"; socket.send("hello from the page"); };
socket.onmessage = (message) => {
  // The first message describes the handshake; the echo follows.
  if (first) {
    first = false;
    document.getElementById("handshake").textContent = message.data;
    return;
  }
  document.getElementById("echo").textContent = message.data;
};
socket.onerror = () => {
  const item = document.createElement("li");
  item.textContent = "error";
  events.appendChild(item);
};
socket.onclose = (close) => {
  state.textContent = "closed";
  const item = document.createElement("li");
  item.className = "close";
  item.textContent = "close " + close.code;
  events.appendChild(item);
};
</script>
</body>
</html>
"""


def report(event, path):
    print(json.dumps({"event": event, "path": path}), flush=True)


def page(connection, request):
    upgrade = request.headers.get("Upgrade", "")
    if upgrade.lower() == "websocket":
        return None
    report("page", request.path)
    response = connection.respond(200, PAGE)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    return response


async def echo(connection):
    request = connection.request
    report("open", request.path)
    try:
        headers = [[name.lower(), value] for name, value in request.headers.raw_items()]
        await connection.send(json.dumps({"path": request.path, "headers": headers}))
        async for message in connection:
            await connection.send(message)
    except ConnectionClosed:
        # Gatehouse ends a tunnel by closing the connection, without a close frame.
        pass
    finally:
        report("close", request.path)


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


async def main():
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    async with serve(
        echo, "127.0.0.1", 0, process_request=page, ping_interval=None, max_size=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
