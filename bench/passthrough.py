"""The benchmarks' floor for a Python proxy: Starlette + one pooled httpx client, no guards.

    python bench/passthrough.py --port 9001 --upstream http://127.0.0.1:9000/v1

Forwards ``POST /v1/chat/completions`` as is and streams the answer back, the
least any Python proxy in front of a provider does; ``--transport aiohttp`` puts
aiohttp's connection pool under httpx (httpx-aiohttp), as llmguard[speed] does.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route


def make_app(upstream: str, transport: str = "httpx") -> Starlette:
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=100)
    pool = None
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        pool = AiohttpTransport(limits=limits, trust_env=False)
    client = httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10), limits=limits, transport=pool)

    async def forward(request: Request) -> StreamingResponse:
        body = await request.body()
        outgoing = client.build_request(
            "POST", f"{upstream}/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        response = await client.send(outgoing, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            media_type=response.headers.get("content-type"),
            background=BackgroundTask(response.aclose),
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/v1/chat/completions", forward, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--transport", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    app = make_app(args.upstream, args.transport)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
