#!/usr/bin/python3
"""WebSocket echo backend for wsgate's integration tests.

Uses the websockets library's legacy API (Debian's python3-websockets 10.4):
listens on 127.0.0.1 on a port the kernel picks, prints the port on its own
line, then echoes every message with its type. When a connection ends it
prints one JSON line: the path, the negotiated extensions and the close
code and reason the client sent. It runs until it is killed.
"""

import asyncio
import json

import websockets
from websockets.server import serve


async def echo(ws):
    try:
        async for msg in ws:
            await ws.send(msg)
    except websockets.exceptions.ConnectionClosed:
        pass  # a close code other than 1000/1001 ends the loop this way
    await ws.wait_closed()
    print(json.dumps({
        "path": ws.path,
        "request_extensions": ws.request_headers.get("Sec-WebSocket-Extensions", ""),
        "extensions": [e.name for e in ws.extensions],
        "close_code": ws.close_code,
        "close_reason": ws.close_reason,
    }), flush=True)


async def main():
    async with serve(echo, "127.0.0.1", 0, max_size=1 << 21) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()  # until killed


if __name__ == "__main__":
    asyncio.run(main())
