"""A fast fake OpenAI-compatible provider for the benchmarks: plain ASGI, canned bytes.

    python bench/fake_provider.py --port 9000 [--chunks 20] [--delay-ms 10]

``POST .../chat/completions`` answers a canned ``chat.completion``, or, with
``"stream": true`` in the body, SSE deltas, a finish chunk, a usage chunk and
``[DONE]``. The request says how: as many deltas as its ``max_tokens`` (or
``--chunks``), ``seed`` milliseconds apart (or ``--delay-ms``), since both pass
through every proxy measured. Every streamed chunk carries ``"ts"``: the
wall-clock nanoseconds it was sent, so a client can measure how long each event
took to reach it through a proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4.1-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello from the bench."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }
).encode()
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION)).encode())]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def chunk(choices: str, usage: str = "null") -> bytes:
    head = '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"gpt-4.1-mini",'
    return f'data: {head}"choices":{choices},"usage":{usage},"ts":{time.time_ns()}}}\n\n'.encode()


def make_app(chunks: int, delay: float):  # type: ignore[no-untyped-def]
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        compact = body.replace(b" ", b"")
        if b'"stream":true' not in compact:
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": COMPLETION})
            return
        request = json.loads(body)
        count = int(request.get("max_completion_tokens") or request.get("max_tokens") or chunks)
        pause = float(request["seed"]) / 1000 if "seed" in request else delay
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        opening = chunk('[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]')
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        for index in range(count):
            if pause:
                await asyncio.sleep(pause)
            delta = json.dumps({"index": 0, "delta": {"content": f"w{index} "}, "finish_reason": None})
            await send({"type": "http.response.body", "body": chunk(f"[{delta}]"), "more_body": True})
        tail = chunk('[{"index":0,"delta":{},"finish_reason":"stop"}]')
        tail += chunk("[]", f'{{"prompt_tokens":9,"completion_tokens":{count},"total_tokens":{9 + count}}}')
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=10)
    args = parser.parse_args()
    app = make_app(args.chunks, args.delay_ms / 1000)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
