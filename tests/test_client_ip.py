from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from harness import HELLO, PEER, Harness, access_records, asgi_client, assert_error, client_tokens, fields_of
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from llmguard._client_ip import ClientIP, client_key, header_name, parse_ip, trusted_networks
from llmguard._rate_limit import IPRateLimit

PROXY = "10.0.0.2"
TRUSTED = ("10.0.0.0/8",)

Header = tuple[str, str | bytes]

# Values a client or a broken proxy may write where an address belongs; none may become a key.
JUNK: list[Any] = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("unknown", id="unknown"),
    pytest.param("_hidden", id="obfuscated-identifier"),
    pytest.param("1.2.3.999", id="octet-out-of-range"),
    pytest.param("1.2.3", id="three-octets"),
    pytest.param("1.2.3.4/24", id="a-network"),
    pytest.param("for=198.51.100.9", id="forwarded-syntax"),
    pytest.param("::ffff:zz", id="bad-mapped-ipv6"),
    pytest.param("[2001:db8::1", id="unclosed-bracket"),
    pytest.param("1.2.3.4:80:90", id="two-ports"),
    pytest.param("9" * 10240, id="10kb"),
    pytest.param("\x00", id="nul"),
    pytest.param("1.2.3.4\x00", id="nul-after-address"),
    pytest.param(b"\xc3\xa9\xff\xfe".decode("latin-1"), id="non-latin-bytes"),
]


def make_scope(peer: str | None = PEER, headers: Sequence[Header] = ()) -> Scope:
    raw = [
        (name.lower().encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1"))
        for name, value in headers
    ]
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/chat",
        "headers": raw,
        "client": None if peer is None else (peer, 51234),
    }


async def unreachable(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("resolve() never calls the app")


def key_of(peer: str | None, headers: Sequence[Header] = (), **options: Any) -> str:
    return ClientIP(unreachable, **options).resolve(make_scope(peer, headers))


# -- parse_ip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.9", "198.51.100.9"),
        ("  198.51.100.9 ", "198.51.100.9"),
        ("198.51.100.9:4711", "198.51.100.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("[::ffff:1.2.3.4]:80", "1.2.3.4"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_parse_ip_reads_addresses_with_ports_brackets_and_mapped_ipv4(text: str, expected: str) -> None:
    assert str(parse_ip(text)) == expected


@pytest.mark.parametrize("text", JUNK)
def test_parse_ip_refuses_junk(text: str) -> None:
    assert parse_ip(text) is None


# -- ClientIP: the socket peer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (PEER, PEER),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        (None, "unknown"),
        ("", "unknown"),
        ("testclient", "unknown"),
        ("1.2.3.999", "unknown"),
    ],
)
def test_the_socket_peer_is_the_client(peer: str | None, expected: str) -> None:
    assert key_of(peer) == expected


def test_mapped_ipv4_and_plain_ipv4_share_a_key() -> None:
    assert key_of("::ffff:1.2.3.4") == key_of("1.2.3.4")


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        pytest.param("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", True, id="one-64"),
        pytest.param("2001:db8:1:2::1", "2001:db8:1:2::2", True, id="neighbours"),
        pytest.param("2001:db8:1:2::1", "2001:db8:1:3::1", False, id="next-64"),
        pytest.param("2001:db8:1:2::1", "2001:db9:1:2::1", False, id="other-network"),
        pytest.param("198.51.100.1", "198.51.100.2", False, id="ipv4-neighbours"),
    ],
)
def test_ipv6_clients_are_grouped_by_64(first: str, second: str, same: bool) -> None:
    assert (key_of(first) == key_of(second)) is same


def test_the_ipv6_prefix_can_be_widened() -> None:
    assert key_of("2001:db8:1:2::1", ipv6_prefix=48) == key_of("2001:db8:1:3::1", ipv6_prefix=48)
    assert key_of("2001:db8:1:2::1", ipv6_prefix=48) == "2001:db8:1::/48"


# -- spoofing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("x-forwarded-for", "198.51.100.9")], id="xff"),
        pytest.param([("x-forwarded-for", "198.51.100.9, 10.0.0.3")], id="xff-with-trusted-hop"),
        pytest.param([("x-forwarded-for", "10.0.0.3")], id="xff-naming-a-trusted-proxy"),
        pytest.param([("forwarded", "for=198.51.100.9;proto=https")], id="forwarded"),
        pytest.param([("fly-client-ip", "198.51.100.9")], id="platform-header"),
        pytest.param([("x-real-ip", "198.51.100.9")], id="x-real-ip"),
        pytest.param(
            [("fly-client-ip", "198.51.100.9"), ("x-forwarded-for", "198.51.100.10")],
            id="platform-and-xff",
        ),
    ],
)
def test_forwarding_headers_from_an_untrusted_peer_never_change_the_key(headers: list[Header]) -> None:
    assert key_of(PEER, headers, trusted_proxies=TRUSTED, header="Fly-Client-IP") == PEER


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        pytest.param("198.51.100.9", "198.51.100.9", id="one-hop"),
        pytest.param("6.6.6.6, 198.51.100.9", "198.51.100.9", id="forged-leftmost"),
        pytest.param("6.6.6.6, 7.7.7.7, 198.51.100.9, 10.0.0.3", "198.51.100.9", id="skips-trusted-hops"),
        pytest.param("10.0.0.99, 198.51.100.9", "198.51.100.9", id="forged-trusted-leftmost"),
        pytest.param("unknown, 198.51.100.9", "198.51.100.9", id="junk-leftmost"),
        pytest.param("198.51.100.9:4711", "198.51.100.9", id="with-port"),
        pytest.param("[2001:db8:1:2::7]:443", "2001:db8:1:2::/64", id="bracketed-ipv6"),
        pytest.param("::ffff:198.51.100.9", "198.51.100.9", id="mapped-ipv4"),
        pytest.param("1.1.1.1, " * 1200 + "198.51.100.9", "198.51.100.9", id="10kb-of-forged-hops"),
        pytest.param("10.0.0.7, 10.0.0.3", "10.0.0.7", id="all-hops-trusted"),
    ],
)
def test_x_forwarded_for_from_a_trusted_proxy_is_read_right_to_left(forwarded_for: str, expected: str) -> None:
    headers = [("x-forwarded-for", forwarded_for)]
    assert key_of(PROXY, headers, trusted_proxies=TRUSTED) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.9, 10.0.0.3")],
            "198.51.100.9",
            id="forged-first-line",
        ),
        pytest.param(
            [("x-forwarded-for", "198.51.100.9"), ("x-forwarded-for", "10.0.0.3")],
            "198.51.100.9",
            id="trusted-hop-on-its-own-line",
        ),
        pytest.param(
            [("x-forwarded-for", "198.51.100.8"), ("x-forwarded-for", "198.51.100.9")],
            "198.51.100.9",
            id="the-last-line-is-nearest",
        ),
    ],
)
def test_several_x_forwarded_for_headers_are_read_as_one_list(headers: list[Header], expected: str) -> None:
    assert key_of(PROXY, headers, trusted_proxies=TRUSTED) == expected


def test_a_trusted_peer_without_forwarding_headers_is_the_client() -> None:
    assert key_of(PROXY, trusted_proxies=TRUSTED) == PROXY


def test_a_trusted_proxy_seen_as_a_mapped_ipv6_peer_is_trusted() -> None:
    # What a dual-stack socket reports for an IPv4 proxy.
    headers = [("x-forwarded-for", "6.6.6.6, 198.51.100.9")]
    assert key_of("::ffff:10.0.0.2", headers, trusted_proxies=TRUSTED) == "198.51.100.9"


def test_a_trusted_proxy_can_be_named_by_ipv6_address() -> None:
    headers = [("x-forwarded-for", "6.6.6.6, 198.51.100.9")]
    assert key_of("2001:db8::10", headers, trusted_proxies=["2001:db8::10"]) == "198.51.100.9"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Fly-Client-IP", "fly-client-ip"),
        ("cf-connecting-ip", "cf-connecting-ip"),
        ("CF-Connecting-IP", "CF-Connecting-IP"),
    ],
)
def test_the_platform_header_is_used_when_configured_and_the_peer_is_trusted(header: str, name: str) -> None:
    headers = [(name, "198.51.100.9"), ("x-forwarded-for", "6.6.6.6, 198.51.100.10")]
    assert key_of(PROXY, headers, trusted_proxies=TRUSTED, header=header) == "198.51.100.9"


def test_the_platform_header_carries_ipv6_grouped_by_64() -> None:
    headers = [("cf-connecting-ip", "2001:db8:1:2::7")]
    key = key_of(PROXY, headers, trusted_proxies=TRUSTED, header="CF-Connecting-IP")
    assert key == "2001:db8:1:2::/64"


def test_a_platform_header_that_is_not_configured_is_ignored() -> None:
    headers = [("fly-client-ip", "6.6.6.6"), ("x-forwarded-for", "198.51.100.9")]
    assert key_of(PROXY, headers, trusted_proxies=TRUSTED) == "198.51.100.9"
    assert key_of(PROXY, headers, trusted_proxies=TRUSTED, header="CF-Connecting-IP") == "198.51.100.9"


# -- junk -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", JUNK)
@pytest.mark.parametrize("peer", [PEER, PROXY])
def test_junk_forwarding_values_never_become_a_key(value: str, peer: str) -> None:
    headers = [("x-forwarded-for", value), ("fly-client-ip", value), ("forwarded", value)]
    assert key_of(peer, headers, trusted_proxies=TRUSTED, header="Fly-Client-IP") == peer


@pytest.mark.parametrize("value", [b"\xc3\xa9", b"\xff\xfe\x00", b"\x00", b"198.51.100.9\xff"])
def test_raw_non_latin_header_bytes_never_become_a_key(value: bytes) -> None:
    headers = [("x-forwarded-for", value), ("fly-client-ip", value)]
    assert key_of(PROXY, headers, trusted_proxies=TRUSTED, header="Fly-Client-IP") == PROXY


# -- the misconfiguration warning ---------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmguard.client_ip" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "header",
    [
        ("x-forwarded-for", "198.51.100.66"),
        ("forwarded", "for=198.51.100.66"),
        ("fly-client-ip", "198.51.100.66"),
    ],
)
def test_forwarding_headers_from_an_untrusted_peer_are_warned_about_once(
    header: Header, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmguard.client_ip")
    client_ip = ClientIP(unreachable, trusted_proxies=TRUSTED, header="Fly-Client-IP")
    for _ in range(5):
        assert client_ip.resolve(make_scope(PEER, [header])) == PEER

    (warning,) = warnings_of(caplog)
    message = warning.getMessage()
    assert PEER in message
    assert "TRUSTED_PROXIES" in message
    assert "198.51.100.66" not in caplog.text


@pytest.mark.parametrize(
    ("peer", "headers"),
    [
        pytest.param(PEER, [], id="untrusted-without-headers"),
        pytest.param(PROXY, [("x-forwarded-for", "198.51.100.9")], id="trusted-with-headers"),
    ],
)
def test_no_warning_when_nothing_is_misconfigured(
    peer: str, headers: list[Header], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmguard.client_ip")
    ClientIP(unreachable, trusted_proxies=TRUSTED).resolve(make_scope(peer, headers))
    assert warnings_of(caplog) == []


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"trusted_proxies": "10.0.0.1"}, "trusted_proxies", id="proxies-as-a-string"),
        pytest.param({"trusted_proxies": ["not-an-ip"]}, "trusted_proxies", id="proxy-not-an-ip"),
        pytest.param({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies", id="proxy-bad-prefix"),
        pytest.param({"header": "X-Forwarded-For"}, "header", id="header-xff"),
        pytest.param({"header": " x-forwarded-for "}, "header", id="header-xff-lowercase"),
        pytest.param({"header": ""}, "header", id="header-empty"),
        pytest.param({"header": "Fly Client IP"}, "header", id="header-with-spaces"),
        pytest.param({"header": "Fly-Client-IP€"}, "header", id="header-not-latin-1"),
        pytest.param({"ipv6_prefix": 0}, "ipv6_prefix", id="prefix-0"),
        pytest.param({"ipv6_prefix": 129}, "ipv6_prefix", id="prefix-129"),
    ],
)
def test_bad_options_raise_a_value_error_naming_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=option):
        ClientIP(unreachable, **options)


# -- through the app --------------------------------------------------------------------


def client_ips(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The client each access record names, oldest first."""
    return [fields_of(record)["client_ip"] for record in access_records(caplog)]


async def test_the_access_log_shows_the_forwarded_client(
    harness_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness: Harness = await harness_factory(trusted_proxies=(PEER,))
    headers = {"x-forwarded-for": "6.6.6.6, 198.51.100.9"}
    assert (await harness.client.post("/api/token", headers=headers)).status_code == 200
    refused = await harness.client.post("/api/token", headers={**headers, "origin": "https://evil.example"})
    assert_error(refused, 403, "Forbidden")

    assert client_ips(caplog) == ["198.51.100.9", "198.51.100.9"]


async def test_the_platform_header_through_the_app(
    harness_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness: Harness = await harness_factory(trusted_proxies=(PEER,), client_ip_header="Fly-Client-IP")
    headers = {"fly-client-ip": "198.51.100.9", "x-forwarded-for": "198.51.100.10"}
    assert (await harness.client.post("/api/token", headers=headers)).status_code == 200
    untrusted = harness.client_from("192.0.2.50")
    assert (await untrusted.post("/api/token", headers=headers)).status_code == 200

    assert client_ips(caplog) == ["198.51.100.9", "192.0.2.50"]


@pytest.mark.parametrize("trusted", [(), (PEER,)], ids=["untrusted-peer", "trusted-proxy"])
async def test_rotating_forged_forwarding_headers_does_not_escape_the_limit(
    harness_factory: Callable[..., Any], trusted: tuple[str, ...]
) -> None:
    harness: Harness = await harness_factory(token_rate_limit="2/minute", trusted_proxies=trusted)
    statuses = []
    for forged in ["6.6.6.1", "6.6.6.2", "6.6.6.3", "2001:db8:9::1"]:
        # A trusted proxy appends the address it saw; an untrusted client can only write the left.
        forwarded = f"{forged}, 198.51.100.9" if trusted else forged
        headers = {"x-forwarded-for": forwarded, "forwarded": f"for={forged}", "fly-client-ip": forged}
        statuses.append((await harness.client.post("/api/token", headers=headers)).status_code)
    assert statuses == [200, 200, 429, 429]


FORGED = ["6.6.6.1", "6.6.6.2", "6.6.6.3", "2001:db8:9::1"]


def forged_headers(forged: str) -> dict[str, str]:
    return {"x-forwarded-for": forged, "forwarded": f"for={forged}", "fly-client-ip": forged}


async def test_forged_forwarding_headers_share_one_chat_limit_across_both_chat_routes(
    harness_factory: Callable[..., Any],
) -> None:
    harness: Harness = await harness_factory(rate_limit_max=2, rate_limit_window=60)
    token = await harness.token()
    statuses = []
    for index, forged in enumerate(FORGED):
        headers = {**forged_headers(forged), "authorization": f"Bearer {token}"}
        body = {"messages": [{"role": "user", "content": "Hello"}]}
        path = "/api/chat" if index % 2 == 0 else "/v1/chat/completions"
        statuses.append((await harness.client.post(path, json=body, headers=headers)).status_code)
    assert statuses == [200, 200, 429, 429]


async def test_forged_forwarding_headers_do_not_open_a_new_token_window(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(tokens_per_ip="100000/day")
    token = await harness.token()
    for forged in FORGED:
        headers = {**forged_headers(forged), "authorization": f"Bearer {token}"}
        assert (await harness.client.post("/api/chat", json=HELLO, headers=headers)).status_code == 200
    # Every token billed is on the socket peer's window; none on a window a header named.
    assert await client_tokens(harness.app) == harness.provider.billed_tokens > 0
    for forged in FORGED:
        client = str(ipaddress.ip_network(f"{forged}/64", strict=False)) if ":" in forged else forged
        assert await client_tokens(harness.app, f"ip:{client}") == 0


async def test_clients_behind_a_trusted_proxy_get_their_own_limits(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(token_rate_limit="2/minute", trusted_proxies=(PEER,))

    async def mint(client: str) -> int:
        response = await harness.client.post("/api/token", headers={"x-forwarded-for": client})
        return response.status_code

    assert [await mint("198.51.100.1") for _ in range(3)] == [200, 200, 429]
    assert [await mint("198.51.100.2") for _ in range(3)] == [200, 200, 429]
    # One /64 is one subscriber: a new address in it is not a new allowance.
    assert [await mint("2001:db8:1:2::1") for _ in range(2)] == [200, 200]
    assert await mint("2001:db8:1:2::ffff") == 429
    assert await mint("2001:db8:1:3::1") == 200


@pytest.mark.parametrize("value", [*JUNK, pytest.param(b"\xc3\xa9\xff", id="raw-bytes")])
async def test_junk_forwarding_headers_through_the_app_are_served(
    harness_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture, value: str | bytes
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness: Harness = await harness_factory(trusted_proxies=(PEER,), client_ip_header="Fly-Client-IP")
    raw = value if isinstance(value, bytes) else value.encode("latin-1")
    headers = [(b"x-forwarded-for", raw), (b"fly-client-ip", raw), (b"forwarded", raw)]
    response = await harness.client.post("/api/token", headers=headers)
    assert response.status_code == 200
    assert client_ips(caplog) == [PEER]


# -- at the edge, read by every guard -------------------------------------------------------


class Endpoint:
    """Remembers the key the guards would use."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.keys.append(client_key(scope))
        await PlainTextResponse("served")(scope, receive, send)


async def test_client_ip_resolves_once_at_the_edge_for_every_layer_behind_it() -> None:
    endpoint = Endpoint()
    app = ClientIP(endpoint, trusted_proxies=[PEER])
    async with asgi_client(app) as client:
        await client.get("/", headers={"x-forwarded-for": "6.6.6.6, 2001:db8:1:2::7"})
    assert endpoint.keys == ["2001:db8:1:2::/64"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-for": "198.51.100.9"},
        {"forwarded": "for=198.51.100.9"},
        {"fly-client-ip": "198.51.100.9"},
    ],
)
async def test_without_client_ip_in_front_the_socket_peer_is_the_client(headers: dict[str, str]) -> None:
    endpoint = Endpoint()
    async with asgi_client(endpoint, "2001:db8:1:2::1") as client:
        await client.get("/", headers=headers)
    assert endpoint.keys == ["2001:db8:1:2::/64"]


async def test_a_standalone_rate_limit_behind_client_ip_counts_the_forwarded_clients() -> None:
    app = ClientIP(IPRateLimit(PlainTextResponse("served"), limit="1/minute"), trusted_proxies=TRUSTED)
    async with asgi_client(app, PROXY) as client:
        statuses = [
            (await client.post("/", headers={"x-forwarded-for": forwarded})).status_code
            for forwarded in ["198.51.100.1", "198.51.100.2", "6.6.6.6, 198.51.100.1"]
        ]
    assert statuses == [200, 200, 429]


def test_the_option_checks_are_functions_for_the_settings_to_share() -> None:
    assert trusted_networks(["10.0.0.0/8", " 2001:db8::1 "]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::1/128"),
    )
    assert header_name(" Fly-Client-IP ") == b"fly-client-ip"
    with pytest.raises(ValueError, match=r"TRUSTED_PROXIES has value 'nope'"):
        trusted_networks(["nope"], option="TRUSTED_PROXIES")
    with pytest.raises(ValueError, match=r"CLIENT_IP_HEADER has value 'X-Forwarded-For'"):
        header_name("X-Forwarded-For", option="CLIENT_IP_HEADER")
