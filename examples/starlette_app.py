"""llmguard mounted under /llm of a plain Starlette app.

OPENAI_API_KEY=sk-... JWT_SECRET=... uvicorn examples.starlette_app:app
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from llmguard import create_app

llm = create_app()


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("your own page")


app = Starlette(
    routes=[Route("/", home), Mount("/llm", app=llm)],
    lifespan=llm.router.lifespan_context,
)
