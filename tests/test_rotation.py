"""Rotating the JWT secret: tokens and challenges of the previous secrets keep working until they expire.

In-process units: TokenEndpoint mints with a ``kid``, JWTAuth picks the secret
by it, TokenChallenge verifies the challenges the previous secrets signed, and
the settings. Real processes on one Redis are in test_rotation_e2e.py.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from altcha.v1 import ChallengeOptions, create_challenge
from harness import KEY, PEER, CountingApp, Harness, asgi_client, assert_error, bearer

from llmguard import JWTAuth, Settings, SettingsError, TokenChallenge, TokenEndpoint
from llmguard._jwt import key_id
from llmguard.testing import solve_challenge_payload

# Secrets as `llmguard keygen` prints them: the old one, the new one, and one this server never had.
OLD = "old-secret-Zr4pW8kLq2Vn6Tx0Bc3Hy7Jm5Ds9Fg1Ak"
NEW = "new-secret-Pe6Ru1Yb9Wt3Nc8Lh2Qx5Kz0Vg7Mj4Sd"
OTHER = "other-secret-Hn2Bv6Xc0Lp4Qw8Ez3Ty7Uk1Sa5Md"
Factory = Callable[..., Any]


def header_of(token: str) -> dict[str, Any]:
    header: dict[str, Any] = jwt.get_unverified_header(token)
    return header


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": "llmguard", "aud": "llmguard", "iat": now, "nbf": now, "exp": now + 900, "jti": "rotation-jti"}
    return values | changes


def signed(secret: str, *, kid: str | None = None, **changes: Any) -> str:
    """A token as some llmguard signed it: with ``kid`` in its header (none, as 0.1 minted them, when None)."""
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**changes), secret, algorithm="HS256", headers=headers)


def forged_kid(kid: object) -> str:
    """A token signed with NEW whose header's kid is anything (PyJWT only writes string kids)."""
    parts = [jwt.utils.base64url_encode(json.dumps(part).encode()) for part in ({"alg": "HS256", "kid": kid}, claims())]
    signing_input = b".".join(parts)
    signature = hmac.new(NEW.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


def minted(secret: str) -> str:
    return TokenEndpoint(secret=secret).mint({"sub": "user-7"})[0]


async def answer(token: str, secret: str = NEW, previous: tuple[str, ...] = (OLD,)) -> httpx.Response:
    """What JWTAuth(secret, previous_secrets) says to ``token``; 200 when it reached the app behind."""
    app = CountingApp()
    async with asgi_client(JWTAuth(app, secret=secret, previous_secrets=previous)) as client:
        response = await client.post("/api/chat", headers=bearer(token))
    assert app.calls == (1 if response.status_code == 200 else 0)
    return response


# -- the kid


def test_a_token_names_the_secret_that_signed_it_by_a_fingerprint_not_the_secret() -> None:
    token = minted(NEW)
    kid = header_of(token)["kid"]
    assert header_of(token)["alg"] == "HS256"
    assert re.fullmatch(r"[0-9a-f]{16}", kid)
    assert kid == key_id(NEW.encode()) == header_of(minted(NEW))["kid"]  # the same secret, the same kid
    assert kid != header_of(minted(OLD))["kid"]
    # Not the secret, nor any piece of it, nor anything a plain hash of it gives.
    for secret in (NEW, OLD):
        assert secret not in token
        assert all(kid[i : i + 6] not in secret for i in range(11))
    assert kid not in hashlib.sha256(NEW.encode()).hexdigest()
    assert kid not in jwt.utils.base64url_encode(NEW.encode()).decode()


# -- JWTAuth with previous secrets


async def test_tokens_of_the_new_secret_and_of_the_previous_one_are_both_accepted() -> None:
    for token in (minted(NEW), minted(OLD)):
        response = await answer(token)
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == "user-7"


async def test_a_token_of_a_removed_secret_is_refused() -> None:
    old = minted(OLD)
    assert (await answer(old)).status_code == 200
    body = assert_error(await answer(old, previous=()), 401, "Unauthorized")
    assert "key this server does not accept" in body["message"]


async def test_an_unknown_kid_is_refused_without_trying_any_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    tried = spy_on_decode(monkeypatch)
    for token in (minted(OTHER), signed(NEW, kid="0123456789abcdef"), signed(OLD, kid="")):
        assert_error(await answer(token), 401, "Unauthorized")
    assert tried == []


async def test_a_kid_must_name_the_secret_that_signed_the_token() -> None:
    # Signed with the old secret but claiming the new one's kid (or the reverse): the signature fails.
    assert_error(await answer(signed(OLD, kid=key_id(NEW.encode()))), 401, "Unauthorized")
    assert_error(await answer(signed(NEW, kid=key_id(OLD.encode()))), 401, "Unauthorized")
    # A kid that is not a string is not a kid.
    for kid in (7, ["x"], {"k": NEW}):
        assert_error(await answer(forged_kid(kid)), 401, "Unauthorized")


async def test_a_token_without_a_kid_from_llmguard_0_1_is_tried_with_each_secret() -> None:
    for secret in (NEW, OLD):
        response = await answer(signed(secret))
        assert response.status_code == 200, response.text
    assert_error(await answer(signed(OTHER)), 401, "Unauthorized")
    assert_error(await answer(signed(OLD), previous=()), 401, "Unauthorized")


async def test_an_expired_token_of_the_previous_secret_is_refused_as_expired() -> None:
    now = int(time.time())
    for kid in (key_id(OLD.encode()), None):
        token = signed(OLD, kid=kid, iat=now - 960, nbf=now - 960, exp=now - 60)
        body = assert_error(await answer(token), 401, "Unauthorized")
        assert "expired" in body["message"]


def spy_on_decode(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The secrets JWTAuth checks a signature with, in order (a spy on PyJWT's decode)."""
    tried: list[bytes] = []
    decode = jwt.decode

    def counting(token: str, key: bytes, *args: Any, **kwargs: Any) -> Any:
        tried.append(key)
        return decode(token, key, *args, **kwargs)

    monkeypatch.setattr("llmguard._jwt_auth.jwt.decode", counting)
    return tried


async def test_a_token_with_a_kid_costs_one_signature_check_however_many_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    many = tuple(f"previous-secret-{n}-Kd8Wm3Qz7Lx2Vb6Np0Rt4Hy9" for n in range(8))
    tried = spy_on_decode(monkeypatch)
    response = await answer(minted(many[-1]), previous=many)
    assert response.status_code == 200, response.text
    assert tried == [many[-1].encode()]
    # Without a kid (a 0.1 token), each secret in turn until one fits: the signing one first.
    tried.clear()
    assert (await answer(signed(many[2]), previous=many)).status_code == 200
    assert tried == [NEW.encode(), many[0].encode(), many[1].encode(), many[2].encode()]


def test_previous_secrets_are_checked_like_the_secret_and_never_shown() -> None:
    short = "short-Kd8Wm3"
    with pytest.raises(ValueError, match=r"previous_secrets: secret 2 is 12 bytes") as caught:
        JWTAuth(CountingApp(), secret=NEW, previous_secrets=[OLD, short])
    assert short not in str(caught.value)
    with pytest.raises(ValueError, match="secret 1 is the current secret") as caught:
        JWTAuth(CountingApp(), secret=NEW, previous_secrets=[NEW])
    assert NEW not in str(caught.value)
    with pytest.raises(ValueError, match="expected a list of secrets"):
        JWTAuth(CountingApp(), secret=NEW, previous_secrets=OLD)
    assert list(JWTAuth(CountingApp(), secret=NEW, previous_secrets=[OLD, OLD.encode()]).secrets.values()) == [
        NEW.encode(),
        OLD.encode(),
    ]


# -- settings


def environment(**variables: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": KEY, "JWT_SECRET": NEW, **variables}


def test_jwt_previous_secrets_is_a_comma_separated_list_that_feeds_jwtauth_and_the_challenge() -> None:
    settings = Settings.from_env(environment(JWT_PREVIOUS_SECRETS=f" {OLD} , {OTHER},"))
    assert settings.jwt_previous_secrets == (OLD, OTHER)
    assert settings.arguments("JWTAuth")["previous_secrets"] == (OLD, OTHER)
    assert settings.arguments("TokenChallenge")["previous_secrets"] == (OLD, OTHER)
    assert settings.describe()["JWT_PREVIOUS_SECRETS"] == "set"
    assert OLD not in repr(settings)
    assert Settings.from_env(environment()).jwt_previous_secrets == ()
    # Handed to the workers of `llmguard serve --workers N` as it reads back.
    environ = {name: value for name, value in settings.to_env().items() if value is not None}
    assert Settings.from_env(environ) == settings


@pytest.mark.parametrize(
    ("previous", "reason"),
    [
        (f"{OLD},too-short-secret", "secret 2 is 16 bytes; an HS256 secret must be at least 32 bytes"),
        (f"{OLD},{NEW}", "secret 2 is JWT_SECRET itself"),
        (NEW, "secret 1 is JWT_SECRET itself"),
    ],
)
def test_a_bad_previous_secret_names_the_variable_and_its_position_never_a_secret(previous: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environment(JWT_PREVIOUS_SECRETS=previous))
    message = str(caught.value)
    assert message.startswith("Setting JWT_PREVIOUS_SECRETS")
    assert reason in message
    for secret in (OLD, NEW, "too-short-secret"):
        assert secret not in message
    with pytest.raises(SettingsError, match=re.escape(reason)):
        Settings(openai_api_key=KEY, jwt_secret=NEW, jwt_previous_secrets=tuple(previous.split(",")))


# -- the bundled app: tokens and in-flight challenges across a rotation


async def test_the_bundled_app_mints_with_the_new_secret_and_accepts_the_old_ones(harness_factory: Factory) -> None:
    before = await harness_factory(jwt_secret=OLD)
    after = await harness_factory(jwt_secret=NEW, jwt_previous_secrets=(OLD,))
    old_token = await before.token()
    new_token = await after.token()
    assert header_of(old_token)["kid"] == key_id(OLD.encode())
    assert header_of(new_token)["kid"] == key_id(NEW.encode())
    for token in (old_token, new_token):
        assert (await after.chat(token=token)).status_code == 200
    # The old configuration does not know the new secret: why a rolling deploy adds it as a previous one first.
    assert_error(await before.chat(token=new_token), 401, "Unauthorized")
    staged = await harness_factory(jwt_secret=OLD, jwt_previous_secrets=(NEW,))
    assert (await staged.chat(token=new_token)).status_code == 200


async def pow_challenge(harness: Harness) -> dict[str, Any]:
    body = assert_error(await harness.client.post("/api/token"), 401, "ChallengeRequired")
    challenge: dict[str, Any] = body["challenge"]
    return challenge


async def test_a_challenge_given_before_a_rotation_is_accepted_after_it(harness_factory: Factory) -> None:
    options = {"token_challenge": "pow", "challenge_ladder": "0=1000"}
    before = await harness_factory(jwt_secret=OLD, **options)
    after = await harness_factory(jwt_secret=NEW, jwt_previous_secrets=(OLD,), **options)
    removed = await harness_factory(jwt_secret=NEW, **options)
    in_flight = solve_challenge_payload(await pow_challenge(before))
    body = assert_error(await removed.client.post("/api/token", json={"solution": in_flight}), 403, "ChallengeFailed")
    assert "does not solve a challenge of this server" in body["message"]
    minted = await after.client.post("/api/token", json={"solution": in_flight})
    assert minted.status_code == 200, minted.text
    assert header_of(minted.json()["token"])["kid"] == key_id(NEW.encode())
    # And the new server's own challenges, of course.
    solution = solve_challenge_payload(await pow_challenge(after))
    assert (await after.client.post("/api/token", json={"solution": solution})).status_code == 200


def challenge_signed_with(secret: str, params: dict[str, str]) -> dict[str, Any]:
    """A challenge made with ``secret``'s challenge key, with the salt parameters given."""
    gate = TokenChallenge(secret=secret)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
    options = ChallengeOptions(algorithm="SHA-256", max_number=1000, hmac_key=gate.key, expires=expires, params=params)
    made = create_challenge(options)
    return {"algorithm": "SHA-256", "challenge": made.challenge, "maxnumber": 1000, "salt": made.salt,
            "signature": made.signature}  # fmt: skip


async def test_a_challenge_names_its_key_and_one_that_names_none_is_tried_with_each(harness_factory: Factory) -> None:
    after = await harness_factory(jwt_secret=NEW, jwt_previous_secrets=(OLD,), token_challenge="pow")
    scope = {"type": "http", "client": (PEER, 1), "headers": []}
    tag = TokenChallenge(secret=OLD).client_tag(scope)
    cases = [
        ({"c": tag, "s": "0"}, 200),  # from a server before key ids: each key is tried
        ({"c": tag, "s": "0", "k": key_id(OLD.encode())}, 200),
        ({"c": tag, "s": "0", "k": key_id(NEW.encode())}, 403),  # names a key that did not sign it
        ({"c": tag, "s": "0", "k": key_id(OTHER.encode())}, 403),  # a key this server does not have
        ({"c": tag, "s": "0", "k": "x", "k ": "y"}, 403),
    ]
    for params, status in cases:
        solution = solve_challenge_payload(challenge_signed_with(OLD, params))
        response = await after.client.post("/api/token", json={"solution": solution})
        assert response.status_code == status, (params, response.text)
    # The tag binds the challenge to its client under the key that signed it, not the current one.
    wrong_tag = TokenChallenge(secret=NEW).client_tag(scope)
    solution = solve_challenge_payload(challenge_signed_with(OLD, {"c": wrong_tag, "s": "0"}))
    body = assert_error(await after.client.post("/api/token", json={"solution": solution}), 403, "ChallengeFailed")
    assert "another client" in body["message"]


def test_the_challenge_checks_its_previous_secrets_too() -> None:
    with pytest.raises(ValueError, match="secret 1 is the current secret"):
        TokenChallenge(secret=NEW, previous_secrets=[NEW])
    gate = TokenChallenge(secret=NEW, previous_secrets=[OLD])
    assert list(gate.keys) == [key_id(NEW.encode()), key_id(OLD.encode())]
    assert gate.key == gate.keys[key_id(NEW.encode())]
