"""create_app: each component gets the settings its declarations say they feed, and nothing else."""

from __future__ import annotations

from harness import find, make_settings

from llmguard import ChatEndpoint, JWTAuth, OriginFilter, Settings, TokenBudget, TokenEndpoint, create_app


def test_arguments_are_the_settings_named_by_their_feeds() -> None:
    settings = make_settings(max_tokens=77, system_prompt="Be brief.", openai_model="gpt-4.1-nano")
    arguments = settings.arguments("ChatEndpoint")
    assert (arguments["max_tokens"], arguments["system_prompt"], arguments["model"]) == (
        77,
        "Be brief.",
        "gpt-4.1-nano",
    )
    assert settings.arguments("TokenBudget")["tokens_per_client"] is None  # TOKENS_PER_IP feeds tokens_per_client
    assert settings.arguments("Storage") == {"url": "memory://", "failure": "closed", "timeout": 2.0}
    # A setting for one of several instances is wired by hand, not handed to every one.
    assert settings.arguments("IPRateLimit") == {}


def test_create_app_builds_each_component_from_its_settings() -> None:
    settings = make_settings(
        max_tokens=77,
        system_prompt="Be brief.",
        max_prompt_tokens=1234,
        monthly_token_cap=5000,
        jwt_ttl=120,
        jwt_issuer="issuer.example",
        jwt_max_uses=3,
        allowed_origins=("https://a.example", "https://b.example"),
        storage_timeout=0.5,
    )
    app = create_app(settings)
    chat = find(app, ChatEndpoint).service.policy
    assert (chat.max_tokens, chat.system_prompt) == (77, "Be brief.")
    budget = find(app, TokenBudget)
    assert (budget.max_prompt_tokens, budget.monthly_token_cap, budget.storage.timeout) == (1234, 5000, 0.5)
    assert budget.prices["gpt-4.1-mini"] is not None  # the built-in table, extended by MODEL_PRICES
    token = find(app, TokenEndpoint)
    assert (token.ttl, token.issuer, token.max_uses) == (120, "issuer.example", 3)
    auth = find(app, JWTAuth)
    assert (auth.issuer, auth.max_uses, auth.secret) == ("issuer.example", 3, token.secret)
    assert find(app, OriginFilter).allow_origins == {"https://a.example", "https://b.example"}


def test_the_demo_needs_no_key_and_calls_no_provider() -> None:
    app = create_app(Settings(demo=True, jwt_secret="s" * 32))
    upstream = find(app, ChatEndpoint).upstream
    assert upstream.url.startswith("http://offline-demo.invalid/")
    assert upstream.transport_name == "_FakeTransport"
