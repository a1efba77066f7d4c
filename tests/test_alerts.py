"""SpendAlerts: the messages, the once-a-month dedup, retries with backoff, and never in a request's way.

The webhook is an ``httpx.MockTransport`` (``Webhook``) that records each try and
answers from a script; the stack is ``TokenBudget ▶ ChatEndpoint`` in front of
the fake provider, on an in-memory storage. A test waits for what the webhook
receives (events), never for time to pass. The bundled app's wiring and a real
receiver are in test_alerts_e2e.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import anyio
import httpx
import pytest
from harness import HELLO, KEY, ORIGIN, asgi_client, assert_error, find, make_settings, running
from servers import ThreadedServer, closed_port_url
from starlette.requests import Request
from starlette.responses import Response

import llmguard._alerts as alerts_module
from llmguard import (
    ChatEndpoint,
    Settings,
    SettingsError,
    SpendAlerts,
    Storage,
    StorageUnavailable,
    TokenBudget,
    create_app,
)
from llmguard._alerts import (
    STORAGE_ALERT_INTERVAL,
    check_thresholds,
    check_webhook_url,
    parse_thresholds,
    shown_url,
    storage_alert,
    threshold_alert,
)
from llmguard.testing import FakeProvider, FakeReply

# The path of a webhook URL is its credential: it must never be shown.
PATH_SECRET = "Wq8HookKeyZ3"
WEBHOOK = f"https://hooks.example.com/services/T0{PATH_SECRET}/B0/{PATH_SECRET}"
CAP = 1000
#: What one chat with ``FakeReply(text="ok")`` costs: 8 prompt tokens, 1 completion token.
COST = 9
HANG = "hang"


class Webhook:
    """A webhook receiver behind ``httpx.MockTransport``: records each try, answers from a script, then 200.

    A scripted answer is a status code, an exception class (raised as httpx would), or ``HANG``
    (waits for ``release``).
    """

    def __init__(self, *script: int | str | type[Exception]) -> None:
        self.script = list(script)
        self.tries: list[dict[str, Any]] = []
        self.posts: list[dict[str, Any]] = []
        self.release = anyio.Event()
        self._changed = anyio.Event()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == WEBHOOK
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        self.tries.append(body)
        answer = self.script.pop(0) if self.script else 200
        self._notify()
        if answer == HANG:
            await self.release.wait()
            answer = 200
        if isinstance(answer, type):
            raise answer("scripted failure", request=request)  # type: ignore[call-arg]
        if isinstance(answer, str):
            status, retry_after = answer.split(";")
            return httpx.Response(int(status), headers={"retry-after": retry_after})
        if 200 <= answer < 300:
            self.posts.append(body)
            self._notify()
        return httpx.Response(answer)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait for ``condition`` to hold (checked at each try and post)."""
        with anyio.fail_after(10):
            while not condition():
                await self._changed.wait()

    def texts(self) -> list[str]:
        return [post["text"] for post in self.posts]


def month() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m}"


class Stack:
    """``TokenBudget ▶ ChatEndpoint`` with ``SpendAlerts`` to a ``Webhook``, on one storage."""

    def __init__(self, provider: FakeProvider, webhook: Webhook, storage: Storage, **options: Any) -> None:
        alert_options = {"service": "test", "backoff": 0.01, **options.pop("alerts", {})}
        self.alerts = SpendAlerts(WEBHOOK, transport=webhook.transport(), **alert_options)
        self.chat = ChatEndpoint(api_key=KEY, max_tokens=20, transport=provider.transport(), retries=0)
        budget_options = {"tokens_per_client": None, "monthly_token_cap": CAP, **options}
        self.budget = TokenBudget(self.chat, storage=storage, alerts=self.alerts, **budget_options)
        self.provider = provider
        self.storage = storage

    async def spend(self, tokens: int) -> None:
        """Count ``tokens`` on the month, as other instances would have spent them."""
        await self.storage.incr(f"budget:month-tokens:{month()}", expiry=40 * 86400, amount=tokens)

    async def chat_once(self) -> httpx.Response:
        self.provider.enqueue(FakeReply(text="ok"))
        async with asgi_client(self.budget) as client:
            with anyio.fail_after(5):  # a guard against a hang, not a measure
                return await client.post("/api/chat", json=HELLO)


@asynccontextmanager
async def stack(
    provider: FakeProvider, webhook: Webhook, storage: Storage | None = None, **options: Any
) -> AsyncIterator[Stack]:
    built = Stack(provider, webhook, storage or Storage(), **options)
    try:
        async with built.alerts:
            yield built
    finally:
        await built.chat.aclose()


@pytest.fixture(autouse=True)
def _fast_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    # One reading a second per process in production; a test should not wait for it.
    monkeypatch.setattr(alerts_module, "READING_INTERVAL", 0.01)


# -- the messages ------------------------------------------------------------------------


def test_a_spend_threshold_reads_as_dollars() -> None:
    alert = threshold_alert("spend", 80, 40_123_456, 50_000_000, "2026-12", "https://app.example.com")
    assert alert.body == {
        "text": "llmguard: 80% of the monthly spend cap is used ($40.12 of $50.00) for 2026-12.",
        "llmguard": {
            "kind": "threshold",
            "cap": "spend",
            "threshold": 80,
            "used": 40.123456,
            "limit": 50.0,
            "month": "2026-12",
            "service": "https://app.example.com",
        },
    }


def test_a_token_threshold_reads_as_tokens_with_separators_and_100_says_what_follows() -> None:
    alert = threshold_alert("tokens", 100, 1_000_000, 1_000_000, "2027-01", "api.example.com")
    assert alert.text == (
        "llmguard: 100% of the monthly token cap is used (1,000,000 of 1,000,000 tokens) for 2027-01. "
        "New requests are refused until the month ends (UTC)."
    )
    assert (alert.details["used"], alert.details["limit"]) == (1_000_000, 1_000_000)
    assert alert.what == "100% of the monthly token cap"


def test_a_small_spend_cap_is_shown_to_the_tenth_of_a_cent_and_large_ones_with_separators() -> None:
    assert "($0.0040 of $0.5000)" in threshold_alert("spend", 50, 4_000, 500_000, "2026-12", "s").text
    assert "($1,234.50 of $2,000.00)" in threshold_alert("spend", 50, 1_234_500_000, 2_000_000_000, "2026-12", "s").text


def test_the_storage_alert_says_since_when_and_how_often() -> None:
    alert = storage_alert(1_800_000_000.7, "https://app.example.com")
    assert alert.body["llmguard"] == {
        "kind": "storage_failing_open",
        "since": 1_800_000_000,
        "service": "https://app.example.com",
    }
    assert alert.text.startswith(
        "llmguard: the storage is not answering and STORAGE_FAILURE=open, so requests are served without limits"
    )
    assert "since 2027-01-15 08:00:00 UTC on https://app.example.com" in alert.text
    assert "at most every 10 minutes" in alert.text


# -- the URL and the thresholds ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (WEBHOOK, "https://hooks.example.com/…"),
        ("https://discord.com/api/webhooks/123/tok-en/slack", "https://discord.com/…"),
        (f"http://127.0.0.1:8080/hook?key={PATH_SECRET}", "http://127.0.0.1:8080/…"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        (f"https://user:{PATH_SECRET}@hooks.example.com/x", "https://hooks.example.com/…"),
        (f"not a url {PATH_SECRET}", "***"),
        (f"https://hooks.example.com:99999/{PATH_SECRET}", "***"),
    ],
)
def test_a_webhook_url_is_shown_as_its_scheme_and_host_only(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    "url", [f"ftp://hooks.example.com/{PATH_SECRET}", f"hooks.example.com/{PATH_SECRET}", f"https:///{PATH_SECRET}", 42]
)
def test_a_bad_webhook_url_is_refused_without_repeating_it(url: object) -> None:
    with pytest.raises(ValueError, match="expected") as refused:
        check_webhook_url(url)
    assert PATH_SECRET not in str(refused.value)
    with pytest.raises(ValueError, match="expected"):
        SpendAlerts(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "reason"),
    [((), "at least one"), ((0, 50), "between 1 and 100"), ((50, 101), "between 1 and 100"), ((80, 50), "increasing"),
     ((50, 50), "increasing"), ((True,), "whole percents"), ((50.0,), "whole percents"), ("50", "whole percents")],
)  # fmt: skip
def test_thresholds_are_increasing_whole_percents(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_thresholds(value)


def test_thresholds_parse_with_or_without_percent_signs() -> None:
    assert parse_thresholds("50,80, 95 ,100") == (50, 80, 95, 100)
    assert parse_thresholds("25%, 75 %") == (25, 75)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_thresholds("half")


@pytest.mark.parametrize(
    ("options", "message"),
    [({"backoff": 0}, "backoff"), ({"timeout": float("nan")}, "timeout"), ({"attempts": 0}, "attempts"),
     ({"queue_size": 0}, "queue_size")],
)  # fmt: skip
def test_bad_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpendAlerts(WEBHOOK, **options)


def test_the_settings_read_the_url_and_thresholds_and_show_only_the_host() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": KEY, "ALERT_WEBHOOK_URL": WEBHOOK, "ALERT_THRESHOLDS": "25%,90"})
    assert settings.alert_webhook_url == WEBHOOK
    assert settings.alert_thresholds == (25, 90)
    assert settings.arguments("SpendAlerts") == {"url": WEBHOOK, "thresholds": (25, 90)}
    assert settings.describe()["ALERT_WEBHOOK_URL"] == "https://hooks.example.com/…"
    assert PATH_SECRET not in repr(settings)
    defaults = Settings(openai_api_key=KEY)
    assert (defaults.alert_webhook_url, defaults.alert_thresholds) == (None, (50, 80, 95, 100))
    assert Settings.from_env({"OPENAI_API_KEY": KEY, "ALERT_WEBHOOK_URL": "off"}).alert_webhook_url is None


@pytest.mark.parametrize(
    ("variables", "reason"),
    [({"ALERT_WEBHOOK_URL": f"ftp://hooks.example.com/{PATH_SECRET}"}, "http(s) URL"),
     ({"ALERT_WEBHOOK_URL": f"https://hooks.example.com:99999/{PATH_SECRET}"}, "http(s) URL"),
     ({"ALERT_THRESHOLDS": "80,50"}, "increasing"),
     ({"ALERT_THRESHOLDS": "0"}, "between 1 and 100")],
)  # fmt: skip
def test_bad_alert_settings_name_the_variable_and_never_the_url_path(variables: dict[str, str], reason: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"OPENAI_API_KEY": KEY, **variables})
    message = str(refused.value)
    assert message.startswith(f"Setting {next(iter(variables))}")
    assert reason in message
    assert PATH_SECRET not in message


def test_create_app_gives_both_chat_routes_one_alerts_named_after_the_origins() -> None:
    assert find(create_app(make_settings()), TokenBudget).alerts is None
    app = create_app(make_settings(alert_webhook_url=WEBHOOK, monthly_token_cap=CAP))
    budgets = list(_budgets(app))
    assert len(budgets) == 2  # /api/chat and /v1/chat/completions
    alerts = budgets[0].alerts
    assert isinstance(alerts, SpendAlerts)
    assert all(budget.alerts is alerts for budget in budgets)
    assert (alerts.service, alerts.thresholds) == (ORIGIN, (50, 80, 95, 100))
    assert PATH_SECRET not in repr(alerts)


def _budgets(app: object) -> Iterator[TokenBudget]:
    """Every TokenBudget in the ASGI tree of ``app`` (``find`` gives the first)."""
    stack, seen = [app], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, TokenBudget):
            yield node
        stack.extend(child for child in (getattr(node, "app", None), getattr(node, "router", None)) if child)
        stack.extend(getattr(node, "routes", None) or [])


# -- thresholds, through a budget --------------------------------------------------------


async def test_each_threshold_crossed_is_posted_once_with_the_month_and_the_amounts(provider: FakeProvider) -> None:
    webhook = Webhook()
    async with stack(provider, webhook) as built:
        await built.spend(CAP // 2 - COST)  # this request crosses 50 %
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.posts) == 1)
        await built.spend(CAP * 80 // 100 - CAP // 2)  # and this one 80 %
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.posts) == 2)
        # Later requests under 95 % post nothing more: they are read, and found already sent.
        assert (await built.chat_once()).status_code == 200
    assert webhook.texts() == [
        f"llmguard: 50% of the monthly token cap is used (500 of 1,000 tokens) for {month()}.",
        f"llmguard: 80% of the monthly token cap is used (809 of 1,000 tokens) for {month()}.",
    ]
    assert webhook.posts[1]["llmguard"] == {
        "kind": "threshold", "cap": "tokens", "threshold": 80, "used": 809, "limit": 1000, "month": month(),
        "service": "test",
    }  # fmt: skip
    assert await built.storage.get(f"alert:tokens:{month()}:50") == 1
    assert await built.storage.get(f"alert:tokens:{month()}:95") == 0


async def test_thresholds_crossed_at_once_are_each_posted_in_order(provider: FakeProvider) -> None:
    webhook = Webhook()
    async with stack(provider, webhook) as built:
        await built.spend(CAP * 96 // 100)
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.posts) == 3)
    assert [post["llmguard"]["threshold"] for post in webhook.posts] == [50, 80, 95]


async def test_a_cap_that_refuses_a_request_counts_as_reached(provider: FakeProvider) -> None:
    # 995 of 1,000: a request needs more than the 5 left, so it is refused, and the cap is reached
    # in effect though the count never lands on it.
    webhook = Webhook()
    async with stack(provider, webhook) as built:
        await built.spend(995)
        assert_error(await built.chat_once(), 503, "TokenCapReached")
        await webhook.until(lambda: len(webhook.posts) == 4)
    assert webhook.posts[-1]["llmguard"]["threshold"] == 100
    assert webhook.texts()[-1] == (
        f"llmguard: 100% of the monthly token cap is used (995 of 1,000 tokens) for {month()}. "
        "New requests are refused until the month ends (UTC)."
    )
    assert provider.requests == []


async def test_the_spend_cap_is_watched_in_dollars(provider: FakeProvider) -> None:
    webhook = Webhook()
    async with stack(provider, webhook, monthly_token_cap=None, monthly_spend_cap_usd=0.0001) as built:
        # gpt-4.1-mini: 8 prompt tokens at $0.40/M and 1 output token at $1.60/M = $0.0000048.
        await built.storage.incr(f"budget:month-spend:{month()}", expiry=40 * 86400, amount=50)
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.posts) == 1)
    assert webhook.posts[0]["llmguard"]["cap"] == "spend"
    assert webhook.posts[0]["llmguard"]["limit"] == 0.0001
    assert webhook.texts() == [f"llmguard: 50% of the monthly spend cap is used ($0.0001 of $0.0001) for {month()}."]


async def test_requests_that_reserve_nothing_do_not_read(provider: FakeProvider) -> None:
    webhook = Webhook()
    async with stack(provider, webhook) as built:
        await built.spend(CAP)
        async with asgi_client(built.budget) as client:
            assert_error(await client.post("/api/chat", content=b"{"), 400, "InvalidRequest")
        assert not built.alerts._wake.is_set()
        assert built.alerts._noticed == {}
    assert webhook.tries == []


async def test_the_month_is_read_at_most_once_per_interval_whatever_the_traffic(
    provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alerts_module, "READING_INTERVAL", 3600)
    webhook = Webhook()
    async with stack(provider, webhook) as built:
        readings: list[float] = []
        month_usage = built.budget.month_usage

        async def counted(now: float | None = None) -> dict[str, tuple[int, int]]:
            readings.append(time.time())
            return await month_usage(now)

        built.budget.month_usage = counted  # type: ignore[method-assign]
        await built.spend(CAP // 2)
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.posts) == 1)  # the first reading, at once
        for _ in range(10):
            assert (await built.chat_once()).status_code == 200
        # The next reading waits for the interval to end: no round trip per request.
        assert len(readings) == 1
    assert len(webhook.posts) == 1


async def test_two_instances_on_one_storage_post_each_threshold_once(provider: FakeProvider) -> None:
    storage = Storage()
    first, second = Webhook(), Webhook()
    async with stack(provider, first, storage) as one, stack(provider, second, storage) as other:
        await one.spend(CAP * 96 // 100)
        # Each reads the month and counts each threshold it finds crossed (as after a request of its own).
        await one.alerts.check(one.budget)
        await other.alerts.check(other.budget)
        await one.alerts.check(one.budget)  # a later reading decides nothing again
    # Leaving the contexts posted what was queued: the first to count each threshold posted it.
    assert [post["llmguard"]["threshold"] for post in first.posts] == [50, 80, 95]
    assert second.tries == []
    assert [await storage.get(f"alert:tokens:{month()}:{t}") for t in (50, 80, 95, 100)] == [2, 2, 2, 0]


async def test_a_restarted_instance_does_not_post_again_this_month(provider: FakeProvider) -> None:
    storage = Storage()
    webhook = Webhook()
    async with stack(provider, webhook, storage) as built:
        await built.spend(CAP // 2)
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.posts) == 1)
    again = Webhook()
    async with stack(provider, again, storage) as restarted:
        await restarted.alerts.check(restarted.budget)
    assert again.tries == []
    assert await storage.get(f"alert:tokens:{month()}:50") == 2


# -- posting: retries, backoff, and never in the way --------------------------------------


@asynccontextmanager
async def running_alerts(webhook: Webhook, **options: Any) -> AsyncIterator[SpendAlerts]:
    async with SpendAlerts(WEBHOOK, transport=webhook.transport(), **{"backoff": 0.01, **options}) as alerts:
        yield alerts


ALERT = threshold_alert("tokens", 80, 800, 1000, "2026-12", "test")


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmguard.alerts" and "retrying" in r.getMessage()]


async def test_a_post_is_retried_with_exponential_backoff_on_5xx_429_connect_errors_and_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "llmguard.alerts")
    webhook = Webhook(500, 429, httpx.ConnectError, httpx.ReadTimeout, 200)
    async with running_alerts(webhook) as alerts:
        assert await alerts.post(ALERT) is True
    assert len(webhook.tries) == 5
    assert webhook.posts == [ALERT.body]
    where, what = "spend alert webhook https://hooks.example.com/…", "(80% of the monthly token cap)"
    assert retry_lines(caplog) == [
        f"{where} answered 500; retrying in 0.01 s {what}",
        f"{where} answered 429; retrying in 0.02 s {what}",
        f"{where} ConnectError; retrying in 0.04 s {what}",
        f"{where} timed out; retrying in 0.08 s {what}",
    ]
    assert PATH_SECRET not in caplog.text


async def test_a_hanging_webhook_is_given_up_on_at_the_deadline_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    webhook = Webhook(HANG, 200)
    async with running_alerts(webhook, timeout=0.05) as alerts:
        assert await alerts.post(ALERT) is True
    assert len(webhook.tries) == 2
    assert "timed out; retrying" in retry_lines(caplog)[0]


async def test_a_429_retry_after_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    webhook = Webhook("429;0.05", 200)
    async with running_alerts(webhook) as alerts:
        assert await alerts.post(ALERT) is True
    assert "answered 429; retrying in 0.05 s" in retry_lines(caplog)[0]


async def test_after_the_last_attempt_it_gives_up_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    webhook = Webhook(*[503] * 10)
    async with running_alerts(webhook, attempts=3) as alerts:
        assert await alerts.post(ALERT) is False
    assert len(webhook.tries) == 3
    assert "spend alert not posted: https://hooks.example.com/… answered 503, 3 tries" in caplog.text


@pytest.mark.parametrize("status", [400, 403, 404, 301])
async def test_a_refusal_is_not_retried(status: int, caplog: pytest.LogCaptureFixture) -> None:
    webhook = Webhook(status)
    async with running_alerts(webhook) as alerts:
        assert await alerts.post(ALERT) is False
    assert len(webhook.tries) == 1
    assert f"answered {status} (80% of the monthly token cap); not retried" in caplog.text


async def test_a_hanging_webhook_never_slows_a_request(provider: FakeProvider) -> None:
    webhook = Webhook(HANG)
    async with stack(provider, webhook, alerts={"timeout": 3600}) as built:
        await built.spend(CAP // 2)
        assert (await built.chat_once()).status_code == 200
        await webhook.until(lambda: len(webhook.tries) == 1)  # the post is hanging now
        # Requests go on, and end, while it hangs (even ones that cross the next threshold).
        await built.spend(CAP * 30 // 100)
        for _ in range(3):
            assert (await built.chat_once()).status_code == 200
        assert webhook.posts == []
        assert not webhook.release.is_set()
        webhook.release.set()
        await webhook.until(lambda: len(webhook.posts) == 2)
    assert [post["llmguard"]["threshold"] for post in webhook.posts] == [50, 80]


async def test_a_full_queue_drops_alerts_with_a_warning(
    provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    webhook = Webhook(HANG)
    thresholds = tuple(range(10, 101, 10))
    async with stack(provider, webhook, alerts={"queue_size": 1, "thresholds": thresholds, "timeout": 3600}) as built:
        await built.spend(CAP)
        await webhook.until(lambda: True)  # the poster is waiting for work
        await built.alerts.check(built.budget)  # ten thresholds crossed at once
        dropped = [r for r in caplog.records if r.getMessage().startswith("spend alert dropped")]
        webhook.release.set()
    # One or two made it (one in the queue, maybe one taken by the poster already); every other
    # one was dropped, each with a warning, and the request path never waited for room.
    assert len(webhook.posts) in (1, 2)
    assert len(webhook.posts) + len(dropped) == len(thresholds)
    assert dropped[-1].getMessage() == (
        "spend alert dropped (100% of the monthly token cap): the queue of alerts waiting to be posted is full (1)"
    )


async def test_an_alert_sent_while_not_running_is_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    alerts = SpendAlerts(WEBHOOK)
    alerts.send(ALERT)
    alerts.send(ALERT)
    warnings = [r.getMessage() for r in caplog.records if r.name == "llmguard.alerts"]
    assert len(warnings) == 1
    assert "SpendAlerts is not running" in warnings[0]


async def test_shutting_down_posts_what_is_queued(provider: FakeProvider) -> None:
    webhook = Webhook()
    async with running_alerts(webhook) as alerts:
        for threshold in (50, 80, 95):
            alerts.send(threshold_alert("tokens", threshold, threshold * 10, 1000, "2026-12", "test"))
    assert [post["llmguard"]["threshold"] for post in webhook.posts] == [50, 80, 95]


async def test_it_runs_once_at_a_time() -> None:
    alerts = SpendAlerts(WEBHOOK, transport=Webhook().transport())
    async with alerts:
        with pytest.raises(RuntimeError, match="already running"):
            await alerts.__aenter__()
    async with alerts:  # and again after it stopped
        pass


# -- the storage failing open ---------------------------------------------------------------


async def test_a_storage_failing_open_is_alerted_at_most_every_ten_minutes(provider: FakeProvider) -> None:
    webhook = Webhook()
    storage = Storage(closed_port_url(), failure="open", timeout=0.5)
    async with stack(provider, webhook, storage) as built:
        await _fail(storage)
        await webhook.until(lambda: len(webhook.posts) == 1)
        kind = webhook.posts[0]["llmguard"]
        assert kind["kind"] == "storage_failing_open"
        assert abs(kind["since"] - time.time()) < 60
        # Failing again at once: nothing more. (Shown by an alert sent after it arriving next.)
        await _fail(storage)
        built.alerts.send(ALERT)
        await webhook.until(lambda: len(webhook.posts) == 2)
        assert webhook.posts[1] == ALERT.body
        # Ten minutes later, the outage still on: once more, saying when it began.
        built.alerts._storage_alert_at -= STORAGE_ALERT_INTERVAL
        built.alerts._last_failure -= 30
        await _fail(storage)
        await webhook.until(lambda: len(webhook.posts) == 3)
        assert webhook.posts[2]["llmguard"] == kind


async def test_a_storage_failing_closed_sends_no_alert(provider: FakeProvider) -> None:
    webhook = Webhook()
    storage = Storage(closed_port_url(), timeout=0.5)
    async with stack(provider, webhook, storage) as built:
        await _fail(storage)
        built.alerts.send(ALERT)
        await webhook.until(lambda: len(webhook.posts) == 1)
    assert webhook.posts == [ALERT.body]


async def _fail(storage: Storage) -> None:
    with pytest.raises(StorageUnavailable):
        await storage.get("anything")


# -- the bundled app ----------------------------------------------------------------------


class Receiver:
    """A real webhook receiver on loopback (uvicorn in a thread): records each post."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.arrived = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        self.posts.append(json.loads(await request.body()))
        self.arrived.set()
        await Response(status_code=204)(scope, receive, send)


async def test_the_bundled_app_alerts_a_storage_failing_open_and_warns_there_is_no_cap(
    provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "llmguard.alerts")
    receiver = Receiver()
    with ThreadedServer(receiver) as server:
        url = f"{server.url}/hooks/T0{PATH_SECRET}/{PATH_SECRET}"
        overrides: dict[str, Any] = {
            "alert_webhook_url": url,
            "storage_url": closed_port_url(),
            "storage_failure": "open",
        }
        async with running(provider, storage_timeout=0.5, **overrides) as harness:
            # Minting goes through the request limit, on the storage: served, unlimited, and alerted.
            assert (await harness.client.post("/api/token")).status_code == 200
            assert await anyio.to_thread.run_sync(receiver.arrived.wait, 10)
    assert [post["llmguard"]["kind"] for post in receiver.posts] == ["storage_failing_open"]
    assert receiver.posts[0]["llmguard"]["service"] == ORIGIN
    assert (
        "ALERT_WEBHOOK_URL is set but there is no monthly cap (MONTHLY_TOKEN_CAP or MONTHLY_SPEND_CAP_USD), so no "
        "spend alert can be sent: only the storage-failing-open alert"
    ) in caplog.text
    assert f"spend alerts go to {server.url}/… at 50, 80, 95, 100% of each monthly cap" in caplog.text
    assert PATH_SECRET not in caplog.text


async def test_the_bundled_app_posts_a_threshold(provider: FakeProvider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "llmguard.alerts")
    receiver = Receiver()
    with ThreadedServer(receiver) as server:
        url = f"{server.url}/hooks/T0{PATH_SECRET}/{PATH_SECRET}"
        async with running(provider, alert_webhook_url=url, monthly_token_cap=100, alert_thresholds=(5,)) as harness:
            provider.enqueue(FakeReply(text="ok"))
            assert (await harness.chat()).status_code == 200
            assert await anyio.to_thread.run_sync(receiver.arrived.wait, 10)
    assert (
        receiver.posts[0]["text"] == f"llmguard: 5% of the monthly token cap is used (9 of 100 tokens) for {month()}."
    )
    assert "no monthly cap" not in caplog.text
    assert PATH_SECRET not in caplog.text
