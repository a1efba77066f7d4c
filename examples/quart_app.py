"""llmguard under /llm of a Quart app.

    LLMGUARD_DEMO=1 uvicorn examples.quart_app:app   # offline: a fake provider, no key
    LLMGUARD_DEMO=1 quart --app examples.quart_app run
    OPENAI_API_KEY=sk-... JWT_SECRET=... hypercorn examples.quart_app:app

The browser uses POST /llm/api/token and POST /llm/api/chat. Served under a
prefix by a proxy that strips it, add `--root-path /app` (the browser then uses
/app/llm/...).
"""

from quart import Quart

from llmguard import PrefixMount, create_app

llm = create_app()  # settings from the environment: OPENAI_API_KEY, JWT_SECRET, ALLOWED_ORIGIN, ...

app = Quart(__name__)


@app.get("/")
async def home() -> dict[str, str]:
    return {"hello": "from your own Quart route"}


# Quart has no mount. Wrapping app.asgi_app (Quart's place for ASGI middleware, so that `app`
# stays a Quart app) sends /llm/... to llmguard and the rest to Quart, and runs llmguard's
# lifespan before Quart's own (before_serving, while_serving...).
app.asgi_app = PrefixMount(app.asgi_app, prefix="/llm", mounted=llm)
