"""Who is asking: the client every guard keys on, resolved once at the edge, spoof-proof by construction.

``ClientIP`` goes outermost, as uvicorn's ``ProxyHeadersMiddleware`` does: it
resolves the client once and writes the key into ``scope["llmguard"]``, where
every guard reads it with :func:`client_key`. The socket peer is the client,
unless the peer is a configured trusted proxy: then the forwarding header is
read right to left, skipping trusted hops, and the first untrusted address is
the client (what a client writes on the left is never believed). IPv6 clients
are grouped by /64, the block one subscriber usually holds (``ipv6_prefix``:
``48`` where tunnel brokers hand out whole /48s); ``::ffff:a.b.c.d`` counts as
``a.b.c.d``. A value that is not an IP address never becomes a key.

A peer with no address at all (a Unix socket: ``scope["client"]`` is None)
cannot be told apart from another: every such client shares the key
``unknown``. Behind a proxy that connects over a Unix socket, trust it with the
name ``unix`` among the trusted proxies, and its forwarding headers are read as
from any trusted peer.

A guard used without ``ClientIP`` in front keys on the socket peer and never on
a forwarding header: the safe default, like uvicorn without its middleware.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard._state import request_state

logger = logging.getLogger("llmguard.client_ip")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Clients with no IP at all (a Unix socket) share one bucket rather than none.
UNKNOWN = "unknown"
#: The trusted-proxy name of a peer with no address (a proxy connecting over a Unix socket).
UNIX = "unix"
MAX_HOPS = 32
# The widest IPv6 grouping that still makes sense: /32 is a whole provider's allocation.
IPV6_PREFIXES = range(32, 129)
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


def trusted_networks(proxies: Sequence[str], *, option: str = "trusted_proxies") -> tuple[IPNetwork, ...]:
    """The networks of ``proxies`` (IPs or CIDRs, and ``unix``, which is not a network and is left out);
    ``ValueError`` naming ``option`` and the bad value."""
    if isinstance(proxies, str):
        raise ValueError(f"{option} has value {proxies!r}: expected a list of IPs or CIDRs")
    networks = []
    for proxy in proxies:
        if _is_unix(proxy):
            continue
        try:
            networks.append(ipaddress.ip_network(str(proxy).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{option} has value {proxy!r}: not an IP address or CIDR network (or {UNIX!r}, for a Unix socket)"
            ) from None
    return tuple(networks)


def check_trusted_proxies(proxies: Sequence[str], *, option: str = "trusted_proxies") -> tuple[str, ...]:
    """``proxies`` as ``ClientIP`` reads them, normalized (``10.0.0.0/8``, ``unix``); ``ValueError`` otherwise."""
    networks = trusted_networks(proxies, option=option)
    return ((UNIX,) if any(_is_unix(proxy) for proxy in proxies) else ()) + tuple(str(net) for net in networks)


def check_ipv6_prefix(prefix: int, *, option: str = "ipv6_prefix") -> int:
    """An IPv6 grouping prefix length, 32 to 128; ``ValueError`` naming ``option`` otherwise."""
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix not in IPV6_PREFIXES:
        raise ValueError(f"{option} has value {prefix!r}: expected 32 to 128 (64: a subscriber's subnet, 48: a site)")
    return prefix


def _is_unix(proxy: object) -> bool:
    return isinstance(proxy, str) and proxy.strip().lower() == UNIX


def header_name(name: str, *, option: str = "header") -> bytes:
    """A platform header's name as ASGI spells it (``b"fly-client-ip"``); ``ValueError`` naming ``option``."""
    text = name.strip() if isinstance(name, str) else ""
    if not _HEADER_NAME.fullmatch(text):
        raise ValueError(f"{option} has value {name!r}: name a platform header such as Fly-Client-IP")
    if text.lower() == "x-forwarded-for":
        raise ValueError(
            f"{option} has value {name!r}: X-Forwarded-For is always read from trusted proxies; "
            "name a platform header such as Fly-Client-IP"
        )
    return text.lower().encode("latin-1")


def client_key(scope: Scope) -> str:
    """The client's key for this request: what ``ClientIP`` resolved, else the socket peer's."""
    state = request_state(scope)
    if state.client_ip is None:
        state.client_ip = _PEER_ONLY.resolve(scope)
    return state.client_ip


class ClientIP:
    """Resolve the client once, at the edge: an IPv4 address or an IPv6 /64 in ``scope["llmguard"]``.

    Put it outside every guard (and outside the access log, so refused requests
    log the real client too)::

        app = ClientIP(AccessLog(guarded_app), trusted_proxies=["10.0.0.0/8"])

    ``trusted_proxies`` are the IPs or CIDRs whose forwarding headers are
    believed (``"unix"``: a peer with no address, a proxy on a Unix socket);
    ``header`` names a platform header (``Fly-Client-IP``,
    ``CF-Connecting-IP``) read before ``X-Forwarded-For`` from those proxies.
    ``ipv6_prefix`` is how IPv6 clients are grouped (32 to 128).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Sequence[str] = (),
        header: str | None = None,
        ipv6_prefix: int = 64,
    ) -> None:
        self.app = app
        self.ipv6_prefix = check_ipv6_prefix(ipv6_prefix)
        self.trusted = trusted_networks(trusted_proxies)
        self.trusts_unix = not isinstance(trusted_proxies, str) and any(_is_unix(p) for p in trusted_proxies)
        self.header = header_name(header) if header is not None else None
        self._warned = False
        self._warned_no_address = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_state(scope).client_ip = self.resolve(scope)
        await self.app(scope, receive, send)

    def resolve(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = parse_ip(client[0]) if client else None
        if peer is None:
            forwarded = self._forwarded_client(scope) if self.trusts_unix else None
            if forwarded is None:
                self._warn_no_address()
                return UNKNOWN
            return self.key(forwarded)
        if not self.is_trusted(peer):
            if not self._warned and self._has_forwarding_headers(scope):
                self._warned = True
                logger.warning(
                    "requests from %s carry forwarding headers, but %s is not in TRUSTED_PROXIES: every client "
                    "behind that proxy shares one rate-limit bucket. If the proxy is yours, trust it "
                    "(ClientIP(trusted_proxies=...) in front of the guards).",
                    peer,
                    peer,
                )
            return self.key(peer)
        return self.key(self._forwarded_client(scope) or peer)

    def _warn_no_address(self) -> None:
        # Once per process: the same cause repeats on every request.
        if self._warned_no_address:
            return
        self._warned_no_address = True
        if self.trusts_unix:
            logger.warning(
                "a request came from a peer with no address (a Unix socket), trusted as 'unix', but without a "
                "forwarding header llmguard can read: every such client shares one rate-limit bucket. Make the "
                "proxy send X-Forwarded-For%s.",
                "" if self.header is None else f" or {self.header.decode()}",
            )
        else:
            logger.warning(
                "a request came with no client address (a Unix socket?): every such client shares one "
                "rate-limit bucket and one token budget. Behind a proxy on a Unix socket, trust it: "
                "TRUSTED_PROXIES=unix (ClientIP(trusted_proxies=['unix']))."
            )

    def key(self, ip: IPAddress) -> str:
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, self.ipv6_prefix), strict=False))
        return str(ip)

    def is_trusted(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.trusted)

    def _forwarded_client(self, scope: Scope) -> IPAddress | None:
        forwarded_for: list[str] = []
        platform: IPAddress | None = None
        for name, value in scope["headers"]:
            if name == self.header:
                # The last line is the one nearest the proxy, if a platform ever appended one.
                platform = parse_ip(value.decode("latin-1")) or platform
            elif name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
        if platform is not None:
            return platform
        hops = ",".join(forwarded_for).split(",")[-MAX_HOPS:]
        nearest_trusted: IPAddress | None = None
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:
                # Only a trusted proxy could have written this far right: stop at the last good hop.
                return nearest_trusted
            if not self.is_trusted(ip):
                return ip
            nearest_trusted = ip
        return nearest_trusted

    def _has_forwarding_headers(self, scope: Scope) -> bool:
        return any(name in (b"x-forwarded-for", b"forwarded", self.header) for name, _ in scope["headers"])


def parse_ip(text: str) -> IPAddress | None:
    """An address from a header or socket value (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``), or None."""
    value = text.strip().strip('"')
    if len(value) > 64:
        return None
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id:
            ip = ipaddress.IPv6Address(value.split("%", 1)[0])
    return ip


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("only ClientIP.resolve is used without an app")


# What a guard with no ClientIP in front keys on: the socket peer, never a forwarding header
# (and one warning if forwarding headers arrive, since the operator probably meant to trust a proxy).
_PEER_ONLY = ClientIP(_no_app)
