"""A fake OpenAI-compatible provider for your tests, and the engine of the offline demo.

``FakeProvider`` is an ASGI app: serve it with uvicorn to get a provider that
speaks real HTTP and Server-Sent Events, or call ``provider.transport()`` to
plug it straight into an ``httpx.AsyncClient`` (streams stay streams). Every
request it receives is recorded, and ``enqueue()`` scripts what the next
requests get: errors, slow or cut streams, missing usage::

    provider = FakeProvider(api_key="sk-test")
    provider.enqueue(FakeReply.failure(429, retry_after=1), FakeReply(text="Hi!"))
    app = create_app(Settings(openai_api_key="sk-test", ...), transport=provider.transport())

For the token endpoint's challenges: ``solve_challenge_payload(challenge)``
solves a proof-of-work challenge as the browser SDK does, and
``FakeSiteverify`` stands in for Turnstile's or hCaptcha's verifier.
"""

from llmguard._fake_provider import FakeProvider, FakeReply, RecordedRequest, billable_prompt_tokens, demo_reply
from llmguard._fake_siteverify import FakeSiteverify, solve_challenge_payload

__all__ = [
    "FakeProvider",
    "FakeReply",
    "FakeSiteverify",
    "RecordedRequest",
    "billable_prompt_tokens",
    "demo_reply",
    "solve_challenge_payload",
]
