"""Who is asking: the client IP every guard keys on, spoof-proof by construction.

The socket peer is the client, unless the peer is a configured trusted proxy:
then the forwarding header is read right to left, skipping trusted hops, and
the first untrusted address is the client (what a client writes on the left is
never believed). IPv6 clients are grouped by /64, the block one subscriber
usually holds; ``::ffff:a.b.c.d`` counts as ``a.b.c.d``. A value that is not an
IP address never becomes a key.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence

from starlette.types import Scope

from llmguard._state import request_state

logger = logging.getLogger("llmguard.client_ip")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Clients with no IP at all (a Unix socket) share one bucket rather than none.
UNKNOWN = "unknown"
MAX_HOPS = 32
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


class ClientIP:
    """Resolve the rate-limit key of a request: an IPv4 address or an IPv6 /64."""

    def __init__(
        self,
        *,
        trusted_proxies: Sequence[str] = (),
        header: str | None = None,
        ipv6_prefix: int = 64,
    ) -> None:
        if isinstance(trusted_proxies, str):
            raise ValueError(f"trusted_proxies has value {trusted_proxies!r}: expected a list of IPs or CIDRs")
        try:
            self.trusted = tuple(ipaddress.ip_network(proxy.strip(), strict=False) for proxy in trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None
        if header is not None and (
            not _HEADER_NAME.fullmatch(header.strip()) or header.strip().lower() == "x-forwarded-for"
        ):
            raise ValueError(f"header has value {header!r}: name a platform header such as Fly-Client-IP")
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix has value {ipv6_prefix!r}: expected 1 to 128")
        self.header = header.strip().lower().encode("latin-1") if header else None
        self.ipv6_prefix = ipv6_prefix
        self._warned = False

    def __call__(self, scope: Scope) -> str:
        """The client's key, computed once per request and kept in ``scope["llmguard"]``."""
        state = request_state(scope)
        if state.client_ip is None:
            state.client_ip = self.resolve(scope)
        return state.client_ip

    def resolve(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = parse_ip(client[0]) if client else None
        if peer is None:
            return UNKNOWN
        if not self.is_trusted(peer):
            if not self._warned and self._has_forwarding_headers(scope):
                self._warned = True
                logger.warning(
                    "requests from %s carry forwarding headers, but %s is not in TRUSTED_PROXIES: every client "
                    "behind that proxy shares one rate-limit bucket. If the proxy is yours, trust it.",
                    peer,
                    peer,
                )
            return self.key(peer)
        return self.key(self._forwarded_client(scope) or peer)

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
