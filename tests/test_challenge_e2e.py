"""End to end: `llmguard serve` asks for a solved challenge before it mints, for each kind of challenge.

Real processes on loopback: llmguard (one, or two sharing a real Redis), the
fake provider, and a fake siteverify speaking real HTTP for the CAPTCHAs.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from altcha.v1 import ChallengeOptions, create_challenge
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    PEER,
    SECRET,
    assert_clean_logs,
    assert_error,
    bearer,
    http_client,
)
from servers import LLMGuardProcess, RedisServer, ThreadedServer, free_port

from llmguard import TokenChallenge
from llmguard.testing import FakeProvider, FakeSiteverify, solve_challenge_payload

CAPTCHA_SECRET = "0x-e2e-captcha-secret-not-real"
Serve = Callable[..., Any]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def verifier() -> Iterator[tuple[FakeSiteverify, str]]:
    fake = FakeSiteverify(secret=CAPTCHA_SECRET)
    with ThreadedServer(fake) as server:
        yield fake, server.url


@pytest.fixture
def serve(fake_upstream: tuple[FakeProvider, str], redis_server: RedisServer, tmp_path: Path) -> Iterator[Serve]:
    """Start `llmguard serve` with a challenge (proof-of-work unless told), on a clean Redis."""
    processes: list[LLMGuardProcess] = []
    redis_server.flush()

    @contextmanager
    def start(**env: str) -> Iterator[LLMGuardProcess]:
        base = {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": f"{fake_upstream[1]}/v1",
            "JWT_SECRET": SECRET,
            "ALLOWED_ORIGIN": ORIGIN,
            "STORAGE_URL": redis_server.url,
            "TRUSTED_PROXIES": "127.0.0.1",
            "TOKEN_RATE_LIMIT": "100000/minute",
            "UPSTREAM_RETRIES": "0",
            "TOKEN_CHALLENGE": "pow",
        }
        process = LLMGuardProcess({**base, **env}, tmp_path / f"server-{len(processes)}.log")
        processes.append(process)
        with process:
            yield process

    yield start
    for process in processes:
        assert_clean_logs(process.logs(), [CAPTCHA_SECRET])


def challenge_of(http: httpx.Client) -> dict[str, Any]:
    body = assert_error(http.post("/api/token"), 401, "ChallengeRequired")
    challenge: dict[str, Any] = body["challenge"]
    return challenge


def mint_with(http: httpx.Client, solution: str) -> httpx.Response:
    return http.post("/api/token", json={"solution": solution})


def test_proof_of_work_end_to_end(serve: Serve) -> None:
    with serve() as server, http_client(server) as http:
        # Without a solution: 401 with the challenge; GET /api/challenge answers the same kind.
        challenge = challenge_of(http)
        assert challenge["kind"] == "pow"
        assert challenge["maxnumber"] == 100_000
        assert http.get("/api/challenge").json()["kind"] == "pow"
        solution = solve_challenge_payload(challenge)

        # Forged: the number changed, or the signature.
        payload = json.loads(base64.b64decode(solution))
        for change in ({"number": payload["number"] + 1}, {"signature": "ab" * 32}):
            forged = base64.b64encode(json.dumps(payload | change).encode()).decode()
            assert_error(mint_with(http, forged), 403, "ChallengeFailed")

        # Another client (another address behind the trusted proxy) cannot use it.
        with http_client(server, "198.51.100.77") as other:
            body = assert_error(mint_with(other, solution), 403, "ChallengeFailed")
            assert "another client" in body["message"]

        # The real one mints a token that works; the second use is refused.
        minted = mint_with(http, solution)
        assert minted.status_code == 200, minted.text
        chat = http.post("/api/chat", json=HELLO, headers=bearer(minted.json()["token"]))
        assert chat.status_code == 200, chat.text
        body = assert_error(mint_with(http, solution), 403, "ChallengeFailed")
        assert "used already" in body["message"]

        # Expired: made with the server's own key (the operator knows JWT_SECRET), an hour ago.
        gate = TokenChallenge(secret=SECRET)
        options = ChallengeOptions(
            algorithm="SHA-256",
            max_number=1000,
            hmac_key=gate.key,
            expires=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1),
            params={"c": gate.client_tag({"type": "http", "client": (PEER, 1), "headers": []}), "s": "0"},
        )
        made = create_challenge(options)
        expired = {"algorithm": "SHA-256", "challenge": made.challenge, "maxnumber": 1000, "salt": made.salt,
                   "signature": made.signature}  # fmt: skip
        body = assert_error(mint_with(http, solve_challenge_payload(expired)), 403, "ChallengeFailed")
        assert "expired" in body["message"]
        assert body["challenge"]["kind"] == "pow"


def test_two_processes_on_one_redis_agree_on_single_use_and_on_the_ladder(serve: Serve) -> None:
    ladder = {"CHALLENGE_LADDER": "0=1000, 3=50000, 6=refuse"}
    with serve(**ladder) as a, serve(**ladder) as b, http_client(a) as on_a, http_client(b) as on_b:
        # The same solution sent to both at once: exactly one token.
        solution = solve_challenge_payload(challenge_of(on_a))
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda http: mint_with(http, solution), [on_a, on_b, on_a, on_b]))
        assert sorted(answer.status_code for answer in answers) == [200, 403, 403, 403]
        # Mints on one count on the other's ladder.
        for http in (on_b, on_a):
            assert mint_with(http, solve_challenge_payload(challenge_of(http))).status_code == 200
        assert challenge_of(on_b)["maxnumber"] == 50_000
        for http in (on_a, on_b, on_a):
            assert mint_with(http, solve_challenge_payload(challenge_of(http))).status_code == 200
        assert_error(on_b.post("/api/token"), 429, "RateLimitExceeded")
        assert_error(on_a.get("/api/challenge"), 429, "RateLimitExceeded")


@pytest.mark.parametrize("kind", ["turnstile", "hcaptcha"])
def test_a_captcha_end_to_end(serve: Serve, verifier: tuple[FakeSiteverify, str], kind: str) -> None:
    fake, url = verifier
    action = "llmguard-token" if kind == "turnstile" else None
    env = {
        "TOKEN_CHALLENGE": kind,
        "CAPTCHA_SITE_KEY": "0x-site-key",
        "CAPTCHA_SECRET": CAPTCHA_SECRET,
        "CAPTCHA_VERIFY_URL": f"{url}/siteverify",
        "CAPTCHA_SCRIPT_URL": f"{url}/api.js",
    }
    with serve(**env) as server, http_client(server) as http:
        challenge = challenge_of(http)
        assert challenge == {"kind": kind, "site_key": "0x-site-key", "action": action, "script": f"{url}/api.js"}
        response = fake.issue(hostname="app.example.com", action=action)
        minted = mint_with(http, response)
        assert minted.status_code == 200, minted.text
        assert fake.requests[-1]["remoteip"] == PEER  # the client, not the proxy
        assert_error(mint_with(http, response), 403, "ChallengeFailed")  # reused
        body = assert_error(mint_with(http, fake.issue(hostname="evil.example.net", action=action)), 403,
                            "ChallengeFailed")  # fmt: skip
        assert "another site" in body["message"]
        assert_error(mint_with(http, "never-issued"), 403, "ChallengeFailed")


def test_a_verifier_that_is_down_gets_the_documented_503(serve: Serve) -> None:
    env = {
        "TOKEN_CHALLENGE": "turnstile",
        "CAPTCHA_SITE_KEY": "0x-site-key",
        "CAPTCHA_SECRET": CAPTCHA_SECRET,
        "CAPTCHA_VERIFY_URL": f"http://127.0.0.1:{free_port()}/siteverify",  # nothing listens
        "CAPTCHA_TIMEOUT": "1",
    }
    with serve(**env) as server, http_client(server) as http:
        response = mint_with(http, "any-response")
        body = assert_error(response, 503, "ChallengeUnavailable")
        assert response.headers["retry-after"] == "5"
        assert body["retry_after"] == 5
    assert "turnstile siteverify failed: ConnectError" in server.logs()


def test_the_demo_asks_for_proof_of_work_out_of_the_box(tmp_path: Path) -> None:
    with LLMGuardProcess({"TOKEN_CHALLENGE": ""}, tmp_path / "demo.log", args=("--demo",)) as server:
        demo = httpx.Client(base_url=server.url, headers={"origin": "http://localhost:5173"}, timeout=20)
        with demo:
            challenge = challenge_of(demo)
            assert challenge["kind"] == "pow"
            assert mint_with(demo, solve_challenge_payload(challenge)).status_code == 200
