"""Where webhooks may go: public addresses only, unless the operator allows private ones.

A namespace admin chooses webhook URLs, and the server POSTs to them and records the answer's
status and first bytes. Unchecked, that reaches whatever the server can: its own ports, the
cloud metadata endpoint (169.254.169.254), databases on the private network. So, unless
``alerts.allow_private_webhook_targets`` is on:

1. Creating or updating a channel refuses a URL whose host is an address in any form the
   resolver accepts (``127.1``, ``2130706433``, ``0x7f000001``, ``[::ffff:127.0.0.1]``) or a
   localhost name, when that address is not public (400 ``webhook_target_not_allowed``).
2. Every delivery resolves the host again and connects only to an address it has checked: if
   any address the name resolves to is not public, nothing is sent (a name that was public when
   the channel was made and points at 127.0.0.1 now, as in DNS rebinding, is caught here).
   The connection goes to the checked address itself, never to the name resolved a second time.
3. Redirects are never followed, and proxies from the environment are not used (a proxy would
   resolve the name itself, out of our sight).

"Public" is what :func:`address_allowed` says: globally routable unicast, judged by the standard
library's ``ipaddress`` (loopback, private, link-local, shared, multicast, unspecified and
reserved ranges are not), looking through IPv4-mapped, 6to4 and NAT64 forms.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from meterline.domain.errors import InvalidInput

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

SETTING = "alerts.allow_private_webhook_targets"
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefused(Exception):
    """A delivery's host resolves to an address that is not allowed; nothing was sent."""


def address_allowed(ip: Address) -> bool:
    """Whether ``ip`` is a globally routable unicast address (and so a webhook may go there)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_allowed(ip.ipv4_mapped)
        if ip in _NAT64:
            return address_allowed(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not address_allowed(ip.sixtofour):
            return False
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_unspecified or ip.is_reserved)


def literal_address(host: str) -> Address | None:
    """The address ``host`` spells without any lookup (every numeric form), else None (a name)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%")[0])


def check_url(url: str | None, allow_private: bool) -> None:
    """Refuse (400 ``webhook_target_not_allowed``) a webhook URL whose host is a non-public address
    or a localhost name, unless ``allow_private``. A name is checked at each delivery instead."""
    if allow_private or not url:
        return
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return  # not a URL at all: the channel validation reports it
    ip = literal_address(host) if host else None
    local = host in _LOCAL_NAMES or host.endswith(".localhost")
    if local or (ip is not None and not address_allowed(ip)):
        raise InvalidInput(
            f"webhook URL host {host!r} is a loopback, private, link-local, multicast or unspecified address;"
            f" webhooks go to public addresses only (an operator can allow others with {SETTING})",
            code="webhook_target_not_allowed",
        )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, for a TCP connection to ``port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def vetted(host: str, port: int, allow_private: bool, resolve: Resolver) -> list[str]:
    """The addresses to connect to for ``host``; :class:`TargetRefused` if any is not allowed."""
    literal = literal_address(host)
    addresses = [str(literal)] if literal is not None else resolve(host, port)
    if not allow_private:
        for text in addresses:
            if not address_allowed(ipaddress.ip_address(text.split("%")[0])):
                raise TargetRefused(
                    f"refused: webhook host {host!r} resolves to a non-public address ({SETTING} is off)"
                )
    return addresses


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that connects to checked addresses only (see the module doc).

    TLS still verifies the certificate for the URL's host name: httpcore starts TLS with the
    origin's name as ``server_hostname``, whatever address the TCP connection went to."""

    def __init__(
        self,
        allow_private: bool,
        resolve: Resolver = system_resolver,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        self._allow_private, self._resolve = allow_private, resolve
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = vetted(host, port, self._allow_private, self._resolve)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc.strerror}") from None
        failure: Exception = httpcore.ConnectError(f"{host!r} resolves to no address")
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise TargetRefused("refused: webhooks are never delivered over a Unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that uses :class:`GuardedBackend`."""

    def __init__(self, backend: GuardedBackend) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=backend
        )


def guarded_client(timeout: float, allow_private: bool, resolve: Resolver = system_resolver) -> httpx.Client:
    """The HTTP client deliveries use: checked addresses, no redirects, no proxies."""
    transport = _GuardedTransport(GuardedBackend(allow_private, resolve))
    return httpx.Client(timeout=timeout, follow_redirects=False, transport=transport, trust_env=False)
