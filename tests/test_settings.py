import inspect
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import limits
import pytest
import uvicorn
from harness import KEY, SECRET, TOKEN_PARAM_CASES

from llmguard import (
    ChatEndpoint,
    IPRateLimit,
    JWTAuth,
    MetricsEndpoint,
    OriginFilter,
    Settings,
    SettingsError,
    SpendAlerts,
    TokenBudget,
    TokenChallenge,
    TokenEndpoint,
)
from llmguard._app import create_app
from llmguard._client_ip import ClientIP, header_name, trusted_networks
from llmguard._jwt import check_max_uses, check_previous_secrets, check_secret
from llmguard._origin import check_origins
from llmguard._prices import Price, check_prices
from llmguard._server import protocol
from llmguard._settings import SHORTHANDS, declarations
from llmguard._settings_docs import END, REGENERATE, START, main, markdown, table_in
from llmguard._storage import Storage
from llmguard._token_endpoint import check_ttl

CONFIGURATION_PAGE = Path(__file__).parent.parent / "docs" / "reference" / "configuration.md"

# (variable, text in the environment, attribute, parsed value): every row of DESIGN's table, and the extras.
ENVIRONMENT = [
    ("OPENAI_API_KEY", "sk-other-Hq3Zt7Vw2Ks9", "openai_api_key", "sk-other-Hq3Zt7Vw2Ks9"),
    ("JWT_SECRET", "s" * 40, "jwt_secret", "s" * 40),
    ("JWT_PREVIOUS_SECRETS", "p" * 40 + ", " + "q" * 40, "jwt_previous_secrets", ("p" * 40, "q" * 40)),
    ("ALLOWED_ORIGIN", "https://chat.example.org", "allowed_origins", ("https://chat.example.org",)),
    ("SYSTEM_PROMPT", "You are terse.", "system_prompt", "You are terse."),
    ("RATE_LIMIT_MAX", "30", "rate_limit_max", 30),
    ("RATE_LIMIT_WINDOW", "2 minutes", "rate_limit_window", 120),
    ("OPENAI_BASE_URL", "https://api.groq.com/openai/v1", "openai_base_url", "https://api.groq.com/openai/v1"),
    ("OPENAI_MODEL", "llama-3.1-8b-instant", "openai_model", "llama-3.1-8b-instant"),
    ("JWT_TTL", "5 minutes", "jwt_ttl", 300),
    ("TOKEN_RATE_LIMIT", "5/minute", "token_rate_limit", "5/minute"),
    ("MAX_TOKENS", "512", "max_tokens", 512),
    ("MAX_PROMPT_TOKENS", "4000", "max_prompt_tokens", 4000),
    ("TOKENS_PER_IP", "50000/day", "tokens_per_ip", "50000/day"),
    ("MONTHLY_TOKEN_CAP", "1000000", "monthly_token_cap", 1_000_000),
    ("MONTHLY_SPEND_CAP_USD", "25.50", "monthly_spend_cap_usd", 25.5),
    ("STORAGE_URL", "redis://localhost:6379/0", "storage_url", "redis://localhost:6379/0"),
    ("STORAGE_FAILURE", "open", "storage_failure", "open"),
    ("TRUSTED_PROXIES", "10.0.0.0/8", "trusted_proxies", ("10.0.0.0/8",)),
    ("LOG_FORMAT", "json", "log_format", "json"),
    ("MAX_BODY_BYTES", "65536", "max_body_bytes", 65536),
    ("REQUEST_TIMEOUT", "30", "request_timeout", 30),
    ("JWT_MAX_USES", "1", "jwt_max_uses", 1),
    ("JWT_ISSUER", "my-app", "jwt_issuer", "my-app"),
    ("JWT_AUDIENCE", "my-app-chat", "jwt_audience", "my-app-chat"),
    ("MAX_TOKENS_PARAM", "max_tokens", "max_tokens_param", "max_tokens"),
    ("ALLOW_CLIENT_SYSTEM", "false", "allow_client_system", False),
    ("LOG_LEVEL", "debug", "log_level", "debug"),
    ("UPSTREAM_RETRIES", "0", "upstream_retries", 0),
    ("LLMGUARD_DEMO", "1", "demo", True),
    ("DEMO_PAGE", "no", "demo_page", False),
    ("RATE_LIMIT", "30/minute", "rate_limit", "30 per 60 seconds"),
    ("TOKENS_PER_CLIENT", "50000/day", "tokens_per_ip", "50000/day"),
]


def from_env(**variables: str) -> Settings:
    return Settings.from_env({"OPENAI_API_KEY": KEY, **variables})


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("jwt_secret", None),
        ("allowed_origins", ("http://localhost:5173",)),
        ("system_prompt", ""),
        ("rate_limit_max", 60),
        ("rate_limit_window", 60),
        ("openai_base_url", "https://api.openai.com/v1"),
        ("jwt_ttl", 900),
        ("token_rate_limit", "10/minute"),
        ("max_tokens", 2000),
        ("max_prompt_tokens", 8000),
        ("tokens_per_ip", "100000/day"),
        ("monthly_token_cap", None),
        ("monthly_spend_cap_usd", None),
        ("storage_url", "memory://"),
        ("storage_failure", "closed"),
        ("trusted_proxies", ()),
        ("log_format", "text"),
        ("max_body_bytes", 1_048_576),
        ("request_timeout", 120),
        ("jwt_max_uses", None),
        ("demo", False),
    ],
)
def test_defaults_match_the_design_table(attribute: str, expected: object) -> None:
    for settings in (Settings(openai_api_key=KEY), from_env()):
        assert getattr(settings, attribute) == expected


def test_default_model_is_a_model_name() -> None:
    model = Settings(openai_api_key=KEY).openai_model
    assert model.strip()
    assert model == model.strip()


@pytest.mark.parametrize(("variable", "text", "attribute", "expected"), ENVIRONMENT)
def test_every_variable_is_read_from_the_environment(
    variable: str, text: str, attribute: str, expected: object
) -> None:
    settings = from_env(**{variable: text})
    assert getattr(settings, attribute) == expected


def test_empty_variables_count_as_unset() -> None:
    blank = {variable: ("" if index % 2 else "   ") for index, (variable, *_) in enumerate(ENVIRONMENT)}
    assert Settings.from_env({**blank, "OPENAI_API_KEY": KEY}) == Settings(openai_api_key=KEY)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("30 seconds", 30),
        ("1 minute", 60),
        ("15 minutes", 900),
        ("2h", 7200),
        (" 2 Hours ", 7200),
        ("1 day", 86400),
    ],
)
def test_durations_accept_a_number_with_an_optional_unit(text: str, seconds: int) -> None:
    assert from_env(RATE_LIMIT_WINDOW=text).rate_limit_window == seconds


@pytest.mark.parametrize(
    ("text", "amount", "granularity"),
    [
        ("10/minute", 10, "minute"),
        ("5 per second", 5, "second"),
        ("100000 per day", 100000, "day"),
        (" 20/hour ", 20, "hour"),
    ],
)
def test_rate_strings_reach_the_limiter_as_written(text: str, amount: int, granularity: str) -> None:
    settings = from_env(TOKEN_RATE_LIMIT=text, TOKENS_PER_IP=text)
    for rate in (settings.token_rate_limit, settings.tokens_per_ip):
        assert rate is not None
        item = limits.parse(rate)
        assert (item.amount, item.GRANULARITY.name) == (amount, granularity)


def test_allowed_origins_are_normalised() -> None:
    text = "https://app.example.com/, https://APP.example.com:443,http://localhost:5173 ,http://localhost:80"
    assert from_env(ALLOWED_ORIGIN=text).allowed_origins == (
        "https://app.example.com",
        "http://localhost:5173",
        "http://localhost",
    )


def test_trusted_proxies_take_addresses_and_networks() -> None:
    settings = from_env(TRUSTED_PROXIES="10.0.0.1, 192.168.0.0/16 ,2001:db8::/32,::1")
    assert [ipaddress.ip_network(item) for item in settings.trusted_proxies] == [
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("::1/128"),
    ]


@pytest.mark.parametrize(
    ("variable", "text", "attribute"),
    [
        ("TOKENS_PER_IP", "off", "tokens_per_ip"),
        ("MONTHLY_TOKEN_CAP", "off", "monthly_token_cap"),
        ("MONTHLY_SPEND_CAP_USD", "Off", "monthly_spend_cap_usd"),
        ("JWT_MAX_USES", "off", "jwt_max_uses"),
    ],
)
def test_optional_limits_can_be_switched_off(variable: str, text: str, attribute: str) -> None:
    assert getattr(from_env(**{variable: text}), attribute) is None


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("RATE_LIMIT_MAX", "sixty"),
        ("RATE_LIMIT_MAX", "0"),
        ("RATE_LIMIT_MAX", "-5"),
        ("RATE_LIMIT_WINDOW", "soon"),
        ("RATE_LIMIT_WINDOW", "5 fortnights"),
        ("RATE_LIMIT_WINDOW", "1.5"),
        ("JWT_TTL", "2 days"),
        ("JWT_TTL", "3"),
        ("REQUEST_TIMEOUT", "2 hours"),
        ("TOKEN_RATE_LIMIT", "lots"),
        ("TOKEN_RATE_LIMIT", "0/minute"),
        ("TOKENS_PER_IP", "many per day"),
        ("OPENAI_BASE_URL", "api.openai.com/v1"),
        ("OPENAI_BASE_URL", "ftp://api.example.com/v1"),
        ("OPENAI_BASE_URL", "https://api.example.com/v1?key=1"),
        ("MAX_TOKENS", "2k"),
        ("MAX_PROMPT_TOKENS", "0"),
        ("MONTHLY_TOKEN_CAP", "lots"),
        ("MONTHLY_SPEND_CAP_USD", "-10"),
        ("MONTHLY_SPEND_CAP_USD", "ten dollars"),
        ("STORAGE_URL", "postgres://db/limits"),
        ("STORAGE_URL", "localhost:6379"),
        ("STORAGE_FAILURE", "sometimes"),
        ("TRUSTED_PROXIES", "my-proxy"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("MAX_BODY_BYTES", "1MB"),
        ("JWT_MAX_USES", "once"),
        ("JWT_MAX_USES", "0"),
        ("ALLOWED_ORIGIN", "*"),
        ("ALLOWED_ORIGIN", "null"),
        ("ALLOWED_ORIGIN", "https://app.example.com/chat"),
        ("ALLOWED_ORIGIN", "app.example.com"),
        ("ALLOWED_ORIGIN", "https://app.example.com:99999"),
        ("ALLOWED_ORIGIN", ","),
        ("MAX_TOKENS_PARAM", "max"),
        ("UPSTREAM_RETRIES", "-1"),
        ("LLMGUARD_DEMO", "maybe"),
    ],
)
def test_a_bad_value_names_the_variable_and_shows_the_value(variable: str, text: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(**{variable: text})
    assert variable in str(caught.value)
    assert text in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("JWT_SECRET", "short-secret-Vb8Rq2Lp"),
        ("JWT_SECRET", "k" * 31),
        ("JWT_SECRET", "é" * 15 + "k"),  # 16 characters but 31 bytes
        ("JWT_PREVIOUS_SECRETS", "p" * 40 + ",short-previous-Vb8Rq2Lp"),
        ("OPENAI_API_KEY", "sk-live-Tz4Ny8Pw1 Mx"),
        ("OPENAI_API_KEY", "sk-live-Tz4Ny8Pw1Mx\n"),
    ],
)
def test_a_bad_secret_is_named_but_never_echoed(variable: str, text: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(**{variable: text})
    message = str(caught.value)
    assert variable in message
    assert text.strip() not in message
    assert text.strip()[:12] not in repr(caught.value)


def test_a_secret_is_measured_in_bytes() -> None:
    assert from_env(JWT_SECRET="é" * 16).jwt_secret == "é" * 16


@pytest.mark.parametrize("environ", [{}, {"OPENAI_API_KEY": ""}, {"OPENAI_API_KEY": "  "}])
def test_the_provider_key_is_required_outside_the_demo(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        Settings.from_env(environ)


def test_the_demo_needs_no_provider_key() -> None:
    settings = Settings.from_env({"LLMGUARD_DEMO": "1"})
    assert settings.demo is True
    assert settings.openai_api_key is None


@pytest.mark.parametrize(
    ("argument", "value"),
    [("rate_limit_max", 0), ("jwt_ttl", 5), ("storage_failure", "sometimes"), ("allowed_origins", ["*"])],
)
def test_a_bad_keyword_argument_is_named(argument: str, value: Any) -> None:
    with pytest.raises(SettingsError, match=argument):
        Settings(openai_api_key=KEY, **{argument: value})


def test_repr_never_shows_the_key_or_the_secret() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": KEY, "JWT_SECRET": SECRET})
    assert settings.openai_api_key == KEY
    assert settings.jwt_secret == SECRET
    for text in (repr(settings), str(settings)):
        assert KEY not in text
        assert SECRET not in text


@pytest.mark.parametrize(("base_url", "max_tokens_param", "expected"), TOKEN_PARAM_CASES)
def test_token_limit_param_follows_the_provider_unless_overridden(
    base_url: str, max_tokens_param: Any, expected: str
) -> None:
    settings = Settings(openai_api_key=KEY, openai_base_url=base_url, max_tokens_param=max_tokens_param)
    assert settings.token_limit_param == expected


# -- one declaration per setting ------------------------------------------------------------


def test_every_setting_is_declared_once_with_a_parser_a_check_help_and_what_it_feeds() -> None:
    variables: list[str] = [shorthand.env for shorthand in SHORTHANDS]
    for item, declared in declarations():
        assert callable(declared.parse), item.name
        assert callable(declared.check), item.name
        assert declared.help.strip(), item.name
        assert declared.feeds.strip(), item.name
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", declared.env), item.name
        variables += declared.variables
    assert len(variables) == len(set(variables)), "a variable is declared twice"
    for shorthand in SHORTHANDS:
        assert shorthand.help.strip()
        assert set(shorthand.fields) <= {item.name for item, _ in declarations()}


# Where each ``Name(argument=)`` of a declaration's ``feeds`` is looked up.
FED: dict[str, Callable[..., Any]] = {
    "ChatEndpoint": ChatEndpoint,
    "ClientIP": ClientIP,
    "IPRateLimit": IPRateLimit,
    "JWTAuth": JWTAuth,
    "MetricsEndpoint": MetricsEndpoint,
    "OriginFilter": OriginFilter,
    "SpendAlerts": SpendAlerts,
    "Storage": Storage,
    "TokenBudget": TokenBudget,
    "TokenChallenge": TokenChallenge,
    "TokenEndpoint": TokenEndpoint,
    "create_app": create_app,
    "protocol": protocol,
    "uvicorn.run": uvicorn.run,
}


@pytest.mark.parametrize(("name", "declared"), [(item.name, declared) for item, declared in declarations()])
def test_what_a_setting_feeds_is_a_real_argument(name: str, declared: Any) -> None:
    """A renamed component argument fails here until the declaration says the new name."""
    for callee, argument in re.findall(r"([\w.]+)\((\w*)=?\)", declared.feeds):
        assert callee in FED, f"{name}: feeds {callee}, which this test does not know"
        if argument:
            assert argument in inspect.signature(FED[callee]).parameters, f"{name}: {callee} has no {argument}="


def test_the_configuration_table_is_generated_from_the_declarations() -> None:
    assert table_in(CONFIGURATION_PAGE.read_text(encoding="utf-8")) == markdown(), (
        "docs/reference/configuration.md's settings table differs from the declarations in llmguard/_settings.py: "
        f"run `{REGENERATE}`"
    )


def test_a_page_without_the_table_is_pointed_to_the_configuration_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n", encoding="utf-8")
    assert main([str(readme)]) == 1
    assert "docs/reference/configuration.md" in capsys.readouterr().out
    assert readme.read_text(encoding="utf-8") == "# Title\n"


def test_the_regenerate_command_rewrites_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{START} keep me -->\n| stale |\n{END}\n\nAfter.\n", encoding="utf-8")
    assert main([str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# Title\n\n{START} keep me -->\n| variable |")
    assert text.endswith(f"{END}\n\nAfter.\n")
    assert table_in(text) == markdown()
    assert main([str(readme)]) == 0  # a second run changes nothing
    assert readme.read_text(encoding="utf-8") == text
    assert capsys.readouterr().out.splitlines() == [
        f"{readme}: settings table updated",
        f"{readme}: settings table already up to date",
    ]
    assert main([]) == 0  # no path: the table on stdout
    assert capsys.readouterr().out == markdown()


def test_the_table_has_a_row_for_every_variable() -> None:
    table = markdown()
    for _, declared in declarations():
        for variable in declared.variables:
            assert f"`{variable}`" in table
    assert "`RATE_LIMIT`" in table


# -- aliases and the RATE_LIMIT shorthand --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount", "seconds"),
    [("30/minute", 30, 60), ("1000 per day", 1000, 86400), ("100 per 2 hours", 100, 7200), ("5/second", 5, 1)],
)
def test_rate_limit_sets_the_maximum_and_the_window_at_once(text: str, amount: int, seconds: int) -> None:
    settings = from_env(RATE_LIMIT=text)
    assert (settings.rate_limit_max, settings.rate_limit_window) == (amount, seconds)
    assert settings == from_env(RATE_LIMIT_MAX=str(amount), RATE_LIMIT_WINDOW=str(seconds))


@pytest.mark.parametrize(
    ("variables", "other"),
    [
        ({"RATE_LIMIT": "100/hour", "RATE_LIMIT_MAX": "60"}, "RATE_LIMIT_MAX"),
        ({"RATE_LIMIT": "60/hour", "RATE_LIMIT_WINDOW": "1 minute"}, "RATE_LIMIT_WINDOW"),
        ({"RATE_LIMIT": "100/hour", "RATE_LIMIT_MAX": "60", "RATE_LIMIT_WINDOW": "1 minute"}, "RATE_LIMIT_MAX"),
        ({"TOKENS_PER_IP": "100000/day", "TOKENS_PER_CLIENT": "5000/day"}, "TOKENS_PER_IP"),
    ],
)
def test_two_spellings_that_disagree_are_refused_naming_both(variables: dict[str, str], other: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(**variables)
    message, named = str(caught.value), caught.value.name
    assert named in variables
    assert named != other
    assert f"Setting {named} has value {variables[named]!r}" in message
    assert f"{other} is also set, to {variables[other]!r}" in message


@pytest.mark.parametrize(
    "variables",
    [
        {"RATE_LIMIT": "60/minute", "RATE_LIMIT_MAX": "60", "RATE_LIMIT_WINDOW": "1 minute"},
        {"RATE_LIMIT": "30/hour", "RATE_LIMIT_MAX": "30"},
        {"TOKENS_PER_IP": "5000/day", "TOKENS_PER_CLIENT": "5000/day"},
    ],
)
def test_two_spellings_that_agree_are_accepted(variables: dict[str, str]) -> None:
    settings = from_env(**variables)
    assert settings.to_env()["TOKENS_PER_IP"] == variables.get("TOKENS_PER_IP", "100000/day")
    if "RATE_LIMIT" in variables:
        written, used = limits.parse(variables["RATE_LIMIT"]), limits.parse(settings.rate_limit)
        assert (used.amount, used.get_expiry()) == (written.amount, written.get_expiry())


@pytest.mark.parametrize("text", ["lots", "0/minute", "10 per 400 days"])
def test_a_bad_rate_limit_names_it_and_shows_the_text(text: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(RATE_LIMIT=text)
    assert caught.value.name == "RATE_LIMIT"
    assert repr(text) in str(caught.value)


def test_a_bad_alias_is_named_as_the_user_wrote_it() -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(TOKENS_PER_CLIENT="many per day")
    assert caught.value.name == "TOKENS_PER_CLIENT"
    assert "'many per day'" in str(caught.value)


def test_arguments_win_over_the_rate_limit_variable() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": KEY, "RATE_LIMIT": "100/hour"}, rate_limit_max=5)
    assert (settings.rate_limit_max, settings.rate_limit_window) == (5, 3600)


def test_to_env_unsets_the_other_spellings_and_reads_back() -> None:
    settings = from_env(RATE_LIMIT="100/hour", TOKENS_PER_CLIENT="5000/day")
    environ = settings.to_env()
    assert environ["RATE_LIMIT"] is None
    assert environ["TOKENS_PER_CLIENT"] is None
    assert (environ["RATE_LIMIT_MAX"], environ["TOKENS_PER_IP"]) == ("100", "5000/day")
    assert Settings.from_env({k: v for k, v in environ.items() if v is not None}) == settings
    assert "RATE_LIMIT" not in settings.describe()


# -- the components' own checks, called by the settings ----------------------------------------


def test_settings_report_a_components_check_in_their_own_words() -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(JWT_MAX_USES="0")
    assert str(caught.value) == "Setting JWT_MAX_USES has value '0': must be at least 1 (or None for unlimited)"
    with pytest.raises(SettingsError) as caught:
        Settings(openai_api_key=KEY, jwt_ttl=5)
    assert str(caught.value) == "Setting jwt_ttl has value 5: must be between 10 and 86400 seconds"


@pytest.mark.parametrize(
    ("check", "value", "option"),
    [
        (check_secret, "short", "secret"),
        (check_max_uses, 0, "max_uses"),
        (check_previous_secrets, ["short-previous"], "previous_secrets"),
        (check_ttl, 5, "ttl"),
        (check_origins, ["https://app.example.com/chat"], "allow_origins"),
        (check_origins, "https://app.example.com", "allow_origins"),
        (check_prices, {"my-model": Price(-1, 1)}, "prices"),
        (check_prices, {"my-model": "1/2"}, "prices"),
        (trusted_networks, ["my-proxy"], "trusted_proxies"),
        (header_name, "X-Forwarded-For", "header"),
    ],
)
def test_the_component_checks_the_settings_call_name_the_option(
    check: Callable[..., object], value: object, option: str
) -> None:
    with pytest.raises(ValueError, match=option):
        check(value)
    with pytest.raises(ValueError, match="SOME_VARIABLE"):
        check(value, option="SOME_VARIABLE")


def test_single_strings_are_lists_of_one_as_keyword_arguments() -> None:
    settings = Settings(openai_api_key=KEY, allowed_origins="https://App.example.com/", trusted_proxies="10.0.0.1")  # type: ignore[arg-type]
    assert settings.allowed_origins == ("https://app.example.com",)
    assert settings.trusted_proxies == ("10.0.0.1/32",)
