"""Entitlement checks against ``POST /api/v1/entitlements/check``, sync and async.

A check never raises: its outcome is data, one of

- ``CheckResult``       the server's answer (quantities as exact ``Decimal``);
- ``CustomerNotFound``  404 ``customer_not_found`` (the middleware answers 403);
- ``Unavailable``       connection refused, timeout, 5xx or an unreadable answer: the
                        ``fail`` policy decides.

Both clients bound the wait by ``check_timeout``: the async one as an overall deadline, the
sync one as httpx's per-phase timeout (connect, write, each read).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import anyio
import httpx
import msgspec

from meterline.client import TLSOptions
from meterline.client.transport import ssl_context
from meterline.domain.clock import Clock
from meterline.domain.decimals import EXACT
from meterline.sdk.config import Feature

log = logging.getLogger("meterline.sdk")
CHECK_PATH = "/api/v1/entitlements/check"


class FeatureCheck(msgspec.Struct, frozen=True, rename="camel"):
    feature: str
    allowed: bool
    type: str | None = None
    has_access: bool | None = None
    denial: str | None = None
    usage: Decimal | None = None
    limit: Decimal | None = None
    balance: Decimal | None = None
    overage: Decimal | None = None
    soft_limit: Decimal | None = None
    soft_limit_exceeded: bool = False
    period_start: str | None = None
    period_end: str | None = None


class CheckResult(msgspec.Struct, frozen=True):
    customer: str
    allowed: bool
    features: list[FeatureCheck]


@dataclass(frozen=True)
class CustomerNotFound:
    customer: str


@dataclass(frozen=True)
class Unavailable:
    reason: str


Outcome = CheckResult | CustomerNotFound | Unavailable
_decode = msgspec.json.Decoder(CheckResult, float_hook=Decimal).decode
_ZERO = Decimal(0)
_encode = msgspec.json.Encoder(decimal_format="number").encode


def request_body(customer: str, features: Sequence[Feature]) -> bytes:
    items = [{"feature": key, "quantity": Decimal(quantity)} for key, quantity in features]
    return _encode({"customer": customer, "features": items})


def read_response(customer: str, response: httpx.Response) -> Outcome:
    """Translate one HTTP answer into an outcome."""
    if response.status_code == 200:
        try:
            return _decode(response.content)
        except msgspec.DecodeError:
            return Unavailable("unreadable check response")
    if response.status_code == 404 and _problem_code(response) == "customer_not_found":
        return CustomerNotFound(customer)
    return Unavailable(f"check answered {response.status_code}")


def _problem_code(response: httpx.Response) -> str | None:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None
    return body.get("code") if isinstance(body, dict) else None


class CheckCache:
    """Recent outcomes per (customer, features), for ``ttl`` seconds; ``Unavailable`` is never kept.

    A cached "allowed" is never stale about this process's own use: it carries the room left
    under each limit that may be hard (``limit - usage`` at the server, less the quantities of
    the request that asked), every request served from it takes its quantities off that room,
    and a request the room cannot cover is a miss, so it is checked with the server again (the
    server's rule: ``usage + quantity <= limit``, or ``usage < limit`` for quantity 0). A limit
    the server let usage pass (a soft limit, or unlimited) holds no room. So the cache can only
    miss what others used (other processes, other producers) in the last ``ttl`` seconds, and
    a change of grants, entitlements or period within that time.
    """

    def __init__(self, ttl: float, clock: Clock, max_entries: int = 10_000) -> None:
        self._ttl_us = int(ttl * 1_000_000)
        self._clock = clock
        self._max = max_entries
        self._entries: dict[tuple[str, tuple[Feature, ...]], _Entry] = {}
        self._lock = threading.Lock()  # WSGI servers check from many threads

    def get(self, customer: str, features: Sequence[Feature]) -> Outcome | None:
        """The cached outcome if it is fresh and its room covers ``features`` (which it then uses up)."""
        if self._ttl_us <= 0:
            return None
        asked = _quantities(features)
        with self._lock:
            entry = self._entries.get((customer, tuple(features)))
            if entry is None or entry.expires_us <= self._clock.now_us():
                return None
            if not _fits(entry.rooms, asked):
                return None
            _use(entry.rooms, asked)
            return entry.outcome

    def put(self, customer: str, features: Sequence[Feature], outcome: Outcome) -> None:
        """Keep the server's answer to the request that asked (whose quantities it uses up)."""
        if self._ttl_us <= 0 or isinstance(outcome, Unavailable):
            return
        rooms = _rooms(outcome, _quantities(features))
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()  # bounded memory beats a perfect hit rate
            self._entries[(customer, tuple(features))] = _Entry(self._clock.now_us() + self._ttl_us, outcome, rooms)


@dataclass
class _Entry:
    expires_us: int
    outcome: Outcome
    rooms: dict[str, Decimal]  # feature -> room left under a limit that may be hard


def _quantities(features: Sequence[Feature]) -> dict[str, Decimal]:
    asked: dict[str, Decimal] = {}
    for key, quantity in features:
        asked[key] = EXACT.add(asked.get(key, _ZERO), Decimal(quantity))
    return asked


def _rooms(outcome: Outcome, asked: dict[str, Decimal]) -> dict[str, Decimal]:
    """Room under each limit of an allowed answer that may be hard, after the asking request."""
    if not isinstance(outcome, CheckResult) or not outcome.allowed:
        return {}
    rooms: dict[str, Decimal] = {}
    for f in outcome.features:
        if f.usage is None or f.limit is None:
            continue  # boolean or static: nothing to count
        room = EXACT.subtract(EXACT.subtract(f.limit, f.usage), asked.get(f.feature, _ZERO))
        if room >= 0 and (room > 0 or asked.get(f.feature, _ZERO) > 0):
            rooms[f.feature] = room  # allowed within the limit: it may be hard
        # otherwise allowed past the limit: soft or unlimited, and use cannot change that
    return rooms


def _fits(rooms: dict[str, Decimal], asked: dict[str, Decimal]) -> bool:
    for key, room in rooms.items():
        quantity = asked.get(key, _ZERO)
        if (quantity > room) if quantity > 0 else (room <= 0):
            return False
    return True


def _use(rooms: dict[str, Decimal], asked: dict[str, Decimal]) -> None:
    for key in rooms:
        rooms[key] = EXACT.subtract(rooms[key], asked.get(key, _ZERO))


def _verify(tls: TLSOptions | None) -> ssl.SSLContext | bool:
    """The system's CAs unless a CA bundle or client certificate is configured."""
    if tls is None or not (tls.ca_file or tls.cert_file):
        return True
    return ssl_context(tls)


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


class CheckClient:
    """Blocking checks, for WSGI."""

    def __init__(
        self, url: str, api_key: str, timeout: float, cache: CheckCache, tls: TLSOptions | None = None
    ) -> None:
        self._http = httpx.Client(base_url=url, headers=_headers(api_key), timeout=timeout, verify=_verify(tls))
        self._cache = cache

    def check(self, customer: str, features: Sequence[Feature]) -> Outcome:
        cached = self._cache.get(customer, features)
        if cached is not None:
            return cached
        try:
            response = self._http.post(CHECK_PATH, content=request_body(customer, features))
        except httpx.HTTPError as exc:
            return Unavailable(type(exc).__name__)
        outcome = read_response(customer, response)
        self._cache.put(customer, features, outcome)
        return outcome

    def close(self) -> None:
        self._http.close()


class AsyncCheckClient:
    """Non-blocking checks, for ASGI. The httpx client is made in the serving event loop."""

    def __init__(
        self, url: str, api_key: str, timeout: float, cache: CheckCache, tls: TLSOptions | None = None
    ) -> None:
        self._url, self._api_key, self._timeout = url, api_key, timeout
        self._http: httpx.AsyncClient | None = None
        self._cache = cache
        self._tls = tls

    async def check(self, customer: str, features: Sequence[Feature]) -> Outcome:
        cached = self._cache.get(customer, features)
        if cached is not None:
            return cached
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self._url, headers=_headers(self._api_key), timeout=self._timeout, verify=_verify(self._tls)
            )
        try:
            with anyio.fail_after(self._timeout):
                response = await self._http.post(CHECK_PATH, content=request_body(customer, features))
        except (httpx.HTTPError, TimeoutError) as exc:
            return Unavailable(type(exc).__name__)
        outcome = read_response(customer, response)
        self._cache.put(customer, features, outcome)
        return outcome

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
