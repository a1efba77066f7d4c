"""TokenChallenge: what a script must do to mint a token, and every way it might try not to."""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from altcha.v1 import ChallengeOptions, create_challenge
from harness import ORIGIN, PEER, SECRET, Harness, assert_error, assert_no_secrets, bearer, make_settings
from starlette.applications import Starlette
from starlette.routing import Route

from llmguard import IPRateLimit, OriginFilter, Settings, Storage, TokenChallenge, TokenEndpoint
from llmguard._challenge import parse_ladder
from llmguard.testing import FakeSiteverify, solve_challenge_payload

CAPTCHA_SECRET = "0x-captcha-secret-for-tests-only"
SITE_KEY = "0x-site-key"
Factory = Callable[..., Any]


async def challenged(harness: Harness, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """The challenge a token request without a solution is answered with."""
    body = assert_error(await (client or harness.client).post("/api/token"), 401, "ChallengeRequired")
    challenge: dict[str, Any] = body["challenge"]
    return challenge


async def mint_with(harness: Harness, solution: str, client: httpx.AsyncClient | None = None) -> httpx.Response:
    return await (client or harness.client).post("/api/token", json={"solution": solution})


async def solved_mint(harness: Harness, client: httpx.AsyncClient | None = None) -> str:
    solution = solve_challenge_payload(await challenged(harness, client))
    response = await mint_with(harness, solution, client)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def tampered(solution: str, **changes: Any) -> str:
    payload = json.loads(base64.b64decode(solution))
    payload.update(changes)
    return base64.b64encode(json.dumps(payload).encode()).decode()


def own_challenge(*, secret: str = SECRET, expires_in: float = 300, params: dict[str, str]) -> dict[str, Any]:
    """A challenge made with the server's own signing key (as the operator, who knows JWT_SECRET, could)."""
    probe = TokenChallenge(secret=secret)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in)
    options = ChallengeOptions(algorithm="SHA-256", max_number=1000, hmac_key=probe.key, expires=expires, params=params)
    made = create_challenge(options)
    return {"algorithm": "SHA-256", "challenge": made.challenge, "maxnumber": 1000, "salt": made.salt,
            "signature": made.signature}  # fmt: skip


# -- proof-of-work


async def test_a_token_needs_a_solved_challenge_and_then_works_for_chat(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow")
    refused = await harness.client.post("/api/token")
    assert refused.headers["www-authenticate"] == 'LLMGuard-Challenge kind="pow"'
    challenge = await challenged(harness)
    assert challenge["kind"] == "pow"
    assert challenge["algorithm"] == "SHA-256"
    assert challenge["maxnumber"] == 100_000  # the first rung of the default ladder
    assert challenge["step"] == 0
    token = await solved_mint(harness)
    response = await harness.client.post("/api/chat", json={"messages": [{"role": "user", "content": "Hi"}]},
                                         headers=bearer(token))  # fmt: skip
    assert response.status_code == 200, response.text


async def test_get_challenge_answers_what_the_token_endpoint_asks(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow")
    response = await harness.client.get("/api/challenge")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    challenge = response.json()
    assert set(challenge) == {"kind", "algorithm", "challenge", "maxnumber", "salt", "signature", "expires_at", "step"}
    assert (await mint_with(harness, solve_challenge_payload(challenge))).status_code == 200
    # Same-origin pages send no Origin on a GET: they may POST for one.
    assert (await harness.client.post("/api/challenge")).json()["kind"] == "pow"
    assert_error(await harness.client.put("/api/challenge"), 405, "MethodNotAllowed")


async def test_a_solution_is_good_once(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow")
    solution = solve_challenge_payload(await challenged(harness))
    assert (await mint_with(harness, solution)).status_code == 200
    body = assert_error(await mint_with(harness, solution), 403, "ChallengeFailed")
    assert "used already" in body["message"]
    assert body["challenge"]["kind"] == "pow"  # a fresh one to solve
    assert body["challenge"]["challenge"] != json.loads(base64.b64decode(solution))["challenge"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"number": -1}, "does not solve", id="wrong-number"),
        pytest.param({"signature": "0" * 64}, "does not solve", id="forged-signature"),
        pytest.param({"challenge": "f" * 64}, "does not solve", id="another-challenge"),
        pytest.param({"algorithm": "SHA-1"}, "SHA-256", id="weaker-algorithm"),
        pytest.param({"number": "7"}, "not an ALTCHA payload", id="number-as-text"),
        pytest.param({"salt": None}, "not an ALTCHA payload", id="no-salt"),
    ],
)
async def test_a_wrong_or_forged_solution_is_refused(
    harness_factory: Factory, change: dict[str, Any], message: str
) -> None:
    harness = await harness_factory(token_challenge="pow")
    solution = solve_challenge_payload(await challenged(harness))
    body = assert_error(await mint_with(harness, tampered(solution, **change)), 403, "ChallengeFailed")
    assert message in body["message"]
    # The untouched solution still works: a refused forgery does not use it up.
    assert (await mint_with(harness, solution)).status_code == 200


@pytest.mark.parametrize(
    "solution",
    ["not base64!", base64.b64encode(b"not json").decode(), base64.b64encode(b"[1, 2]").decode(), "x" * 5000, 42],
)
async def test_garbage_for_a_solution_is_a_clear_403(harness_factory: Factory, solution: object) -> None:
    harness = await harness_factory(token_challenge="pow")
    body = assert_error(await harness.client.post("/api/token", json={"solution": solution}), 403, "ChallengeFailed")
    assert body["challenge"]["kind"] == "pow"


async def test_a_challenge_signed_by_another_server_is_refused(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow")
    tag = TokenChallenge(secret=SECRET).client_tag({"type": "http", "client": (PEER, 1), "headers": []})
    foreign = own_challenge(secret="another-server-secret-0123456789abcdef", params={"c": tag, "s": "9"})
    body = assert_error(await mint_with(harness, solve_challenge_payload(foreign)), 403, "ChallengeFailed")
    assert "does not solve a challenge of this server" in body["message"]


async def test_an_expired_challenge_is_refused(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow")
    tag = TokenChallenge(secret=SECRET).client_tag({"type": "http", "client": (PEER, 1), "headers": []})
    expired = own_challenge(expires_in=-5, params={"c": tag, "s": "0"})
    body = assert_error(await mint_with(harness, solve_challenge_payload(expired)), 403, "ChallengeFailed")
    assert "expired" in body["message"]
    # The same, still valid, is accepted: what was refused was the time.
    valid = own_challenge(params={"c": tag, "s": "0"})
    assert (await mint_with(harness, solve_challenge_payload(valid))).status_code == 200


async def test_a_challenge_solved_for_one_client_does_not_mint_for_another(harness_factory: Factory) -> None:
    """A solving farm cannot hand its solutions to a botnet: each challenge names its client."""
    harness = await harness_factory(token_challenge="pow")
    solution = solve_challenge_payload(await challenged(harness))
    other = harness.client_from("198.51.100.20")
    body = assert_error(await mint_with(harness, solution, other), 403, "ChallengeFailed")
    assert "another client" in body["message"]
    assert (await mint_with(harness, solution)).status_code == 200


async def test_the_work_grows_with_the_clients_mints_then_it_is_refused(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow", challenge_ladder="0=1000, 2=20000, 4=refuse")
    rungs = []
    for _ in range(4):
        challenge = await challenged(harness)
        rungs.append((challenge["step"], challenge["maxnumber"]))
        assert (await mint_with(harness, solve_challenge_payload(challenge))).status_code == 200
    assert rungs == [(0, 1000), (0, 1000), (1, 20000), (1, 20000)]
    refused = assert_error(await harness.client.post("/api/token"), 429, "RateLimitExceeded")
    assert 0 < refused["retry_after"] <= 3600
    assert_error(await harness.client.get("/api/challenge"), 429, "RateLimitExceeded")
    # Another client starts at the bottom.
    other = harness.client_from("198.51.100.21")
    assert (await challenged(harness, other))["maxnumber"] == 1000


async def test_cheap_challenges_fetched_in_bulk_go_stale_as_the_client_climbs(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow", challenge_ladder="0=1000, 2=20000, 9=refuse")
    stock = [solve_challenge_payload(await challenged(harness)) for _ in range(3)]  # all on rung 0
    assert (await mint_with(harness, stock[0])).status_code == 200
    assert (await mint_with(harness, stock[1])).status_code == 200
    body = assert_error(await mint_with(harness, stock[2]), 403, "ChallengeFailed")
    assert "easier than this client's now" in body["message"]
    assert body["challenge"]["maxnumber"] == 20000  # the fresh one is on the client's rung


async def test_solutions_sent_at_once_each_take_their_own_place_on_the_ladder(
    harness_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four cheap solutions sent together, each judged by the rung read before any of them counted:
    the count each one makes decides, so two mint on rung 0 and two are refused as too easy."""
    harness = await harness_factory(token_challenge="pow", challenge_ladder="0=1000, 2=20000, 9=refuse")
    stock = [solve_challenge_payload(await challenged(harness)) for _ in range(4)]  # all on rung 0
    position = TokenChallenge.position
    read = 0
    all_read = anyio.Event()

    async def read_together(self: TokenChallenge, scope: Any) -> Any:
        nonlocal read
        found = await position(self, scope)
        read += 1
        if read == len(stock):
            all_read.set()
        await all_read.wait()  # every request has read the rung before any counts its mint
        return found

    monkeypatch.setattr(TokenChallenge, "position", read_together)
    answers: list[httpx.Response] = []

    async def send(solution: str) -> None:
        answers.append(await mint_with(harness, solution))

    async with anyio.create_task_group() as tasks:
        for solution in stock:
            tasks.start_soon(send, solution)
    assert sorted(answer.status_code for answer in answers) == [200, 200, 403, 403]
    for answer in answers:
        if answer.status_code == 403:
            body = assert_error(answer, 403, "ChallengeFailed")
            assert "easier than this client's now" in body["message"]
            assert body["challenge"]["maxnumber"] == 20000
    monkeypatch.undo()
    assert (await challenged(harness))["step"] == 1  # two mints counted, not four


async def test_spending_the_token_window_climbs_the_ladder() -> None:
    """Each 10 % of its token window a client has used counts as one more mint."""
    shares = {PEER: 0.45}

    async def spent(client: str) -> float:
        return shares.get(client, 0.0)

    gate = TokenChallenge(secret=SECRET, ladder="0=1000, 4=5000, 5=refuse", spent=spent)
    heavy = await gate.position({"type": "http", "client": (PEER, 1), "headers": []})
    light = await gate.position({"type": "http", "client": ("198.51.100.9", 1), "headers": []})
    assert (heavy.mints, heavy.step) == (4, 5000)
    assert (light.mints, light.step) == (0, 1000)


async def test_a_client_that_spent_its_window_climbs_in_the_bundled_app(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow", challenge_ladder="0=1000, 2=20000, 9=refuse",
                                    tokens_per_ip="100/day")  # fmt: skip
    token = await solved_mint(harness)  # one mint: still the first rung
    assert (await challenged(harness))["maxnumber"] == 1000
    response = await harness.chat(token=token)  # some tens of tokens: a tenth or more of the window
    assert response.status_code == 200, response.text
    assert (await challenged(harness))["maxnumber"] == 20000


async def test_the_body_is_checked_and_the_authenticate_hook_can_still_read_it(harness_factory: Factory) -> None:
    seen: list[Any] = []

    async def authenticate(request: Any) -> dict[str, Any]:
        seen.append(await request.json())
        return {"sub": "user-1"}

    harness = await harness_factory(token_challenge="pow", authenticate=authenticate)
    assert_error(await harness.client.post("/api/token", content=b"{not json"), 400, "InvalidRequest")
    assert_error(await harness.client.post("/api/token", json=["solution"]), 422, "InvalidRequest")
    assert_error(await harness.client.post("/api/token", content=b"x" * 9000), 413, "PayloadTooLarge")
    assert seen == []  # refused before the hook ran
    solution = solve_challenge_payload(await challenged(harness))
    assert (await harness.client.post("/api/token", json={"solution": solution, "user": "u"})).status_code == 200
    assert seen == [{"solution": solution, "user": "u"}]


async def test_off_asks_for_nothing(harness: Harness) -> None:
    assert (await harness.client.post("/api/token")).status_code == 200
    assert (await harness.client.get("/api/challenge")).json() == {"kind": "off"}


# -- CAPTCHAs


async def captcha_harness(harness_factory: Factory, verifier: FakeSiteverify | None, **overrides: Any) -> Harness:
    values: dict[str, Any] = {
        "token_challenge": "turnstile",
        "captcha_site_key": SITE_KEY,
        "captcha_secret": CAPTCHA_SECRET,
    }
    transport = verifier.transport() if verifier is not None else None
    harness: Harness = await harness_factory(captcha_transport=transport, **values | overrides)
    return harness


async def test_turnstile_mints_for_a_response_its_verifier_vouches_for(harness_factory: Factory) -> None:
    verifier = FakeSiteverify(secret=CAPTCHA_SECRET)
    harness = await captcha_harness(harness_factory, verifier)
    challenge = await challenged(harness)
    assert challenge == {
        "kind": "turnstile",
        "site_key": SITE_KEY,
        "action": "llmguard-token",
        "script": "https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit",
    }
    response = await mint_with(harness, verifier.issue(hostname="app.example.com"))
    assert response.status_code == 200, response.text
    assert verifier.requests[-1]["secret"] == CAPTCHA_SECRET
    assert verifier.requests[-1]["remoteip"] == PEER
    refused = await mint_with(harness, "made-up")
    assert_no_secrets(json.dumps(challenge) + refused.text + str(refused.headers), [CAPTCHA_SECRET])


@pytest.mark.parametrize(
    ("issued", "message"),
    [
        pytest.param({"hostname": "evil.example.net"}, "another site", id="wrong-hostname"),
        pytest.param({"hostname": "app.example.com", "action": "login"}, "another action", id="wrong-action"),
    ],
)
async def test_a_captcha_from_elsewhere_is_refused(
    harness_factory: Factory, issued: dict[str, Any], message: str
) -> None:
    verifier = FakeSiteverify(secret=CAPTCHA_SECRET)
    harness = await captcha_harness(harness_factory, verifier)
    body = assert_error(await mint_with(harness, verifier.issue(**issued)), 403, "ChallengeFailed")
    assert message in body["message"]
    assert body["challenge"]["kind"] == "turnstile"


async def test_a_captcha_response_is_good_once_even_if_the_verifier_forgets(harness_factory: Factory) -> None:
    verifier = FakeSiteverify(secret=CAPTCHA_SECRET)
    harness = await captcha_harness(harness_factory, verifier)
    response = verifier.issue(hostname="app.example.com")
    assert (await mint_with(harness, response)).status_code == 200
    body = assert_error(await mint_with(harness, response), 403, "ChallengeFailed")
    assert "expired or was used already" in body["message"]  # the verifier's own duplicate check
    verifier.issued[response].used = False  # a verifier that would vouch twice: the storage still says no
    body = assert_error(await mint_with(harness, response), 403, "ChallengeFailed")
    assert "used already" in body["message"]


async def test_an_unknown_captcha_response_is_refused(harness_factory: Factory) -> None:
    harness = await captcha_harness(harness_factory, FakeSiteverify(secret=CAPTCHA_SECRET))
    body = assert_error(await mint_with(harness, "made-up-response"), 403, "ChallengeFailed")
    assert body["message"] == "The CAPTCHA was not solved."


class Unreachable(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)


async def test_a_verifier_that_is_down_slow_or_failing_gets_503_never_a_token(
    harness_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented answer: 503 ChallengeUnavailable with Retry-After, and a warning in the log."""
    down = await harness_factory(
        token_challenge="turnstile", captcha_site_key=SITE_KEY, captcha_secret=CAPTCHA_SECRET,
        captcha_transport=Unreachable(),
    )  # fmt: skip
    body = assert_error(await mint_with(down, "any-response"), 503, "ChallengeUnavailable")
    assert body["retry_after"] == 5
    slow_verifier = FakeSiteverify(secret=CAPTCHA_SECRET)
    slow_verifier.delay = 2
    slow = await captcha_harness(harness_factory, slow_verifier, captcha_timeout=0.5)
    assert_error(await mint_with(slow, slow_verifier.issue(hostname="app.example.com")), 503, "ChallengeUnavailable")
    failing_verifier = FakeSiteverify(secret=CAPTCHA_SECRET)
    failing_verifier.status = 500
    failing = await captcha_harness(harness_factory, failing_verifier)
    issued = failing_verifier.issue(hostname="app.example.com")
    assert_error(await mint_with(failing, issued), 503, "ChallengeUnavailable")
    assert any("siteverify" in record.getMessage() for record in caplog.records)
    assert_no_secrets(caplog.text, [CAPTCHA_SECRET])


async def test_a_wrong_captcha_secret_is_the_servers_fault_said_in_the_log(
    harness_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = FakeSiteverify(secret="the-right-secret")
    harness = await captcha_harness(harness_factory, verifier)
    with caplog.at_level(logging.ERROR, "llmguard.challenge"):
        assert_error(await mint_with(harness, verifier.issue(hostname="app.example.com")), 503, "ChallengeUnavailable")
    assert "CAPTCHA_SECRET" in caplog.text
    assert_no_secrets(caplog.text, [CAPTCHA_SECRET])


async def test_pow_escalates_to_the_captcha_at_its_rung(harness_factory: Factory) -> None:
    verifier = FakeSiteverify(secret=CAPTCHA_SECRET)
    harness = await captcha_harness(
        harness_factory, verifier, token_challenge="pow+turnstile", challenge_ladder="0=1000, 1=captcha, 3=refuse"
    )
    first = await challenged(harness)
    assert first["kind"] == "pow"
    assert (await mint_with(harness, solve_challenge_payload(first))).status_code == 200
    second = await challenged(harness)
    assert second["kind"] == "turnstile"
    # Work no longer pays on this rung.
    stale = assert_error(await mint_with(harness, solve_challenge_payload(first)), 403, "ChallengeFailed")
    assert stale["challenge"]["kind"] == "turnstile"
    assert (await mint_with(harness, verifier.issue(hostname="app.example.com"))).status_code == 200
    assert (await mint_with(harness, verifier.issue(hostname="app.example.com"))).status_code == 200
    assert_error(await harness.client.post("/api/token"), 429, "RateLimitExceeded")


async def test_pow_without_a_captcha_skips_the_captcha_rung(harness_factory: Factory) -> None:
    harness = await harness_factory(token_challenge="pow", challenge_ladder="0=1000, 1=2000, 2=captcha, 4=refuse")
    for expected in (1000, 2000, 2000, 2000):
        challenge = await challenged(harness)
        assert (challenge["kind"], challenge["maxnumber"]) == ("pow", expected)
        assert (await mint_with(harness, solve_challenge_payload(challenge))).status_code == 200
    assert_error(await harness.client.post("/api/token"), 429, "RateLimitExceeded")


# -- the storage


async def test_a_storage_that_is_down_refuses_closed_and_serves_the_work_checked_open(
    harness_factory: Factory, broken_redis_url: str
) -> None:
    closed = await harness_factory(
        token_challenge="pow", storage_url=broken_redis_url, storage_timeout=0.2, tokens_per_ip="1000/day"
    )
    assert_error(await closed.client.post("/api/token"), 503, "StorageUnavailable")
    opened = await harness_factory(
        token_challenge="pow", storage_url=broken_redis_url, storage_timeout=0.2, storage_failure="open",
        token_rate_limit="100000/minute", tokens_per_ip="1000/day",  # the ladder reads the window too
    )  # fmt: skip
    challenge = await challenged(opened)
    assert challenge["step"] == 0  # the rung is unknown: the first
    assert (await mint_with(opened, solve_challenge_payload(challenge))).status_code == 200
    assert_error(await mint_with(opened, "bm90IGEgc29sdXRpb24="), 403, "ChallengeFailed")  # the work is still checked


# -- settings


def test_the_bundled_server_asks_for_proof_of_work_by_default() -> None:
    assert Settings(openai_api_key="sk-" + "x" * 40).token_challenge == "pow"
    assert Settings.from_env({"TOKEN_CHALLENGE": "off", "LLMGUARD_DEMO": "true"}).token_challenge == "off"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TOKEN_CHALLENGE": "recaptcha"}, "Setting TOKEN_CHALLENGE has value 'recaptcha'"),
        (
            {"TOKEN_CHALLENGE": "turnstile"},
            "Setting CAPTCHA_SITE_KEY has value None: is required with TOKEN_CHALLENGE=turnstile",
        ),
        (
            {"TOKEN_CHALLENGE": "hcaptcha", "CAPTCHA_SITE_KEY": "k"},
            "Setting CAPTCHA_SECRET: is required with TOKEN_CHALLENGE=hcaptcha",
        ),
        ({"CHALLENGE_LADDER": "5=1000"}, "the first rung must start at 0 mints"),
        ({"CHALLENGE_LADDER": "0=1000,0=2000"}, "the mint counts must grow"),
        ({"CHALLENGE_LADDER": "0=10"}, "a max number from 1000"),
        ({"CHALLENGE_LADDER": "0=1000,5=refuse,9=2000"}, "'refuse' can only be the last rung"),
        ({"CHALLENGE_LADDER": "0=captcha"}, "has no CAPTCHA"),
        ({"CHALLENGE_LADDER": "0=refuse"}, "cannot refuse everyone"),
        ({"CHALLENGE_LADDER": "lots"}, "is not MINTS=STEP"),
        ({"CAPTCHA_VERIFY_URL": "ftp://x"}, "Setting CAPTCHA_VERIFY_URL has value 'ftp://x'"),
        ({"CHALLENGE_TTL": "2"}, "Setting CHALLENGE_TTL has value '2'"),
    ],
)
def test_bad_challenge_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="Setting") as caught:
        Settings.from_env({"LLMGUARD_DEMO": "true", **environ})
    assert message in str(caught.value)
    if "CAPTCHA_SECRET" in environ:
        assert environ["CAPTCHA_SECRET"] not in str(caught.value)


def test_the_ladder_reads_as_rungs() -> None:
    rungs = parse_ladder("0=100000, 5=1_000_000, 40=captcha, 80=refuse")
    assert [(rung.after, rung.step) for rung in rungs] == [(0, 100000), (5, 1000000), (40, "captcha"), (80, "refuse")]


def test_settings_feed_the_challenge() -> None:
    settings = make_settings(token_challenge="pow+hcaptcha", captcha_site_key=SITE_KEY, captcha_secret=CAPTCHA_SECRET)
    gate = TokenChallenge(**settings.arguments("TokenChallenge"), secret=SECRET, allow_origins=[ORIGIN])
    assert gate.captcha is not None
    assert gate.captcha.challenge() == {
        "kind": "hcaptcha", "site_key": SITE_KEY, "action": None,
        "script": "https://js.hcaptcha.com/1/api.js?render=explicit",
    }  # fmt: skip
    assert gate.captcha.hostnames == {"app.example.com"}
    assert "captcha_secret" not in repr(settings)
    assert CAPTCHA_SECRET not in repr(settings)


async def test_a_hand_built_stack_asks_for_work_as_the_docs_show() -> None:
    """docs/guides/library.md: TokenEndpoint(challenge=...) and the challenge as its own route."""
    storage = Storage("memory://")
    challenge = TokenChallenge(kind="pow", secret=SECRET, storage=storage)
    minting = IPRateLimit(TokenEndpoint(secret=SECRET, challenge=challenge), limit="10/minute", name="token",
                          storage=storage)  # fmt: skip
    routes = [
        Route("/api/token", OriginFilter(minting, allow_origins=[ORIGIN])),
        Route("/api/challenge", OriginFilter(challenge, allow_origins=[ORIGIN])),
    ]
    app = Starlette(routes=routes)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(PEER, 1)), base_url="http://t", headers={"origin": ORIGIN}
    ) as client:
        assert_error(await client.post("/api/token"), 401, "ChallengeRequired")
        fetched = (await client.get("/api/challenge")).json()
        minted = await client.post("/api/token", json={"solution": solve_challenge_payload(fetched)})
        assert minted.status_code == 200, minted.text
        assert_error(await client.get("/api/challenge", headers={"origin": "https://evil.example"}), 403, "Forbidden")
