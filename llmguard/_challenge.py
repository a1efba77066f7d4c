"""TokenChallenge: a bot pays before it gets a token — proof-of-work, or a CAPTCHA, at the token endpoint.

Anyone can send an ``Origin`` header, so origins and per-IP limits alone let a
script mint tokens as fast as it has addresses. A challenge makes each mint
cost the client something a person does not notice and a bot pays in bulk:

- ``pow`` — self-hosted proof-of-work on the ALTCHA protocol (v1, SHA-256):
  the client finds the number behind a hash, about ``maxnumber / 2`` hashes of
  work, and the server checks the answer with one hash. No third party, works
  offline. The challenge is signed (HMAC with a key derived from the JWT
  secret, so replicas agree; the previous JWT secrets' keys still verify, so
  a challenge outlives a rotation), short-lived, bound to the client, and each
  solution is good once (remembered in the storage).
- ``turnstile`` / ``hcaptcha`` — the provider's widget in the page; the token
  endpoint checks its response with the provider's siteverify API: success,
  hostname among the allowed origins, action (Turnstile), single use, within
  ``captcha_timeout`` seconds. A verifier that is down or slow gets 503
  ``ChallengeUnavailable`` (never a free token).
- ``pow+turnstile`` / ``pow+hcaptcha`` — proof-of-work that escalates to the
  CAPTCHA at the ladder's ``captcha`` rung.

**The ladder**: the work asked grows with what the client (its IP, IPv6 /64)
did recently: after ``N`` solved challenges in ``window`` seconds the rung
says the ALTCHA max number, ``captcha`` or ``refuse`` (429). Each 10 % of the
client's token window already spent (``spent``, from ``TokenBudget``) counts
as one more mint. A challenge names its rung; a solution from a lower rung than
the client stands on now (fetched in bulk while cheap) is refused, and so is
one that lands past its rung when several are sent at once: each is judged by
the count its own mint makes.

Used as an ASGI app it answers ``GET``/``POST`` with the current challenge
(``/api/challenge``); ``TokenEndpoint(challenge=...)`` checks solutions.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import itertools
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar, cast, get_args

import anyio
import httpx
from altcha.v1 import ChallengeOptions, PayloadType, create_challenge, verify_solution
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llmguard._client_ip import client_key
from llmguard._errors import (
    ChallengeFailed,
    ChallengeRequired,
    ChallengeUnavailable,
    LLMGuardError,
    MethodNotAllowed,
    RateLimitExceeded,
    StorageUnavailable,
    send_error,
)
from llmguard._jwt import check_previous_secrets, key_id
from llmguard._origin import check_origins
from llmguard._state import request_state
from llmguard._storage import Storage

logger = logging.getLogger("llmguard.challenge")

ChallengeKind = Literal["off", "pow", "turnstile", "hcaptcha", "pow+turnstile", "pow+hcaptcha"]
Step = int | Literal["captcha", "refuse"]
#: What the widget's ``action`` is, and what siteverify must say it was (Turnstile).
CAPTCHA_ACTION = "llmguard-token"
DEFAULT_LADDER = "0=100000,5=1000000,20=10000000,40=captcha,80=refuse"
#: altcha-lib solves up to this max number; 1,000 is the least that is still work.
MIN_MAX_NUMBER, MAX_MAX_NUMBER = 1_000, 1_000_000_000
#: Every 10 % of its token window a client has spent counts as one more mint on the ladder.
SPENT_MINTS_PER_WINDOW = 10
_ALGORITHM: Literal["SHA-256"] = "SHA-256"
_HEX = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


@dataclass(frozen=True)
class Provider:
    verify_url: str
    script_url: str
    #: Turnstile widgets carry an action that siteverify reports back; hCaptcha's do not.
    action: str | None


PROVIDERS = {
    "turnstile": Provider(
        verify_url="https://challenges.cloudflare.com/turnstile/v0/siteverify",
        script_url="https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit",
        action=CAPTCHA_ACTION,
    ),
    "hcaptcha": Provider(
        verify_url="https://api.hcaptcha.com/siteverify",
        script_url="https://js.hcaptcha.com/1/api.js?render=explicit",
        action=None,
    ),
}


@dataclass(frozen=True)
class Rung:
    """From the ``after``-th mint in the window on, the challenge is ``step``."""

    after: int
    step: Step


def parse_ladder(text: object, *, option: str = "ladder") -> tuple[Rung, ...]:
    """``"0=100000,5=1000000,40=captcha,80=refuse"`` as rungs, checked; ValueError names ``option``."""
    if not isinstance(text, str):
        raise ValueError(f"{option} has value {text!r}: expected rungs such as {DEFAULT_LADDER!r}")
    rungs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        after, sep, step = (part.strip() for part in item.partition("="))
        if not sep or not after.isdigit() or not step:
            raise ValueError(f"{option} has value {text!r}: {item!r} is not MINTS=STEP (such as '5=1000000')")
        value: Step
        if step in ("captcha", "refuse"):
            value = step  # type: ignore[assignment]
        elif step.replace("_", "").isdigit() and MIN_MAX_NUMBER <= int(step) <= MAX_MAX_NUMBER:
            value = int(step)
        else:
            raise ValueError(
                f"{option} has value {text!r}: the step {step!r} must be 'captcha', 'refuse' or a max number "
                f"from {MIN_MAX_NUMBER} to {MAX_MAX_NUMBER}"
            )
        rungs.append(Rung(int(after), value))
    if not rungs or rungs[0].after != 0:
        raise ValueError(f"{option} has value {text!r}: the first rung must start at 0 mints ('0=100000')")
    if any(later.after <= earlier.after for earlier, later in itertools.pairwise(rungs)):
        raise ValueError(f"{option} has value {text!r}: the mint counts must grow from rung to rung")
    if any(rung.step == "refuse" for rung in rungs[:-1]):
        raise ValueError(f"{option} has value {text!r}: 'refuse' can only be the last rung")
    if rungs[0].step == "refuse":
        raise ValueError(f"{option} has value {text!r}: the first rung cannot refuse everyone")
    return tuple(rungs)


def check_ladder(text: object, *, option: str = "ladder") -> str:
    """``text`` if :func:`parse_ladder` reads it, else ValueError naming ``option``."""
    parse_ladder(text, option=option)
    return str(text).strip()


@dataclass(frozen=True)
class Position:
    """Where a client stands on the ladder now."""

    index: int
    step: Step
    mints: int
    #: What counts besides this period's mints: the last period's, fading, and what the client spent.
    carried: float = 0.0


class TokenChallenge:
    """What ``POST /api/token`` requires first; as an ASGI app, ``GET /api/challenge``.

    ``secret`` is the JWT secret (the challenges' signing key is derived from
    it; ``previous_secrets``, the JWT's previous ones, still verify the
    challenges they signed: the salt names the key). ``storage`` keeps the
    ladder's counts and the used solutions, so every replica agrees.
    ``allow_origins`` names the hostnames a CAPTCHA may have been solved on.
    ``spent(client)`` (optional) says what share of its token window a client
    has used, 0 to 1.
    """

    def __init__(
        self,
        *,
        kind: ChallengeKind = "pow",
        secret: str | bytes,
        previous_secrets: Sequence[str | bytes] = (),
        storage: Storage | str = "memory://",
        ladder: str = DEFAULT_LADDER,
        window: float = 3600,
        ttl: float = 300,
        allow_origins: Sequence[str] = (),
        site_key: str | None = None,
        captcha_secret: str | None = None,
        verify_url: str | None = None,
        script_url: str | None = None,
        captcha_timeout: float = 5,
        spent: Callable[[str], Awaitable[float]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if kind not in get_args(ChallengeKind):
            raise ValueError(f"kind has value {kind!r}: expected one of {', '.join(get_args(ChallengeKind))}")
        for name, value in (("window", window), ("ttl", ttl), ("captcha_timeout", captcha_timeout)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} has value {value!r}: must be a positive number of seconds")
        self.kind = kind
        self.rungs = parse_ladder(ladder)
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        secret_bytes = secret.encode() if isinstance(secret, str) else secret
        previous = check_previous_secrets(previous_secrets, secret_bytes)
        # Its own key: a challenge's signature can never be taken for anything signed with the JWT secret.
        self.key = _challenge_key(secret_bytes)
        self.kid = key_id(secret_bytes)
        #: Every key that verifies a challenge, by the key id of the JWT secret it comes from (public).
        self.keys = {key_id(raw): _challenge_key(raw) for raw in (secret_bytes, *previous)}
        self.window = int(window)
        self.ttl = int(ttl)
        self.pow = kind.startswith("pow")
        self.captcha: Captcha | None = None
        provider_name = kind.split("+")[-1]
        if provider_name in PROVIDERS:
            if not site_key or not captcha_secret:
                raise ValueError(f"site_key and captcha_secret are required for {kind!r}")
            provider = PROVIDERS[provider_name]
            self.captcha = Captcha(
                provider_name,
                site_key=site_key,
                secret=captcha_secret,
                verify_url=verify_url or provider.verify_url,
                script_url=script_url or provider.script_url,
                action=provider.action,
                hostnames={urllib.parse.urlsplit(origin).hostname or "" for origin in check_origins(allow_origins)},
                timeout=captcha_timeout,
                transport=transport,
            )
        if self.pow and self.captcha is None and self.rungs[0].step == "captcha":
            raise ValueError(f"ladder has value {ladder!r}: the first rung is 'captcha', and {kind!r} has no CAPTCHA")
        self.spent = spent

    @property
    def off(self) -> bool:
        return self.kind == "off"

    # -- the ASGI app: the current challenge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            if scope["method"] not in ("GET", "POST"):
                raise MethodNotAllowed(headers={"allow": "GET, POST"})
            body = await self.current(scope)
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        await JSONResponse(body, headers={"cache-control": "no-store"})(scope, receive, send)

    async def current(self, scope: Scope) -> dict[str, Any]:
        """The challenge this client must solve now (``{"kind": "off"}`` when none), or 429 at the top."""
        if self.off:
            return {"kind": "off"}
        return self.issue(scope, await self.position(scope))

    # -- checking a solution

    async def verify(self, scope: Scope, solution: object) -> None:
        """Accept ``solution`` once, or raise ``ChallengeRequired``/``ChallengeFailed``/``ChallengeUnavailable``.

        An accepted solution counts as one mint on the client's ladder.
        """
        if self.off:
            return
        position = await self.position(scope)
        if solution is None or solution == "":
            challenge = self.issue(scope, position)
            # A 401 names how to authenticate: here, by solving this kind of challenge (not with a bearer token).
            scheme = {"www-authenticate": f'LLMGuard-Challenge kind="{challenge["kind"]}"'}
            raise ChallengeRequired(headers=scheme, context={"challenge": challenge})
        if not isinstance(solution, str) or len(solution) > 4096:
            self.fail(scope, position, "The solution must be the text the challenge solver gave.")
        solved_on = position.index  # the rung the solution was made for
        if position.step == "captcha":
            assert self.captcha is not None  # position() only stands on a captcha rung with one
            problem = await self.captcha.check(solution, scope)
            used = "captcha:" + hashlib.sha256(solution.encode()).hexdigest()[:32]
        else:
            problem, used, solved_on = self.check_pow(scope, solution, position)
        if problem is None:
            uses = await self.counted(self.storage.incr(f"challenge:used:{used}", expiry=self.ttl + 60), 1)
            problem = None if uses == 1 else "This solution was used already; solve the new challenge."
        if problem is not None:
            self.fail(scope, position, problem)
        await self.count(scope, position, solved_on)

    async def count(self, scope: Scope, position: Position, solved_on: int) -> None:
        """Count the mint, and judge it by the count it made: solutions sent at once each get their own place.

        The rung read before the check may be stale by then (several solutions of
        cheap challenges sent together): the increment says which mint this is,
        and one that lands past its challenge's rung is given back and refused.
        """
        key = self.mint_keys(client_key(scope), time.time())[0]
        count = await self.counted(self.storage.incr(key, expiry=2 * self.window), 0)
        if count == 0:  # the storage failed open: nothing to judge by
            return
        try:
            now = self.rung_for(int(position.carried + count - 1))
        except RateLimitExceeded:
            await self.counted(self.storage.incr(key, expiry=2 * self.window, amount=-1), 0)
            raise
        if now.index > solved_on:
            await self.counted(self.storage.incr(key, expiry=2 * self.window, amount=-1), 0)
            self.fail(scope, now, "The challenge is easier than this client's now; solve the new one.")

    def check_pow(self, scope: Scope, solution: str, position: Position) -> tuple[str | None, str, int]:
        """What is wrong with a proof-of-work solution (``None``: nothing), its single-use key, and its rung."""
        try:
            payload = json.loads(base64.b64decode(solution, validate=True))
        except (binascii.Error, ValueError):
            return "The solution is not an ALTCHA payload.", "", -1
        if not isinstance(payload, dict) or payload.get("algorithm") != _ALGORITHM:
            return "The solution is not an ALTCHA SHA-256 payload.", "", -1
        number, salt, challenge = payload.get("number"), payload.get("salt"), payload.get("challenge")
        if not (isinstance(number, int) and isinstance(salt, str) and isinstance(challenge, str)):
            return "The solution is not an ALTCHA payload.", "", -1
        if not _HEX.fullmatch(challenge) or not isinstance(payload.get("signature"), str):
            return "The solution is not an ALTCHA payload.", "", -1
        params = urllib.parse.parse_qs(salt.partition("?")[2])
        expires = params.get("expires", ["0"])
        if len(expires) != 1 or not expires[0].isdigit() or int(expires[0]) < time.time():
            return "The challenge expired; solve the new one.", "", -1
        # The key its salt names (the salt is signed too); a challenge from before key ids names none: each key.
        named = params.get("k")
        if named is None:
            keys = list(self.keys.values())
        else:
            keys = [self.keys[named[0]]] if len(named) == 1 and named[0] in self.keys else []
        key = next((key for key in keys if verify_solution(cast(PayloadType, payload), key)[0]), None)
        if key is None:
            return "The solution does not solve a challenge of this server.", "", -1
        client, step = params.get("c", []), params.get("s", [])
        if client != [self.client_tag(scope, key)]:
            return "The challenge was given to another client.", "", -1
        if len(step) != 1 or not step[0].isdigit() or int(step[0]) < position.index:
            return "The challenge is easier than this client's now; solve the new one.", "", -1
        return None, "pow:" + challenge, int(step[0])

    def fail(self, scope: Scope, position: Position, problem: str) -> NoReturn:
        """Refuse with 403, and the challenge to solve instead (one on the client's rung now)."""
        raise ChallengeFailed(problem, context={"challenge": self.issue(scope, position)})

    # -- the ladder

    async def position(self, scope: Scope) -> Position:
        """The client's rung: its solved challenges in the window (a sliding count), plus what it spent."""
        key = client_key(scope)
        now = time.time()
        current, previous = await self.counted(self.storage.read(self.mint_keys(key, now)), [0, 0])
        carried = previous * (1 - (now % self.window) / self.window)
        if self.spent is not None:
            share = await self.counted(self.spent(key), 0.0)
            carried += int(max(0.0, min(1.0, share)) * SPENT_MINTS_PER_WINDOW)
        position = self.rung_for(int(carried + current))
        return Position(position.index, position.step, position.mints, carried)

    def rung_for(self, mints: int) -> Position:
        """The rung after ``mints`` mints; 429 on a ``refuse`` rung."""
        chosen: Position | None = None
        for index, rung in enumerate(self.rungs):
            if rung.after > mints:
                break
            if rung.step == "refuse":
                # The count slides: by the end of this period, the mints of the last one no longer count.
                wait = max(1, math.ceil(self.window - time.time() % self.window))
                raise RateLimitExceeded(
                    f"This client asked for too many tokens. Try again in {wait} seconds.", retry_after=wait
                )
            if rung.step == "captcha" and self.captcha is None:
                continue  # proof-of-work only: the last work rung holds until 'refuse'
            if isinstance(rung.step, int) and not self.pow:
                chosen = Position(index, "captcha", mints)  # a CAPTCHA at every rung
            else:
                chosen = Position(index, rung.step, mints)
        assert chosen is not None  # the first rung is never 'refuse' nor skipped (it is work or a CAPTCHA)
        return chosen

    def mint_keys(self, client: str, now: float) -> tuple[str, str]:
        """Where a client's mints are counted: this period, and the last one (which still partly counts)."""
        period = int(now // self.window)
        return f"challenge:mints:{client}:{period}", f"challenge:mints:{client}:{period - 1}"

    async def counted(self, operation: Awaitable[T], unknown: T) -> T:
        """A storage operation's result; when the storage fails open, ``unknown`` (the first rung, a fresh solution)."""
        try:
            return await self.storage.guarded(operation)
        except StorageUnavailable:
            if not self.storage.fail_open:
                raise
            return unknown

    def issue(self, scope: Scope, position: Position) -> dict[str, Any]:
        """The challenge for ``position``, as ``GET /api/challenge`` answers it."""
        if position.step == "captcha":
            assert self.captcha is not None
            return self.captcha.challenge()
        assert isinstance(position.step, int)
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.ttl)
        options = ChallengeOptions(
            algorithm=_ALGORITHM,
            max_number=position.step,
            salt_length=12,
            hmac_key=self.key,
            expires=expires,
            params={"c": self.client_tag(scope), "s": str(position.index), "k": self.kid},
        )
        made = create_challenge(options)
        return {
            "kind": "pow",
            "algorithm": made.algorithm,
            "challenge": made.challenge,
            "maxnumber": made.max_number,
            "salt": made.salt,
            "signature": made.signature,
            "expires_at": int(expires.timestamp()),
            "step": position.index,
        }

    def client_tag(self, scope: Scope, key: str | None = None) -> str:
        """Who a challenge was given to: the client key under the challenge key, not the address itself."""
        key = self.key if key is None else key
        return hmac.new(key.encode(), client_key(scope).encode(), hashlib.sha256).hexdigest()[:16]

    async def aclose(self) -> None:
        if self.captcha is not None:
            await self.captcha.aclose()


def _challenge_key(secret: bytes) -> str:
    """The HMAC key of the challenges, from a JWT secret."""
    return hmac.new(secret, b"llmguard challenge v1", hashlib.sha256).hexdigest()


class Captcha:
    """One CAPTCHA provider's siteverify, with its widget's site key and script."""

    def __init__(
        self,
        kind: str,
        *,
        site_key: str,
        secret: str,
        verify_url: str,
        script_url: str,
        action: str | None,
        hostnames: set[str],
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.kind = kind
        self.site_key = site_key
        self.secret = secret
        self.verify_url = verify_url
        self.script_url = script_url
        self.action = action
        self.hostnames = hostnames
        self.timeout = timeout
        self.transport = transport
        self._client: httpx.AsyncClient | None = None

    def challenge(self) -> dict[str, Any]:
        return {"kind": self.kind, "site_key": self.site_key, "action": self.action, "script": self.script_url}

    async def check(self, response: str, scope: Scope) -> str | None:
        """What is wrong with the widget's ``response`` (``None``: nothing); 503 when the verifier fails."""
        form = {"secret": self.secret, "response": response}
        client = request_state(scope).client_ip
        if client and "/" not in client:  # an address, not an IPv6 group
            form["remoteip"] = client
        try:
            # One deadline for the whole call: httpx's timeouts are per read, and a verifier may drip.
            with anyio.fail_after(self.timeout):
                reply = await self.client.post(self.verify_url, data=form)
            result = reply.json() if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            logger.warning("%s siteverify failed: %s", self.kind, type(exc).__name__)
            raise ChallengeUnavailable(retry_after=5) from None
        if not isinstance(result, dict):
            logger.warning("%s siteverify answered %s", self.kind, reply.status_code)
            raise ChallengeUnavailable(retry_after=5)
        codes = result.get("error-codes") or []
        if any(isinstance(code, str) and "secret" in code for code in codes):
            logger.error("%s siteverify refused the secret (CAPTCHA_SECRET): %s", self.kind, codes)
            raise ChallengeUnavailable(retry_after=60)
        if result.get("success") is not True:
            if "timeout-or-duplicate" in codes:
                return "The CAPTCHA expired or was used already; solve it again."
            return "The CAPTCHA was not solved."
        if result.get("hostname") not in self.hostnames:
            return "The CAPTCHA was solved on another site."
        if self.action is not None and result.get("action") != self.action:
            return "The CAPTCHA was solved for another action."
        return None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.transport, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
