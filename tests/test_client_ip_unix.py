"""Clients with no address (a Unix socket), ``TRUSTED_PROXIES=unix``, and ``IPV6_PREFIX``."""

from __future__ import annotations

import logging

import pytest
from harness import make_settings

from llmguard import Settings
from llmguard._cli import warn_blind_socket
from llmguard._client_ip import UNKNOWN, ClientIP, check_trusted_proxies
from llmguard._settings import SettingsError
from llmguard._state import request_state


async def _app(scope: object, receive: object, send: object) -> None:
    return None


def scope_of(client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, object]:
    return {"type": "http", "client": client, "headers": headers or []}


def resolve(guard: ClientIP, client: tuple[str, int] | None, forwarded: str | None = None) -> str:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return guard.resolve(scope_of(client, headers))


def test_a_peer_with_no_address_is_unknown_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    guard = ClientIP(_app)
    caplog.set_level(logging.WARNING, "llmguard.client_ip")
    assert resolve(guard, None) == UNKNOWN
    assert resolve(guard, None, forwarded="198.51.100.7") == UNKNOWN  # not trusted: not believed
    warnings = [record.getMessage() for record in caplog.records if record.name == "llmguard.client_ip"]
    assert len(warnings) == 1
    assert "no client address" in warnings[0]
    assert "TRUSTED_PROXIES=unix" in warnings[0]


def test_a_trusted_unix_proxy_forwards_the_client() -> None:
    guard = ClientIP(_app, trusted_proxies=["unix"])
    assert resolve(guard, None, forwarded="198.51.100.7") == "198.51.100.7"
    assert resolve(guard, None, forwarded="203.0.113.9, 198.51.100.7") == "198.51.100.7"
    assert resolve(guard, None, forwarded="2001:db8:1:2::7") == "2001:db8:1:2::/64"
    # A TCP peer is not a Unix socket: 'unix' trusts no address.
    assert resolve(guard, ("192.0.2.1", 5000), forwarded="198.51.100.7") == "192.0.2.1"


def test_a_trusted_unix_proxy_with_a_platform_header() -> None:
    guard = ClientIP(_app, trusted_proxies=["unix", "10.0.0.0/8"], header="Fly-Client-IP")
    scope = scope_of(None, [(b"fly-client-ip", b"198.51.100.8"), (b"x-forwarded-for", b"1.2.3.4")])
    assert guard.resolve(scope) == "198.51.100.8"
    assert resolve(guard, None, forwarded="198.51.100.7, 10.1.1.1") == "198.51.100.7"


def test_a_trusted_unix_proxy_that_forwards_nothing_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    guard = ClientIP(_app, trusted_proxies=["unix"])
    caplog.set_level(logging.WARNING, "llmguard.client_ip")
    assert resolve(guard, None) == UNKNOWN
    assert resolve(guard, None) == UNKNOWN
    warnings = [record.getMessage() for record in caplog.records if record.name == "llmguard.client_ip"]
    assert len(warnings) == 1
    assert "without a forwarding header" in warnings[0]


async def test_the_client_lands_in_the_scope() -> None:
    guard = ClientIP(_app, trusted_proxies=["UNIX"])
    scope = scope_of(None, [(b"x-forwarded-for", b"198.51.100.7")])

    async def receive() -> dict[str, object]:
        return {}

    async def send(message: object) -> None:
        return None

    await guard(scope, receive, send)
    assert request_state(scope).client_ip == "198.51.100.7"


def test_trusted_proxies_keep_unix_as_a_setting() -> None:
    assert check_trusted_proxies(["10.0.0.1", " Unix "]) == ("unix", "10.0.0.1/32")
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-x", "TRUSTED_PROXIES": "unix, 10.0.0.0/8"})
    assert settings.trusted_proxies == ("unix", "10.0.0.0/8")
    assert settings.arguments("ClientIP")["trusted_proxies"] == ("unix", "10.0.0.0/8")
    with pytest.raises(SettingsError, match=r"not an IP address or CIDR network \(or 'unix'"):
        Settings.from_env({"OPENAI_API_KEY": "sk-x", "TRUSTED_PROXIES": "unix-socket"})


@pytest.mark.parametrize(("text", "prefix"), [("48", 48), ("/48", 48), (" /56 ", 56), ("128", 128), ("32", 32)])
def test_the_ipv6_prefix_is_a_setting(text: str, prefix: int) -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-x", "IPV6_PREFIX": text})
    assert settings.ipv6_prefix == prefix
    assert settings.arguments("ClientIP")["ipv6_prefix"] == prefix
    assert make_settings().ipv6_prefix == 64


@pytest.mark.parametrize("text", ["0", "31", "129", "/", "sixty-four", "/64/"])
def test_an_insane_ipv6_prefix_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENAI_API_KEY": "sk-x", "IPV6_PREFIX": text})
    assert caught.value.name == "IPV6_PREFIX"


def test_a_48_groups_a_tunnel_brokers_whole_site() -> None:
    guard = ClientIP(_app, ipv6_prefix=48)
    assert resolve(guard, ("2001:db8:5:1::1", 1)) == resolve(guard, ("2001:db8:5:ff00::1", 1)) == "2001:db8:5::/48"
    with pytest.raises(ValueError, match=r"ipv6_prefix has value 16: expected 32 to 128"):
        ClientIP(_app, ipv6_prefix=16)


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({}, True),
        ({"trusted_proxies": ("10.0.0.1",)}, True),
        ({"trusted_proxies": ("10.0.0.1",), "client_ip_header": "Fly-Client-IP"}, True),
        ({"trusted_proxies": ("unix",)}, False),
    ],
)
def test_serving_on_a_unix_socket_warns_unless_unix_is_trusted(
    caplog: pytest.LogCaptureFixture, overrides: dict[str, object], warned: bool
) -> None:
    caplog.set_level(logging.WARNING, "llmguard")
    warn_blind_socket(make_settings(**overrides), logging.getLogger("llmguard"))
    messages = [record.getMessage() for record in caplog.records]
    assert bool(messages) is warned
    if warned:
        assert "TRUSTED_PROXIES=unix" in messages[0]
        assert "one rate limit" in messages[0]
