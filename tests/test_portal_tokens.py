"""Customer portal tokens: round trip, expiry on the injected clock, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import jwt
import pytest
from ulid import ULID

from meterline.domain.auth.portal import PortalClaims, PortalTokens
from meterline.domain.clock import FixedClock, from_us
from meterline.domain.errors import ConfigError, InvalidInput, MeterlineError, PortalTokenInvalid, Unauthorized

T0_US = 1_772_366_400_000_000  # 2026-03-01T12:00:00Z
SECRET = bytes(range(64))


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0_US)


@pytest.fixture
def tokens(clock: FixedClock) -> PortalTokens:
    return PortalTokens(SECRET, clock)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, str], payload: dict[str, object], key: bytes | None) -> str:
    """A JWT assembled by hand, signed with HMAC-SHA256 (or unsigned when ``key`` is None)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def payload_of(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def refused(tokens: PortalTokens, token: str, message: str = "not valid") -> PortalTokenInvalid:
    with pytest.raises(PortalTokenInvalid, match=message) as exc:
        tokens.verify(token)
    if token:
        assert token not in str(exc.value) and token not in repr(exc.value.extra)
    assert exc.value.__cause__ is None  # PyJWT's text stays inside
    assert exc.value.__context__ is None or exc.value.__suppress_context__
    assert (exc.value.status, exc.value.code) == (401, "portal_token_invalid")
    return exc.value


def test_round_trip(tokens: PortalTokens) -> None:
    token, claims = tokens.issue("acme", "customer-1")
    assert tokens.verify(token) == claims
    assert claims == PortalClaims(
        claims.token_id, "acme", "customer-1", None, from_us(T0_US), from_us(T0_US + 3_600_000_000)
    )
    assert ULID.from_str(claims.token_id).timestamp == T0_US / 1_000_000  # ids sort by the injected clock
    assert claims.allows_meter("anything")
    assert set(payload_of(token)) == {"iss", "aud", "sub", "jti", "iat", "exp", "ns"}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert tokens.issue("acme", "customer-1")[1].token_id != claims.token_id


def test_meters_claim_preserved(tokens: PortalTokens) -> None:
    token, claims = tokens.issue("acme", "customer-1", ["api_calls", "tokens_in", "api_calls"])
    assert claims.meters == ("api_calls", "tokens_in")
    verified = tokens.verify(token)
    assert verified.meters == ("api_calls", "tokens_in")
    assert verified.allows_meter("tokens_in") and not verified.allows_meter("storage_gb")
    assert payload_of(token)["meters"] == ["api_calls", "tokens_in"]


@pytest.mark.parametrize("meters", [[], "api_calls", ["ok", ""]])
def test_bad_meters_rejected(tokens: PortalTokens, meters: list[str] | str) -> None:
    with pytest.raises(InvalidInput, match="meters") as exc:
        tokens.issue("acme", "customer-1", meters)
    assert exc.value.code == "invalid_meters"


def test_expiry_follows_the_injected_clock(tokens: PortalTokens, clock: FixedClock) -> None:
    token, _ = tokens.issue("acme", "customer-1", ttl=timedelta(minutes=10))
    clock.advance(600 + 4)  # within the 5 s leeway
    tokens.verify(token)
    clock.advance(1)
    error = refused(tokens, token, "has expired")
    assert error.extra["reason"] == "expired"


def test_token_from_the_future_rejected(tokens: PortalTokens, clock: FixedClock) -> None:
    token, _ = tokens.issue("acme", "customer-1")
    clock.advance(-5)
    tokens.verify(token)
    clock.advance(-1)
    assert refused(tokens, token, "not valid yet").extra["reason"] == "not_yet_valid"


def test_tampered_signature(tokens: PortalTokens) -> None:
    token, _ = tokens.issue("acme", "customer-1")
    head, body, sig = token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused(tokens, f"{head}.{body}.{flipped}")


def test_tampered_payload(tokens: PortalTokens) -> None:
    token, _ = tokens.issue("acme", "customer-1", ["api_calls"])
    head, _, sig = token.split(".")
    forged = payload_of(token) | {"sub": "customer-2", "meters": None}
    refused(tokens, f"{head}.{b64url(json.dumps(forged).encode())}.{sig}")


def test_wrong_secret_and_issuer(tokens: PortalTokens, clock: FixedClock) -> None:
    token, _ = PortalTokens(bytes(64), clock).issue("acme", "customer-1")
    refused(tokens, token)
    token, _ = PortalTokens(SECRET, clock, issuer="someone-else").issue("acme", "customer-1")
    refused(tokens, token)


def test_alg_none_rejected(tokens: PortalTokens) -> None:
    token, _ = tokens.issue("acme", "customer-1")
    refused(tokens, hand_made({"alg": "none", "typ": "JWT"}, payload_of(token), None))
    refused(tokens, hand_made({"alg": "None", "typ": "JWT"}, payload_of(token), None))


def test_other_algorithms_rejected_even_with_our_secret(tokens: PortalTokens) -> None:
    token, _ = tokens.issue("acme", "customer-1")
    payload = payload_of(token)
    refused(tokens, jwt.encode(payload, SECRET, algorithm="HS512"))
    refused(tokens, hand_made({"alg": "RS256", "typ": "JWT"}, payload, SECRET))  # key-confusion attempt
    assert tokens.verify(hand_made({"alg": "HS256", "typ": "JWT"}, payload, SECRET)).subject == "customer-1"


@pytest.mark.parametrize("missing", ["iss", "aud", "sub", "jti", "iat", "exp", "ns"])
def test_missing_claims_rejected(tokens: PortalTokens, missing: str) -> None:
    token, _ = tokens.issue("acme", "customer-1")
    payload = payload_of(token)
    del payload[missing]
    refused(tokens, jwt.encode(payload, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("change", [{"exp": "soon"}, {"iat": True}, {"meters": "api_calls"}, {"sub": ""}])
def test_malformed_claims_rejected(tokens: PortalTokens, change: dict[str, object]) -> None:
    token, _ = tokens.issue("acme", "customer-1")
    refused(tokens, jwt.encode(payload_of(token) | change, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..."])
def test_garbage_rejected(tokens: PortalTokens, garbage: str) -> None:
    refused(tokens, garbage)


def test_ttl_cap(tokens: PortalTokens) -> None:
    _, claims = tokens.issue("acme", "customer-1", ttl=timedelta(days=1))
    assert claims.expires_at - claims.issued_at == timedelta(days=1)
    for ttl in (timedelta(days=1, seconds=1), timedelta(0), timedelta(seconds=-5)):
        with pytest.raises(InvalidInput, match="ttl must be between 1 second and 1 day") as exc:
            tokens.issue("acme", "customer-1", ttl=ttl)
        assert exc.value.code == "invalid_ttl"


def test_issue_validates_inputs(tokens: PortalTokens, clock: FixedClock) -> None:
    with pytest.raises(InvalidInput, match="namespace"):
        tokens.issue("Not A Namespace", "customer-1")
    with pytest.raises(InvalidInput, match="subject"):
        tokens.issue("acme", "")
    with pytest.raises(ConfigError, match="32 bytes"):
        PortalTokens(b"short", clock)
    with pytest.raises(ConfigError, match="default_ttl"):
        PortalTokens(SECRET, clock, default_ttl=timedelta(days=2))


def test_error_is_part_of_the_hierarchy() -> None:
    assert issubclass(PortalTokenInvalid, Unauthorized) and issubclass(PortalTokenInvalid, MeterlineError)
