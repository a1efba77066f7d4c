"""The pieces composed by hand: your own routes, your own user check, llmguard's guards.

    OPENAI_API_KEY=sk-... JWT_SECRET=... uvicorn examples.compose:app

A signed-in user (here: any request with an `x-user` header, standing in for
your session check) gets a token whose `sub` is their id and whose `quota` is
their daily tokens, so the budget follows the user instead of the IP.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from llmguard import (
    ChatEndpoint,
    ClientIP,
    IPRateLimit,
    JWTAuth,
    OriginFilter,
    Storage,
    TokenBudget,
    TokenEndpoint,
    Unauthorized,
)

SECRET = os.environ["JWT_SECRET"]
ORIGINS = ["http://localhost:5173"]
# One storage for every count; redis://... shares them between processes.
STORAGE = Storage(os.environ.get("STORAGE_URL", "memory://"))


def authenticate(request: Request) -> dict[str, str | int]:
    user = request.headers.get("x-user")  # replace with your session or cookie check
    if not user:
        raise Unauthorized("Sign in first.")
    return {"sub": user, "quota": 50_000}  # this user's tokens per day


chat = ChatEndpoint(
    api_key=os.environ["OPENAI_API_KEY"],
    base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    system_prompt="You are the assistant of example.com. Answer briefly.",
    max_tokens=500,
)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await chat.aclose()  # the pooled provider connections


token_route = OriginFilter(
    IPRateLimit(
        TokenEndpoint(secret=SECRET, authenticate=authenticate), limit="10/minute", name="token", storage=STORAGE
    ),
    allow_origins=ORIGINS,
)
chat_route = OriginFilter(
    IPRateLimit(
        JWTAuth(TokenBudget(chat, storage=STORAGE, tokens_per_client="20000/day"), secret=SECRET),
        limit="30/minute",
        name="chat",
        storage=STORAGE,
    ),
    allow_origins=ORIGINS,
)
# Behind a reverse proxy, name it: every guard then sees the real client, never a header a client wrote.
PROXIES = [proxy for proxy in os.environ.get("TRUSTED_PROXIES", "").split(",") if proxy]
app = Starlette(
    routes=[Route("/api/token", token_route), Route("/api/chat", chat_route)],
    middleware=[Middleware(ClientIP, trusted_proxies=PROXIES)],  # outermost: the client, resolved once
    lifespan=lifespan,
)
