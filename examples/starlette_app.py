"""llmguard mounted under /llm of a plain Starlette app.

    LLMGUARD_DEMO=1 uvicorn examples.starlette_app:app   # offline: a fake provider, no key
    OPENAI_API_KEY=sk-... JWT_SECRET=... uvicorn examples.starlette_app:app

The browser uses POST /llm/api/token and POST /llm/api/chat. Served under a
prefix by a proxy that strips it, add `--root-path /app` (the browser then uses
/app/llm/...).
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from llmguard import create_app

llm = create_app()  # settings from the environment: OPENAI_API_KEY, JWT_SECRET, ALLOWED_ORIGIN, ...


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("your own page")


app = Starlette(
    routes=[Route("/", home), Mount("/llm", app=llm)],
    # Starlette runs no lifespan of a mounted app: this one is llmguard's.
    lifespan=llm.router.lifespan_context,
)
