"""llmguard mounted under /llm of a FastAPI app.

    LLMGUARD_DEMO=1 uvicorn examples.fastapi_app:app   # offline: a fake provider, no key
    OPENAI_API_KEY=sk-... JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(48))') \
    ALLOWED_ORIGIN=http://localhost:5173 uvicorn examples.fastapi_app:app

The browser then uses POST /llm/api/token and POST /llm/api/chat; your own
routes are untouched by llmguard's guards. Behind a proxy that serves the app
under /app and strips that prefix, add `--root-path /app`: the browser then uses
/app/llm/api/token, and both FastAPI and llmguard route as before.
"""

from fastapi import FastAPI

from llmguard import create_app

llm = create_app()  # settings from the environment: OPENAI_API_KEY, JWT_SECRET, ALLOWED_ORIGIN, ...

# A mounted app gets no lifespan of its own in FastAPI (nor in Starlette): this one is
# llmguard's, which loads its token counter and opens, then closes, its provider connections.
app = FastAPI(lifespan=llm.router.lifespan_context)
app.mount("/llm", llm)


@app.get("/")
async def home() -> dict[str, str]:
    return {"hello": "from your own FastAPI route"}
