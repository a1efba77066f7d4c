"""llmguard mounted under /llm of a Litestar app.

    LLMGUARD_DEMO=1 uvicorn examples.litestar_app:app   # offline: a fake provider, no key
    LLMGUARD_DEMO=1 litestar --app examples.litestar_app:app run
    OPENAI_API_KEY=sk-... JWT_SECRET=... uvicorn examples.litestar_app:app

The browser uses POST /llm/api/token and POST /llm/api/chat. Served under a
prefix by a proxy that strips it, add `--root-path /app` (the browser then uses
/app/llm/...).
"""

from litestar import Litestar, asgi, get
from starlette.types import Receive, Scope, Send

from llmguard import create_app

llm = create_app()  # settings from the environment: OPENAI_API_KEY, JWT_SECRET, ALLOWED_ORIGIN, ...


# Litestar hands a mounted app the path after the mount's prefix ("/api/token"); llmguard, a
# Starlette app, routes on the scope the ASGI spec describes: the prefix ends root_path, and path
# is the whole path. is_static=True keeps the path as it came (a plain mount appends a slash).
@asgi("/llm", is_mount=True, is_static=True, copy_scope=True)
async def llmguard(scope: Scope, receive: Receive, send: Send) -> None:
    scope["root_path"] += "/llm"
    scope["path"] = scope["root_path"] + scope["path"]
    await llm(scope, receive, send)


@get("/")
async def home() -> dict[str, str]:
    return {"hello": "from your own Litestar route"}


# Litestar runs no lifespan of a mounted app: llmguard's goes with the app's own.
app = Litestar(route_handlers=[home, llmguard], lifespan=[llm.router.lifespan_context])
