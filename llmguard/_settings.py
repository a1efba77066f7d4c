"""Every setting of the bundled app, declared once and read and validated in this one place.

Each field of ``Settings`` carries its whole declaration (``setting(...)``): the
environment variable (and any alias), how its text is parsed, how its value is
checked, the help text, and the component argument it feeds. ``--help``, the
configuration reference (docs/reference/configuration.md) and ``to_env()`` are
all made from these declarations.

``Settings.from_env()`` reads the environment variables; ``Settings(...)`` takes
the same values as keyword arguments. Either way every value is checked at
construction, and a bad one raises ``SettingsError`` naming the variable (or
argument) and the value, so a misconfigured deploy fails at start-up instead of
on the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from llmguard import _settings_values as v
from llmguard._alerts import THRESHOLDS, check_thresholds, check_webhook_url, parse_thresholds, shown_url
from llmguard._challenge import DEFAULT_LADDER, ChallengeKind, check_ladder, parse_ladder
from llmguard._chat_service import DEFAULT_BASE_URL, DEFAULT_MODEL
from llmguard._client_ip import check_ipv6_prefix, check_trusted_proxies, header_name
from llmguard._degrade import Degradation, check_degrade, parse_degrade
from llmguard._jwt import check_max_uses, check_previous_secrets, check_secret
from llmguard._metrics import check_token as check_metrics_token
from llmguard._origin import check_origins
from llmguard._otel import INSTALL as OTEL_INSTALL
from llmguard._otel import installed as otel_installed
from llmguard._presets import Presets, check_presets, parse_presets
from llmguard._prices import DEFAULT_PRICES, Price, check_prices, parse_prices, price_of
from llmguard._rate_limit import check_rate
from llmguard._settings_values import parse_duration
from llmguard._storage import check_url, redact_url
from llmguard._token_endpoint import check_ttl
from llmguard._upstream import TokenParam, TransportName, token_limit_param

_DAY = 86400


class SettingsError(ValueError):
    """A setting has a value llmguard cannot use."""

    def __init__(
        self, name: str, value: object, reason: str, *, secret: bool = False, shown: str | None = None
    ) -> None:
        self.name = name
        self.reason = reason
        text = "" if secret else f" has value {shown if shown is not None else repr(value)}"
        super().__init__(f"Setting {name}{text}: {reason}")


# "Class(argument=)", for one instance of the class: "IPRateLimit(limit=) of /api/token" is not.
_FEEDS = re.compile(r"(\w+)\((\w+)=\)(?! of )")


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting (see ``setting()``)."""

    env: str
    parse: v.Parse
    check: v.Check
    help: str
    feeds: str
    default: str | None = None
    aliases: tuple[str, ...] = ()
    secret: bool = False
    redact: Callable[[str], str] | None = None

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.env, *self.aliases)

    def shown(self, value: object) -> str:
        """How a value may appear in a message: secrets never do, URLs without their password."""
        if self.redact is not None and isinstance(value, str):
            return repr(self.redact(value))
        return repr(value)

    def error(self, name: str, value: object, reason: str) -> SettingsError:
        return SettingsError(name, value, reason, secret=self.secret, shown=self.shown(value))


def setting(
    env: str,
    parse: v.Parse,
    *,
    check: v.Check,
    help: str,
    feeds: str,
    default: str | None = None,
    aliases: tuple[str, ...] = (),
    secret: bool = False,
    redact: Callable[[str], str] | None = None,
) -> dict[str, Setting]:
    """A field's declaration, for ``field(metadata=...)``.

    ``env`` is the variable (``aliases`` are other spellings of it, read too);
    ``parse`` reads its text; ``check`` takes the typed value and returns it
    normalized or raises with the reason; ``help`` says what it does (Markdown,
    shown by ``--help`` and in the configuration reference); ``feeds`` names the component
    argument the value becomes, as ``Class(argument=)``; ``default`` is how the
    docs show the default when the value alone would not say it; ``secret``
    values are never shown; ``redact`` hides what must not be logged in a value.
    """
    declared = Setting(env, parse, check, help, feeds, default, aliases, secret, redact)
    return {"setting": declared}


@dataclass(frozen=True)
class Shorthand:
    """One variable that sets several fields at once (``RATE_LIMIT`` for the max and the window)."""

    env: str
    parse: Callable[[str], tuple[Any, ...]]
    fields: tuple[str, ...]  # the fields its parsed values go to, in order
    help: str
    feeds: str
    default: str


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Configuration of the bundled app (``create_app``) and the ``llmguard serve`` CLI.

    Durations are seconds; rate strings use the ``limits`` notation
    (``"10/minute"``, ``"100000 per day"``); ``None`` switches an optional
    limit off.
    """

    # fmt: off
    # -- the provider
    openai_api_key: str | None = field(default=None, repr=False, metadata=setting(
        "OPENAI_API_KEY", v.parse_text, check=v.or_none(v.api_key), secret=True,
        default="required unless `--demo`", feeds="ChatEndpoint(api_key=)",
        help="provider key; never logged, never sent to the browser"))
    openai_base_url: str = field(default=DEFAULT_BASE_URL, metadata=setting(
        "OPENAI_BASE_URL", v.parse_text, check=v.base_url, feeds="ChatEndpoint(base_url=)",
        help="any OpenAI-compatible provider"))
    openai_model: str = field(default=DEFAULT_MODEL, metadata=setting(
        "OPENAI_MODEL", v.parse_text, check=v.non_empty, feeds="ChatEndpoint(model=)",
        help="the model clients get"))
    allowed_models: tuple[str, ...] = field(default=(), metadata=setting(
        "ALLOWED_MODELS", v.parse_list, check=v.names, feeds="ChatEndpoint(models=)",
        help="more models clients may name (`model`), comma-separated; each needs a price under a spend cap"))
    max_tokens_param: TokenParam = field(default="auto", metadata=setting(
        "MAX_TOKENS_PARAM", v.parse_text, check=v.choice(*get_args(TokenParam)),
        feeds="ChatEndpoint(max_tokens_param=)",
        help="`max_completion_tokens` for api.openai.com, `max_tokens` elsewhere; or set one"))
    request_timeout: float = field(default=120, metadata=setting(
        "REQUEST_TIMEOUT", parse_duration, check=v.seconds(1, 3600), feeds="ChatEndpoint(request_timeout=)",
        help="seconds for one provider call, streams included"))
    upstream_retries: int = field(default=2, metadata=setting(
        "UPSTREAM_RETRIES", v.parse_int, check=v.non_negative_int, feeds="ChatEndpoint(retries=)",
        help="retries of a provider 429/5xx or a failure to connect; never of a request the provider may have "
        "received"))
    upstream_transport: TransportName = field(default="auto", metadata=setting(
        "UPSTREAM_TRANSPORT", v.parse_text, check=v.choice(*get_args(TransportName)),
        feeds="ChatEndpoint(transport=)",
        help="`aiohttp` (its connection pool under httpx; with `llmguard[speed]`), `httpx`, or `auto`: aiohttp "
        "when installed"))

    # -- what one chat request may do
    system_prompt: str = field(default="", metadata=setting(
        "SYSTEM_PROMPT", v.parse_text, check=v.text, feeds="ChatEndpoint(system_prompt=)",
        help="sent as the system message when the client sends no `system`"))
    allow_client_system: bool | None = field(default=None, metadata=setting(
        "ALLOW_CLIENT_SYSTEM", v.parse_auto_bool, check=v.or_none(v.boolean), default="`auto`",
        feeds="ChatEndpoint(allow_client_system=)",
        help="a client's own system prompt (`system`; system messages on `/v1`): `auto` refuses it with 422 when "
        "the server has a `SYSTEM_PROMPT` or `PRESETS`, `true` always allows it, `false` always refuses it"))
    presets: Presets = field(default_factory=Presets, metadata=setting(
        "PRESETS", parse_presets, check=v.component(check_presets, "presets"), default="none",
        feeds="ChatEndpoint(presets=)",
        help='locked prompts clients pick by name (`preset`): JSON, or `@path` to a JSON file, as `{"support": '
        '{"system": "…", "model": "gpt-4.1-nano", "max_tokens": 300, "temperature": 0.2}}` (all but `system` '
        "optional; they win over the client's); see Locked prompts"))
    max_tokens: int = field(default=2000, metadata=setting(
        "MAX_TOKENS", v.parse_int, check=v.positive_int, feeds="ChatEndpoint(max_tokens=)",
        help="output tokens a request may ask for; larger asks are clamped"))
    max_prompt_tokens: int = field(default=8000, metadata=setting(
        "MAX_PROMPT_TOKENS", v.parse_int, check=v.positive_int, feeds="TokenBudget(max_prompt_tokens=)",
        help="prompt tokens per request (o200k_base, over everything sent); more is refused with 413 "
        "`PromptTooLarge`"))
    max_body_bytes: int = field(default=1_048_576, metadata=setting(
        "MAX_BODY_BYTES", v.parse_int, check=v.positive_int, feeds="ChatEndpoint(max_body_bytes=)",
        help="larger bodies get 413, checked while reading (chunked too)"))
    body_timeout: float = field(default=10, metadata=setting(
        "BODY_TIMEOUT", parse_duration, check=v.seconds(0.1, 600), feeds="ChatEndpoint(body_timeout=)",
        help="seconds for a request body to arrive; a slower one gets 408 `RequestTimeout`"))

    # -- browsers and their tokens
    allowed_origins: tuple[str, ...] = field(default=("http://localhost:5173",), metadata=setting(
        "ALLOWED_ORIGIN", v.parse_list, feeds="OriginFilter(allow_origins=)",
        check=v.all_of(v.listed, v.one_or_more("origin such as https://app.example.com"),
                       v.component(check_origins, "allow_origins")),
        help="comma-separated exact origins (`https://app.example.com`)"))
    jwt_secret: str | None = field(default=None, repr=False, metadata=setting(
        "JWT_SECRET", v.parse_text, check=v.or_none(v.all_of(v.text, v.keeps(v.component(check_secret, "secret")))),
        secret=True, default="random at boot, with a warning", feeds="TokenEndpoint(secret=), JWTAuth(secret=)",
        help="HS256 secret, at least 32 bytes (`llmguard keygen` prints one)"))
    jwt_previous_secrets: tuple[str, ...] = field(default=(), repr=False, metadata=setting(
        "JWT_PREVIOUS_SECRETS", v.parse_list, secret=True, default="none",
        check=v.all_of(v.names, v.keeps(v.component(check_previous_secrets, "previous_secrets"))),
        feeds="JWTAuth(previous_secrets=), TokenChallenge(previous_secrets=)",
        help="comma-separated secrets that still verify the tokens and challenges they signed after `JWT_SECRET` "
        "changes (each at least 32 bytes); see Key rotation"))
    jwt_ttl: float = field(default=900, metadata=setting(
        "JWT_TTL", parse_duration, check=v.all_of(v.component(check_ttl, "ttl"), v.whole_seconds()),
        default="`15 minutes`", feeds="TokenEndpoint(ttl=)",
        help="token lifetime (`90`, `90s`, `15 minutes`, `1h`)"))
    jwt_issuer: str = field(default="llmguard", metadata=setting(
        "JWT_ISSUER", v.parse_text, check=v.non_empty, feeds="TokenEndpoint(issuer=), JWTAuth(issuer=)",
        help="the `iss` claim minted and required"))
    jwt_audience: str = field(default="llmguard", metadata=setting(
        "JWT_AUDIENCE", v.parse_text, check=v.non_empty, feeds="TokenEndpoint(audience=), JWTAuth(audience=)",
        help="the `aud` claim minted and required"))
    jwt_max_uses: int | None = field(default=None, metadata=setting(
        "JWT_MAX_USES", v.optional(v.parse_int), check=v.component(check_max_uses, "max_uses"),
        feeds="JWTAuth(max_uses=), TokenEndpoint(max_uses=)",
        help="requests per token, `1` = single-use; the token response says `max_uses`"))

    # -- bots: what POST /api/token asks for first (the challenge ladder)
    token_challenge: ChallengeKind = field(default="pow", metadata=setting(
        "TOKEN_CHALLENGE", v.parse_text, check=v.choice(*get_args(ChallengeKind)), feeds="TokenChallenge(kind=)",
        help="`pow` (proof-of-work, ALTCHA), `turnstile`, `hcaptcha`, `pow+turnstile` / `pow+hcaptcha` (work, then "
        "the CAPTCHA at the ladder's `captcha` rung), or `off`; see Stopping bots"))
    challenge_ladder: str = field(default=DEFAULT_LADDER, metadata=setting(
        "CHALLENGE_LADDER", v.parse_text, check=v.component(check_ladder, "ladder"), feeds="TokenChallenge(ladder=)",
        help="after N mints by a client in `CHALLENGE_WINDOW`: an ALTCHA max number (the work), `captcha` or "
        "`refuse`"))
    challenge_window: float = field(default=3600, metadata=setting(
        "CHALLENGE_WINDOW", parse_duration, check=v.whole_seconds(60, 7 * _DAY), default="`1 hour`",
        feeds="TokenChallenge(window=)", help="the window in which the ladder counts a client's mints"))
    challenge_ttl: float = field(default=300, metadata=setting(
        "CHALLENGE_TTL", parse_duration, check=v.whole_seconds(10, 3600), default="`5 minutes`",
        feeds="TokenChallenge(ttl=)", help="how long a proof-of-work challenge may be solved for"))
    captcha_site_key: str | None = field(default=None, metadata=setting(
        "CAPTCHA_SITE_KEY", v.optional(v.parse_text), check=v.or_none(v.non_empty), default="none",
        feeds="TokenChallenge(site_key=)", help="the CAPTCHA widget's site key (public)"))
    captcha_secret: str | None = field(default=None, repr=False, metadata=setting(
        "CAPTCHA_SECRET", v.optional(v.parse_text), check=v.or_none(v.non_empty), secret=True, default="none",
        feeds="TokenChallenge(captcha_secret=)", help="the CAPTCHA's secret for its siteverify API; never logged"))
    captcha_verify_url: str | None = field(default=None, metadata=setting(
        "CAPTCHA_VERIFY_URL", v.optional(v.parse_text), check=v.or_none(v.url), default="the provider's",
        feeds="TokenChallenge(verify_url=)", help="the siteverify endpoint"))
    captcha_script_url: str | None = field(default=None, metadata=setting(
        "CAPTCHA_SCRIPT_URL", v.optional(v.parse_text), check=v.or_none(v.url), default="the provider's",
        feeds="TokenChallenge(script_url=)", help="the widget script the SDK loads"))
    captcha_timeout: float = field(default=5, metadata=setting(
        "CAPTCHA_TIMEOUT", parse_duration, check=v.seconds(0.5, 60), feeds="TokenChallenge(captcha_timeout=)",
        help="seconds for siteverify; slower or down: 503 `ChallengeUnavailable`"))

    # -- limits and budgets (RATE_LIMIT, below the class, sets the first two at once)
    rate_limit_max: int = field(default=60, metadata=setting(
        "RATE_LIMIT_MAX", v.parse_int, check=v.positive_int, feeds="IPRateLimit(limit=) of the chat routes",
        help="chat requests per client IP per `RATE_LIMIT_WINDOW`"))
    rate_limit_window: float = field(default=60, metadata=setting(
        "RATE_LIMIT_WINDOW", parse_duration, check=v.whole_seconds(1, 366 * _DAY), default="`1 minute`",
        feeds="IPRateLimit(limit=) of the chat routes", help="the window of `RATE_LIMIT_MAX`"))
    token_rate_limit: str = field(default="10/minute", metadata=setting(
        "TOKEN_RATE_LIMIT", v.parse_text, check=v.component(check_rate, "limit"),
        feeds="IPRateLimit(limit=) of /api/token",
        help="token mints per client IP (`limits` notation: `10/minute`, `100 per hour`)"))
    tokens_per_ip: str | None = field(default="100000/day", metadata=setting(
        "TOKENS_PER_IP", v.optional(v.parse_text), check=v.or_none(v.component(check_rate, "limit")),
        aliases=("TOKENS_PER_CLIENT",),
        feeds="TokenBudget(tokens_per_client=)",
        help="tokens per client (the token's `sub`, else the IP) in a sliding window; `off` to disable"))
    monthly_token_cap: int | None = field(default=None, metadata=setting(
        "MONTHLY_TOKEN_CAP", v.optional(v.parse_int), check=v.or_none(v.positive_int),
        feeds="TokenBudget(monthly_token_cap=)", help="tokens for the whole service per calendar month (UTC)"))
    monthly_spend_cap_usd: float | None = field(default=None, metadata=setting(
        "MONTHLY_SPEND_CAP_USD", v.optional(v.parse_float), check=v.or_none(v.dollars),
        feeds="TokenBudget(monthly_spend_cap_usd=)",
        help="US dollars for the whole service per calendar month (UTC), from the price table"))
    model_prices: Mapping[str, Price] = field(default_factory=dict, metadata=setting(
        "MODEL_PRICES", parse_prices, check=v.component(check_prices, "prices"), default="built-in table",
        feeds="TokenBudget(prices=)",
        help="`model=input/output` in dollars per million tokens, comma-separated; extends or overrides the table"))
    degrade: tuple[Degradation, ...] = field(default=(), metadata=setting(
        "DEGRADE", v.optional(parse_degrade), check=v.or_none(v.component(check_degrade, "degrade")), default="off",
        feeds="TokenBudget(degrade=)",
        help="past a fraction of the monthly token or spend cap, a cheaper model and/or a lower output cap: "
        "`FRACTION:MODEL:MAX_TOKENS` steps (`80%:gpt-4.1-nano:300, 95%::100`); see Running low"))
    alert_webhook_url: str | None = field(default=None, repr=False, metadata=setting(
        "ALERT_WEBHOOK_URL", v.optional(v.parse_text), check=v.or_none(v.component(check_webhook_url, "url")),
        redact=shown_url, default="off", feeds="SpendAlerts(url=)",
        help="a Slack-compatible webhook (Slack, Discord's `/slack`, any JSON receiver) told when each monthly cap "
        "passes each of `ALERT_THRESHOLDS`, once a month across instances, and when the storage fails open; only "
        "its scheme and host are ever shown; see Alerts"))
    alert_thresholds: tuple[int, ...] = field(default=THRESHOLDS, metadata=setting(
        "ALERT_THRESHOLDS", parse_thresholds, check=v.component(check_thresholds, "thresholds"),
        default="`50,80,95,100`", feeds="SpendAlerts(thresholds=)",
        help="percents of each monthly cap at which an alert is posted, increasing, 1 to 100"))

    # -- where the counts live
    storage_url: str = field(default="memory://", repr=False, metadata=setting(
        "STORAGE_URL", v.parse_text, check=v.component(check_url, "url"), redact=redact_url, feeds="Storage(url=)",
        help="where counts live; `redis://host:6379/0` to share them (`pip install 'llmguard[redis]'`); its "
        "password is never shown"))
    storage_failure: Literal["closed", "open"] = field(default="closed", metadata=setting(
        "STORAGE_FAILURE", v.parse_text, check=v.choice("closed", "open"), feeds="Storage(failure=)",
        help="storage down: `closed` → 503 `StorageUnavailable`, `open` → serve without limits and warn"))
    storage_timeout: float = field(default=2.0, metadata=setting(
        "STORAGE_TIMEOUT", parse_duration, check=v.seconds(0.05, 60), feeds="Storage(timeout=)",
        help="seconds before a storage call counts as failed"))

    # -- who the client is
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=setting(
        "TRUSTED_PROXIES", v.parse_list, feeds="ClientIP(trusted_proxies=)",
        check=v.all_of(v.listed, v.component(check_trusted_proxies, "trusted_proxies")),
        help="IPs/CIDRs whose `X-Forwarded-For` is believed, read right to left; `unix` for a proxy on a Unix "
        "socket (`llmguard serve --uds`)"))
    client_ip_header: str | None = field(default=None, metadata=setting(
        "CLIENT_IP_HEADER", v.optional(v.parse_text), default="none", feeds="ClientIP(header=)",
        check=v.or_none(v.all_of(v.component(header_name, "header"), v.decoded)),
        help="a platform header with the client IP (`Fly-Client-IP`, `CF-Connecting-IP`), from trusted peers only"))
    ipv6_prefix: int = field(default=64, metadata=setting(
        "IPV6_PREFIX", v.parse_prefix, check=v.component(check_ipv6_prefix, "ipv6_prefix"), default="`64`",
        feeds="ClientIP(ipv6_prefix=)",
        help="IPv6 clients are grouped by this prefix (`/64`: a subscriber; `48` where tunnel brokers hand out "
        "/48s), 32 to 128"))

    # -- metrics (GET /metrics)
    metrics: bool = field(default=False, metadata=setting(
        "METRICS", v.parse_bool, check=v.boolean, feeds="create_app()",
        help="serve Prometheus metrics at `GET /metrics`, to a scraper that sends `METRICS_TOKEN`; see Metrics"))
    metrics_token: str | None = field(default=None, repr=False, metadata=setting(
        "METRICS_TOKEN", v.optional(v.parse_text), check=v.or_none(v.component(check_metrics_token, "token")),
        secret=True, default="none", feeds="MetricsEndpoint(token=)",
        help="the bearer token `GET /metrics` requires (at least 16 printable characters); required with "
        "`METRICS=true`"))
    otel: bool = field(default=False, metadata=setting(
        "OTEL", v.parse_bool, check=v.boolean, feeds="create_app()",
        help="an OpenTelemetry span and GenAI metrics for each provider call, to the global tracer and meter "
        "providers (needs `llmguard[otel]`); see Metrics"))

    # -- the bundled server (llmguard serve)
    header_timeout: float = field(default=10, metadata=setting(
        "HEADER_TIMEOUT", parse_duration, check=v.seconds(0.1, 600), feeds="protocol(header_timeout=)",
        help="seconds for a request's headers to arrive (bundled server); slower: 408 and the connection closed"))
    keep_alive_timeout: float = field(default=5, metadata=setting(
        "KEEP_ALIVE_TIMEOUT", parse_duration, check=v.whole_seconds(1, 3600), feeds="uvicorn.run(timeout_keep_alive=)",
        help="seconds an idle keep-alive connection stays open (bundled server); behind a load balancer, make it "
        "longer than the balancer's"))
    max_connections: int = field(default=1000, metadata=setting(
        "MAX_CONNECTIONS", v.parse_int, check=v.positive_int, feeds="protocol(max_connections=)",
        help="open connections the bundled server accepts; past it, 503 `ServerBusy` (the open-files limit is "
        "raised to match)"))
    log_format: Literal["text", "json"] = field(default="text", metadata=setting(
        "LOG_FORMAT", v.parse_text, check=v.choice("text", "json"), feeds="llmguard serve",
        help="`text` or `json`, one line per request"))
    log_level: str = field(default="info", metadata=setting(
        "LOG_LEVEL", v.parse_text, check=v.choice("debug", "info", "warning", "error"), feeds="llmguard serve",
        help="`debug`, `info`, `warning`, `error`"))
    demo: bool = field(default=False, metadata=setting(
        "LLMGUARD_DEMO", v.parse_bool, check=v.boolean, feeds="create_app()",
        help="run offline against a built-in fake provider, no key needed (as `llmguard serve --demo`)"))
    demo_page: bool | None = field(default=None, metadata=setting(
        "DEMO_PAGE", v.parse_bool, check=v.or_none(v.boolean), default="on in demo only", feeds="create_app()",
        help="serve the demo chat page at `/`"))
    # fmt: on

    def __post_init__(self) -> None:
        for item, declared in declarations():
            value = getattr(self, item.name)
            try:
                checked = declared.check(value)
            except (ValueError, TypeError) as exc:
                raise declared.error(item.name, value, str(exc)) from None
            if checked is not value:
                object.__setattr__(self, item.name, checked)
        if self.degrade is None:
            object.__setattr__(self, "degrade", ())
        if self.degrade and self.monthly_token_cap is None and self.monthly_spend_cap_usd is None:
            shown = ", ".join(str(step) for step in self.degrade)
            raise SettingsError(
                "degrade", shown, "needs a monthly cap to be a fraction of: MONTHLY_TOKEN_CAP or MONTHLY_SPEND_CAP_USD"
            )
        unpriced = [
            model for model in (self.openai_model, *self.allowed_models) if price_of(model, self.prices) is None
        ]
        if self.monthly_spend_cap_usd is not None:
            self._check_priced(
                "presets",
                self.presets.to_json(),
                [(f"the preset {name!r}", preset.model) for name, preset in self.presets.items()],
            )
            self._check_priced(
                "degrade",
                ", ".join(map(str, self.degrade)),
                [(f"the step at {step.percent}%", step.model) for step in self.degrade],
            )
        if self.monthly_spend_cap_usd is not None and unpriced:
            raise SettingsError(
                "model_prices",
                dict(self.model_prices),
                f"MONTHLY_SPEND_CAP_USD needs the price of {unpriced[0]!r}: add it, as "
                f"'{unpriced[0]}=<input>/<output>' in US dollars per million tokens",
            )
        self._check_captcha()
        if self.metrics and not self.metrics_token:
            reason = "is required with METRICS=true: the bearer token Prometheus sends, at least 16 random characters"
            raise SettingsError("metrics_token", None, reason, secret=True)
        if self.otel and not otel_installed():
            raise SettingsError("otel", True, f"needs opentelemetry-api, which is not installed: {OTEL_INSTALL}")
        self._check_previous_secrets()
        if not self.demo and not self.openai_api_key:
            raise SettingsError(
                "openai_api_key",
                None,
                "the provider key is required (or run the offline demo)",
                secret=True,
            )

    def _check_captcha(self) -> None:
        """A CAPTCHA challenge needs its keys; proof-of-work alone cannot start with a CAPTCHA."""
        kind = self.token_challenge
        if kind.split("+")[-1] not in ("turnstile", "hcaptcha"):
            if kind == "pow" and parse_ladder(self.challenge_ladder)[0].step == "captcha":
                reason = "the first rung is 'captcha', and TOKEN_CHALLENGE=pow has no CAPTCHA"
                raise SettingsError("challenge_ladder", self.challenge_ladder, reason)
            return
        for name in ("captcha_site_key", "captcha_secret"):
            if not getattr(self, name):
                raise SettingsError(name, None, f"is required with TOKEN_CHALLENGE={kind}", secret=True)

    def _check_previous_secrets(self) -> None:
        """A previous secret is one that came before ``JWT_SECRET``, never the same one."""
        if self.jwt_secret is not None and self.jwt_secret in self.jwt_previous_secrets:
            position = self.jwt_previous_secrets.index(self.jwt_secret) + 1
            reason = f"secret {position} is JWT_SECRET itself; list only the secrets that came before it"
            raise SettingsError("jwt_previous_secrets", None, reason, secret=True)

    def _check_priced(self, name: str, shown: str, models: list[tuple[str, str | None]]) -> None:
        """Under a spend cap, every model a setting names needs a price, as ``ALLOWED_MODELS`` do."""
        for where, model in models:
            if model is not None and price_of(model, self.prices) is None:
                raise SettingsError(
                    name,
                    shown,
                    f"{where} names the model {model!r}, which has no price, and MONTHLY_SPEND_CAP_USD needs one: "
                    f"add it to MODEL_PRICES as '{model}=<input>/<output>' in US dollars per million tokens",
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``).

        Empty variables count as unset. ``overrides`` win over the environment.
        An alias and its variable (``TOKENS_PER_CLIENT``, ``TOKENS_PER_IP``), or
        ``RATE_LIMIT`` and ``RATE_LIMIT_MAX``/``RATE_LIMIT_WINDOW``, may both be
        set only when they say the same.
        """
        environ = os.environ if environ is None else environ
        read = _Reading(environ)
        for item, declared in declarations():
            if item.name not in overrides:
                for variable in declared.variables:
                    read.variable(variable, item.name, declared)
        for shorthand in SHORTHANDS:
            text = environ.get(shorthand.env, "")
            if text.strip():
                try:
                    parsed = shorthand.parse(text)
                except ValueError as exc:
                    raise SettingsError(shorthand.env, text, str(exc)) from None
                for name, value in zip(shorthand.fields, parsed, strict=True):
                    if name not in overrides:
                        read.value(shorthand.env, text, name, value, _DECLARED[name])
        values = {**read.values, **overrides}
        try:
            return cls(**values)
        except SettingsError as exc:
            declared = _DECLARED[exc.name]
            # Show what the user wrote ('2 days'), not what it was parsed into (172800.0).
            variable, value = read.sources.get(exc.name, (declared.env, values.get(exc.name, _default(exc.name))))
            raise declared.error(variable, value, exc.reason) from None

    def arguments(self, component: str) -> dict[str, Any]:
        """The keyword arguments ``component`` takes from these settings, as the declarations' ``feeds`` name them.

        ``create_app`` builds its components from this, so a setting reaches exactly the argument
        its declaration names (the tests check every one exists). A ``feeds`` that says which of
        several instances it is for (``IPRateLimit(limit=) of /api/token``) is wired by hand.
        """
        found: dict[str, Any] = {}
        for item, declared in declarations():
            for name, argument in _FEEDS.findall(declared.feeds):
                if name == component:
                    found[argument] = getattr(self, item.name)
        return found

    def to_env(self) -> dict[str, str | None]:
        """Every setting as the environment variable that reads back to exactly this value.

        ``None`` means the variable must be unset (aliases and shorthands always
        are). ``llmguard serve --workers`` hands its settings to the workers this
        way, so each worker runs on exactly what a single process would
        (``--env-file``, ``--demo`` and the generated secret included).
        """
        environ: dict[str, str | None] = {}
        for item, declared in declarations():
            environ[declared.env] = _to_text(getattr(self, item.name))
            environ.update(dict.fromkeys(declared.aliases))
        environ.update(dict.fromkeys(shorthand.env for shorthand in SHORTHANDS))
        return environ

    def describe(self) -> dict[str, str]:
        """Every setting by its variable, as it may be logged: secrets only say whether they are set."""
        described = {}
        for item, declared in declarations():
            value = getattr(self, item.name)
            if declared.secret:
                text = "set" if value else "unset"
            else:
                text = _to_text(value) or ""
                if declared.redact is not None:
                    text = declared.redact(text)
            described[declared.env] = text
        return described

    @property
    def prices(self) -> dict[str, Price]:
        """The built-in price table with ``model_prices`` laid over it."""
        return {**DEFAULT_PRICES, **self.model_prices}

    @property
    def rate_limit(self) -> str:
        """``rate_limit_max`` per ``rate_limit_window``, in the `limits` notation."""
        return f"{self.rate_limit_max} per {int(self.rate_limit_window)} seconds"

    @property
    def serves_demo_page(self) -> bool:
        return self.demo if self.demo_page is None else self.demo_page

    @property
    def token_limit_param(self) -> str:
        """The request field that carries the output cap for this provider."""
        return token_limit_param(self.openai_base_url, self.max_tokens_param)


SHORTHANDS = (
    Shorthand(
        "RATE_LIMIT",
        v.parse_rate_window,
        fields=("rate_limit_max", "rate_limit_window"),
        default="`60/minute`",
        feeds="IPRateLimit(limit=) of the chat routes",
        help="chat requests per client IP, in the `limits` notation (`60/minute`, `1000 per day`): the same as "
        "`RATE_LIMIT_MAX` and `RATE_LIMIT_WINDOW` in one variable; set one or the other",
    ),
)


def declarations() -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    """Every field of ``Settings`` with its declaration, in the order of the class."""
    for item in dataclasses.fields(Settings):
        declared: Setting = item.metadata["setting"]
        yield item, declared


_DECLARED = {item.name: declared for item, declared in declarations()}


class _Reading:
    """The values read so far, and where each came from (variable, text), for messages and conflicts."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.values: dict[str, Any] = {}
        self.sources: dict[str, tuple[str, str]] = {}

    def variable(self, variable: str, name: str, declared: Setting) -> None:
        text = self.environ.get(variable, "")
        if not text.strip():
            return
        try:
            value = declared.parse(text)
        except ValueError as exc:
            raise declared.error(variable, text, str(exc)) from None
        self.value(variable, text, name, value, declared)

    def value(self, variable: str, text: str, name: str, value: Any, declared: Setting) -> None:
        if name in self.sources and self.values[name] != value:
            other, other_text = self.sources[name]
            also = f"{other} is also set" + ("" if declared.secret else f", to {declared.shown(other_text)}")
            raise declared.error(variable, text, f"{also}, and they disagree: set one of them")
        self.values.setdefault(name, value)
        self.sources.setdefault(name, (variable, text))


def _default(name: str) -> object:
    item = next(item for item, _ in declarations() if item.name == name)
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def _to_text(value: object) -> str | None:
    """A setting's value as the environment text that parses back to it (``None``: leave unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    if isinstance(value, Presets):
        return value.to_json() if value else None
    if isinstance(value, Mapping):
        return ",".join(f"{model}={price.input!r}/{price.output!r}" for model, price in value.items())
    return str(value)
