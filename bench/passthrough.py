"""The floor: a bare pass-through proxy with no capture, to tell capture cost from HTTP-stack cost.

A raw ASGI app served by uvicorn exactly as ``prysmai proxy`` is served (uvloop and httptools
when installed, no access log), forwarding ``.../chat/completions`` to the upstream with one
pooled HTTP client, streams relayed chunk by chunk. Nothing is parsed, checked or recorded.
``--client`` picks the upstream client: ``httpx`` (what the capture proxy uses) or ``aiohttp``
(if installed), so the table shows what the proxy's HTTP stack costs before capture adds to it.

    python bench/passthrough.py --port 8001 --upstream http://127.0.0.1:8000/v1 --client httpx
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]

_HOP = {b"host", b"content-length", b"connection", b"authorization", b"accept-encoding", b"transfer-encoding"}


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


class PassThrough:
    def __init__(self, upstream: str, client: str, upstream_key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.kind = client
        self.auth = f"Bearer {upstream_key}"
        self.client: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.endswith("/chat/completions"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await _read_body(receive)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k not in _HOP}
        headers["authorization"] = self.auth
        url = self.upstream + "/chat/completions"
        if self.kind == "aiohttp":
            await self._aiohttp(url, body, headers, send)
        else:
            await self._httpx(url, body, headers, send)

    async def _httpx(self, url: str, body: bytes, headers: dict[str, str], send: Send) -> None:
        request = self.client.build_request("POST", url, content=body, headers=headers)
        response = await self.client.send(request, stream=True)
        try:
            ctype = response.headers.get("content-type", "")
            out = [(b"content-type", ctype.encode("latin-1"))]
            if ctype.startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": response.status_code, "headers": out})
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await response.aread()
            out.append((b"content-length", str(len(data)).encode()))
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            await send({"type": "http.response.body", "body": data})
        finally:
            await response.aclose()

    async def _aiohttp(self, url: str, body: bytes, headers: dict[str, str], send: Send) -> None:
        async with self.client.post(url, data=body, headers=headers) as response:
            ctype = response.headers.get("content-type", "")
            out = [(b"content-type", ctype.encode("latin-1"))]
            if ctype.startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await response.read()
            out.append((b"content-length", str(len(data)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.kind == "aiohttp":
                    import aiohttp

                    self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
                else:
                    import httpx

                    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
                    self.client = httpx.AsyncClient(limits=limits, timeout=600.0)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await (self.client.close() if self.kind == "aiohttp" else self.client.aclose())
                await send({"type": "lifespan.shutdown.complete"})
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A bare pass-through proxy: the floor under capture.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL ending in /v1")
    parser.add_argument("--upstream-key", default="sk-upstream-bench")
    parser.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args(argv)
    app = PassThrough(args.upstream, args.client, args.upstream_key)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        backlog=2048,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
