#!/usr/bin/python3
"""WebSocket client for wsgate's integration tests.

Usage: py_client.py ws://HOST:PORT/PATH

Connects with the websockets library's defaults (legacy API of Debian's
python3-websockets 10.4), which offer permessage-deflate; echoes text and
binary messages up to 100 KB; closes with 4002 "bye"; prints one JSON
object with what it saw. Exits 0 whenever it could print a result.
"""

import asyncio
import json
import os
import sys

from websockets.client import connect


def messages():
    yield "hello wsgate"
    yield "gr\u00fc\u00dfe \u2713 \U0001F600"
    yield "compressible " * 7700  # ~100 KB of text that deflates well
    yield bytes(range(256))
    yield os.urandom(100_000)  # 100 KB that does not compress


async def run(url):
    result = {"echoed": 0, "mismatches": []}
    async with connect(url, max_size=1 << 21, open_timeout=10, close_timeout=10) as ws:
        result["extensions_header"] = ws.response_headers.get("Sec-WebSocket-Extensions", "")
        result["extensions"] = [e.name for e in ws.extensions]
        for msg in messages():
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got == msg:
                result["echoed"] += 1
            else:
                result["mismatches"].append(
                    "sent %s of %d, got %s of %d" % (type(msg).__name__, len(msg), type(got).__name__, len(got)))
        await ws.close(code=4002, reason="bye")
        result["close_code"] = ws.close_code
        result["close_reason"] = ws.close_reason
    return result


def main():
    try:
        result = asyncio.run(asyncio.wait_for(run(sys.argv[1]), 60))
    except Exception as e:  # report, so the Go test shows what went wrong
        result = {"error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
