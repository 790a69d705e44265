"""Which URLs a webhook may call: http(s) only, and (unless the operator allows them) never an address
on loopback, a private network, link-local (cloud metadata services) or otherwise not global (SSRF).

Checked when an endpoint is registered or changed, and again at each delivery, where the connection is
then made to the very address that was checked: a name that resolves to a public address at
registration and to 127.0.0.1 later (DNS rebinding) is refused then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from loom.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOW_SETTING = "LOOM_WEBHOOKS_ALLOW_PRIVATE"


class AddressRefused(Exception):
    """The URL may not be called; the message says why (shown to the client or kept as the last error)."""


@dataclass(frozen=True)
class Target:
    """Where to connect for a URL: the checked address, and the name the request and TLS still use."""

    scheme: str
    host: str
    port: int
    address: IPAddress
    path: str

    @property
    def pinned_url(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def is_public(address: IPAddress) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


async def resolve(url: str, *, allow_private: bool) -> Target:
    """The address to deliver `url` to; AddressRefused if the URL is malformed, does not resolve, or
    resolves to any address that is not public while private ones are not allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"the URL is not valid ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("the URL must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise AddressRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("the URL may not carry credentials")
    port = port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise AddressRefused(f"the host '{host}' could not be resolved") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise AddressRefused(f"the host '{host}' could not be resolved")
    refused = [a for a in addresses if not is_public(a)]
    # Every address the name has must be public: a resolver may hand out any of them.
    if refused and not allow_private:
        raise AddressRefused(
            f"'{host}' resolves to {refused[0]}, a loopback, private or link-local address; webhooks to "
            f"such addresses are refused unless the server's operator allows them ({ALLOW_SETTING}=true)"
        )
    return Target(parts.scheme, host, port, addresses[0], path)


async def check_url(url: str, *, allow_private: bool) -> None:
    """At registration: a 400 (`param: url`) when the URL may not be called."""
    try:
        await resolve(url, allow_private=allow_private)
    except AddressRefused as exc:
        raise InvalidRequest(f"Invalid 'url': {exc}.", param="url", code="invalid_url") from None
