"""llmguard mounted under /llm of a FastAPI app.

    OPENAI_API_KEY=sk-... JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(48))') \
    ALLOWED_ORIGIN=http://localhost:5173 uvicorn examples.fastapi_app:app

The browser then uses POST /llm/api/token and POST /llm/api/chat; your own
routes are untouched by llmguard's guards.
"""

from fastapi import FastAPI

from llmguard import create_app

llm = create_app()  # settings from the environment: OPENAI_API_KEY, JWT_SECRET, ALLOWED_ORIGIN, ...

# Mounted apps get no lifespan of their own in Starlette/FastAPI; reusing llmguard's
# closes its provider connections on shutdown.
app = FastAPI(lifespan=llm.router.lifespan_context)
app.mount("/llm", llm)


@app.get("/")
async def home() -> dict[str, str]:
    return {"hello": "from your own FastAPI route"}
