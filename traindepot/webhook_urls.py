"""Which URLs a webhook may be sent to: `http(s)` URLs whose host resolves only to public
addresses, unless the operator allows a network (`TRAINDEPOT_WEBHOOK_ALLOWED_NETWORKS`).

A webhook is a request the server makes for a user, so a URL naming the server's own
loopback, a private network or a cloud's link-local metadata service would let a user probe
what only the server can reach. The check runs when a subscription is made (a `422` naming
the URL) and again right before each delivery, whose connection then goes to the very
address that was checked (`Target.url`): a name that resolved to a public address at submit
and to a private one later (DNS rebinding) is refused at send time too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2048


class UnsafeUrl(ValueError):
    """The URL may not receive webhooks; the message says why."""


def check_syntax(url: str) -> str:
    """`url` if it is an absolute `http`/`https` URL with a host and no credentials."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise UnsafeUrl(f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("a webhook URL must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry credentials; verify the signature instead")
    return url


def _kind(address: IPAddress) -> str:
    for name in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


def refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why `address` may not receive webhooks (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return None
    if address.is_global and not address.is_multicast:
        return None
    return f"not a public address ({_kind(address)})"


@dataclass(frozen=True)
class Target:
    """Where to send: `url` names the checked address; `host` is the `Host` header, and
    `sni_hostname` the name TLS verifies (https only)."""

    url: str
    host: str
    sni_hostname: str | None


def resolve(url: str, allowed: Sequence[IPNetwork]) -> Target:
    """Resolve the URL's host; raise UnsafeUrl unless every address it resolves to may
    receive webhooks. The connection must go to `Target.url`, the address checked here."""
    parts = urlsplit(check_syntax(url))
    host = parts.hostname
    assert host is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"cannot resolve {host!r}: {exc}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address not in addresses:
            addresses.append(address)
    for address in addresses:
        why = refusal(address, allowed)
        if why is not None:
            raise UnsafeUrl(
                f"{host!r} resolves to {address}, {why}: webhooks go to public addresses only"
                " (unless the server allows the network)"
            )
    first = addresses[0]
    literal = f"[{first}]" if first.version == 6 else str(first)
    pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    is_name = host != str(first)
    netloc_host = parts.netloc.rpartition("@")[2]
    return Target(
        url=pinned,
        host=netloc_host,
        sni_hostname=host if parts.scheme == "https" and is_name else None,
    )
