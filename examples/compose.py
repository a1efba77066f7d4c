"""The pieces composed by hand: your own routes, your own user check, llmguard's guards.

    OPENAI_API_KEY=sk-... JWT_SECRET=... uvicorn examples.compose:app

A signed-in user (here: any request with an `x-user` header, standing in for
your session check) gets a token whose `sub` is their id, so budgets follow the
user instead of the IP.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from llmguard import ChatEndpoint, JWTAuth, OriginFilter, TokenEndpoint, Unauthorized

SECRET = os.environ["JWT_SECRET"]
ORIGINS = ["http://localhost:5173"]


def authenticate(request: Request) -> dict[str, str]:
    user = request.headers.get("x-user")  # replace with your session or cookie check
    if not user:
        raise Unauthorized("Sign in first.")
    return {"sub": user}


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


app = Starlette(
    routes=[
        Route(
            "/api/token",
            OriginFilter(TokenEndpoint(secret=SECRET, authenticate=authenticate), allow_origins=ORIGINS),
        ),
        Route("/api/chat", OriginFilter(JWTAuth(chat, secret=SECRET), allow_origins=ORIGINS)),
    ],
    lifespan=lifespan,
)
