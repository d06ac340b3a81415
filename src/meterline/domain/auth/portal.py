"""Customer portal tokens: short-lived JWTs that let one customer's frontend read only its own usage.

A token is an HS256 JWT with ``iss``, ``aud`` (``"portal"``), ``sub`` (the customer's subject),
``jti`` (a ULID), ``iat``, ``exp``, ``ns`` (namespace) and optionally ``meters`` (the meter slugs it
may read; absent means every meter). Guarantees:

* Decoding accepts HS256 only: ``alg: none``, RS256 (key confusion) and HS512 tokens are rejected.
* Expiry is checked against the injected clock, not the host's: PyJWT compares ``exp``/``iat`` with
  ``datetime.now()``, so its time checks are switched off and done here, with a 5-second leeway.
* Errors are ``PortalTokenInvalid`` (401) and never contain the token or PyJWT's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from ulid import ULID

from meterline.domain.auth.keys import check_namespace
from meterline.domain.clock import Clock, from_us
from meterline.domain.errors import ConfigError, InvalidInput, PortalTokenInvalid

ALGORITHM = "HS256"
AUDIENCE = "portal"
LEEWAY_S = 5
_REQUIRED = ["iss", "aud", "sub", "jti", "iat", "exp"]


@dataclass(frozen=True, slots=True)
class PortalClaims:
    """What a verified portal token grants: ``subject``'s usage in ``namespace``, for ``meters`` (None = all)."""

    token_id: str
    namespace: str
    subject: str
    meters: tuple[str, ...] | None
    issued_at: datetime
    expires_at: datetime

    def allows_meter(self, meter: str) -> bool:
        """Whether the token may read ``meter``."""
        return self.meters is None or meter in self.meters


def _seconds(value: int) -> datetime:
    return from_us(value * 1_000_000)


def _invalid(detail: str = "the portal token is not valid", reason: str = "invalid") -> PortalTokenInvalid:
    return PortalTokenInvalid(detail, reason=reason)


class PortalTokens:
    """Issues and verifies portal tokens signed with one shared secret (at least 32 bytes)."""

    def __init__(
        self,
        secret: bytes,
        clock: Clock,
        *,
        issuer: str = "meterline",
        default_ttl: timedelta = timedelta(hours=1),
        max_ttl: timedelta = timedelta(days=1),
    ) -> None:
        if len(secret) < 32:
            raise ConfigError("the portal token secret must be at least 32 bytes")
        if not timedelta(seconds=1) <= default_ttl <= max_ttl:
            raise ConfigError("portal token TTLs need 1s <= default_ttl <= max_ttl")
        self._secret, self._clock, self._issuer = secret, clock, issuer
        self._default_ttl, self._max_ttl = default_ttl, max_ttl

    def issue(
        self, namespace: str, subject: str, meters: Sequence[str] | None = None, ttl: timedelta | None = None
    ) -> tuple[str, PortalClaims]:
        """A signed token and its claims, valid from now for ``ttl`` (default ``default_ttl``, whole seconds).

        Raises ``InvalidInput`` for a ttl outside ``1s..max_ttl``, a bad namespace, an empty subject or
        an empty/blank meter list (pass ``None`` for all meters).
        """
        ttl = self._default_ttl if ttl is None else ttl
        if not timedelta(seconds=1) <= ttl <= self._max_ttl:
            raise InvalidInput(f"ttl must be between 1 second and {self._max_ttl}", code="invalid_ttl")
        if not subject:
            raise InvalidInput("a portal token needs a subject", code="invalid_subject")
        chosen = _meters(meters)
        now_us = self._clock.now_us()
        now = now_us // 1_000_000
        claims = PortalClaims(
            token_id=str(ULID.from_timestamp(now_us // 1000)),  # an int is read as milliseconds
            namespace=check_namespace(namespace),
            subject=subject,
            meters=chosen,
            issued_at=_seconds(now),
            expires_at=_seconds(now + ttl // timedelta(seconds=1)),
        )
        return jwt.encode(self._payload(claims), self._secret, algorithm=ALGORITHM), claims

    def _payload(self, claims: PortalClaims) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": AUDIENCE,
            "sub": claims.subject,
            "jti": claims.token_id,
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "ns": claims.namespace,
        }
        if claims.meters is not None:
            payload["meters"] = list(claims.meters)
        return payload

    def verify(self, token: str) -> PortalClaims:
        """The claims of a genuine, unexpired token of ours; ``PortalTokenInvalid`` otherwise."""
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=AUDIENCE,
                options={"require": _REQUIRED, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            raise _invalid() from None
        claims = _claims(payload)
        now = self._clock.now_us() // 1_000_000
        if int(claims.expires_at.timestamp()) <= now - LEEWAY_S:
            raise _invalid("the portal token has expired", "expired")
        if int(claims.issued_at.timestamp()) > now + LEEWAY_S:
            raise _invalid("the portal token is not valid yet", "not_yet_valid")
        return claims


def _meters(meters: Sequence[str] | None) -> tuple[str, ...] | None:
    if meters is None:
        return None
    if isinstance(meters, str) or not meters or not all(isinstance(m, str) and m for m in meters):
        raise InvalidInput("meters must be a non-empty list of meter slugs, or None for all", code="invalid_meters")
    return tuple(dict.fromkeys(meters))


def _claims(payload: dict[str, Any]) -> PortalClaims:
    values: list[Any] = [payload.get(k) for k in ("iat", "exp", "ns", "sub", "jti", "meters")]
    iat, exp, ns, sub, jti, meters = values
    times_ok = all(type(v) is int and 0 <= v < 253402300800 for v in (iat, exp))  # year 1970..9999
    strings_ok = all(isinstance(v, str) and v for v in (ns, sub, jti))
    meters_ok = meters is None or (isinstance(meters, list) and all(isinstance(m, str) for m in meters))
    if not (times_ok and strings_ok and meters_ok):
        raise _invalid()
    return PortalClaims(jti, ns, sub, None if meters is None else tuple(meters), _seconds(iat), _seconds(exp))
