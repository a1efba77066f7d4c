"""End to end: rotating JWT_SECRET with real `llmguard serve` processes on one Redis.

Done when: tokens signed with the previous secret keep working after a restart
with a new first secret, until they expire; two processes mid-rotation accept
each other's tokens; a challenge handed out before the restart is still good
after it; a token of a removed secret gets 401.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from harness import HELLO, KEY, assert_clean_logs, assert_error, bearer, http_client
from servers import LLMGuardProcess, RedisServer

from llmguard._jwt import key_id
from llmguard.testing import FakeProvider, solve_challenge_payload

# As `llmguard keygen` prints them.
S1 = "rotation-s1-Qm7Xc2Lv9Bn4Kd0Wr6Zt3Hy8Jp5Fs1Ga"
S2 = "rotation-s2-Ve3Nk8Tb1Yq6Mh0Cw5Rx9Lu2Pz7Dg4Sj"
SECRETS = (S1, S2)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Fleet:
    """`llmguard serve` processes on one Redis and the fake provider, started side by side."""

    def __init__(self, upstream: str, redis_url: str, tmp_path: Path) -> None:
        self.base = {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": f"{upstream}/v1",
            "ALLOWED_ORIGIN": "https://app.example.com",
            "STORAGE_URL": redis_url,
            "TRUSTED_PROXIES": "127.0.0.1",
            "TOKEN_RATE_LIMIT": "100000/minute",
            "UPSTREAM_RETRIES": "0",
            # Every mint solves a (cheap) proof-of-work: challenges must survive the rotation too.
            "TOKEN_CHALLENGE": "pow",
            "CHALLENGE_LADDER": "0=1000",
        }
        self.tmp_path = tmp_path
        self.started: list[LLMGuardProcess] = []

    @contextmanager
    def serving(self, *configurations: Sequence[str]) -> Iterator[list[LLMGuardProcess]]:
        """One process per ``(JWT_SECRET, *JWT_PREVIOUS_SECRETS)``, started at once; stopped on leaving."""
        processes = []
        for secret, *previous in configurations:
            env = {**self.base, "JWT_SECRET": secret, "JWT_PREVIOUS_SECRETS": ",".join(previous)}
            processes.append(LLMGuardProcess(env, self.tmp_path / f"server-{len(self.started)}.log"))
            self.started.append(processes[-1])
        with ExitStack() as stack:
            for process in processes:
                stack.push(process.__exit__)  # stopped even if another one fails to start
            with ThreadPoolExecutor(len(processes)) as pool:
                list(pool.map(LLMGuardProcess.__enter__, processes))
            yield processes


@pytest.fixture
def fleet(fake_upstream: tuple[FakeProvider, str], redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    redis_server.flush()
    fleet = Fleet(fake_upstream[1], redis_server.url, tmp_path)
    yield fleet
    for process in fleet.started:
        logs = process.logs()
        assert_clean_logs(logs)
        assert all(secret not in logs for secret in SECRETS)


def challenge_from(server: LLMGuardProcess) -> dict[str, Any]:
    with http_client(server) as http:
        challenge: dict[str, Any] = assert_error(http.post("/api/token"), 401, "ChallengeRequired")["challenge"]
    return challenge


def mint_with(server: LLMGuardProcess, solution: str) -> httpx.Response:
    with http_client(server) as http:
        return http.post("/api/token", json={"solution": solution})


def mint(server: LLMGuardProcess) -> str:
    response = mint_with(server, solve_challenge_payload(challenge_from(server)))
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def chat(server: LLMGuardProcess, token: str) -> httpx.Response:
    with http_client(server) as http:
        return http.post("/api/chat", json=HELLO, headers=bearer(token))


def assert_works(server: LLMGuardProcess, token: str) -> None:
    response = chat(server, token)
    assert response.status_code == 200, response.text


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def test_a_rotation_tokens_and_challenges_of_the_previous_secret_work_until_they_expire(fleet: Fleet) -> None:
    """The docs' timeline for several instances, with A restarted between its two halves."""
    # Mid-rotation: A still signs with S1 (S2 staged as previous), B already signs with S2 (S1 previous).
    with fleet.serving((S1, S2), (S2, S1)) as (a, b):
        old = mint(a)
        assert kid_of(old) == key_id(S1.encode())
        new = mint(b)
        assert kid_of(new) == key_id(S2.encode())
        # Each accepts the other's tokens, and its own.
        for server in (a, b):
            assert_works(server, old)
            assert_works(server, new)
        # Challenges go either way too: handed out by one, solved, redeemed at the other.
        for giver, taker in ((a, b), (b, a)):
            response = mint_with(taker, solve_challenge_payload(challenge_from(giver)))
            assert response.status_code == 200, response.text
            assert_works(giver, response.json()["token"])
        # Challenges A hands out now are solved while A restarts.
        in_flight = solve_challenge_payload(challenge_from(a))
        stale = solve_challenge_payload(challenge_from(a))

    # A restarts with S2 first and S1 previous: the old token and the in-flight challenge still work.
    # D is the timeline's last step, JWT_TTL later: S1 removed.
    with fleet.serving((S2, S1), (S2,)) as (a, d):
        assert_works(a, old)
        assert_works(a, new)
        minted = mint_with(a, in_flight)
        assert minted.status_code == 200, minted.text
        assert kid_of(minted.json()["token"]) == key_id(S2.encode())
        # Expired, though signed with a secret A still accepts: 401, because it expired.
        now = int(time.time())
        claims = {"iss": "llmguard", "aud": "llmguard", "iat": now - 960, "nbf": now - 960, "exp": now - 60,
                  "jti": "expired-old-token"}  # fmt: skip
        expired = jwt.encode(claims, S1, algorithm="HS256", headers={"kid": key_id(S1.encode())})
        assert "expired" in assert_error(chat(a, expired), 401, "Unauthorized")["message"]
        # S1 removed: its token and its challenges are refused; S2's work.
        assert "key this server does not accept" in assert_error(chat(d, old), 401, "Unauthorized")["message"]
        assert "does not solve a challenge" in assert_error(mint_with(d, stale), 403, "ChallengeFailed")["message"]
        assert_works(d, new)
