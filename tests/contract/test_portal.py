"""The PortalTokenStore contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from meterline.domain.auth.portal import PortalClaims

T = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _claims(id_: str, subject: str, minutes: int = 0, meters: tuple[str, ...] | None = None) -> PortalClaims:
    at = T + timedelta(minutes=minutes)
    return PortalClaims(id_, "default", subject, meters, at, at + timedelta(hours=1))


def test_the_secret_is_stable_and_long_enough(portal: Any) -> None:
    assert len(portal.signing_secret()) >= 32
    assert portal.signing_secret() == portal.signing_secret()


def test_tokens_are_listed_newest_first_until_invalidated(portal: Any) -> None:
    portal.add("default", _claims("t1", "acme", 0, ("calls",)))
    portal.add("default", _claims("t2", "acme", 1))
    portal.add("default", _claims("t3", "globex", 2))
    portal.add("other", _claims("t4", "acme", 3))
    listed = portal.list("default", 10)
    assert [t.id for t in listed] == ["t3", "t2", "t1"]
    assert (listed[2].meters, listed[1].meters) == (["calls"], None)
    assert listed[0].expires_us - listed[0].created_us == 3_600_000_000
    assert [t.id for t in portal.list("default", 2)] == ["t3", "t2"]
    assert portal.invalidate("default", None, "acme", 1) == 2
    assert portal.invalidate("default", "t1", None, 2) == 0  # already invalidated
    assert [t.id for t in portal.list("default", 10)] == ["t3"]
    assert (portal.is_live("t1"), portal.is_live("t3"), portal.is_live("t4"), portal.is_live("nope")) == (
        False,
        True,
        True,
        False,
    )
    assert portal.invalidate("default", "t3", "acme", 3) == 0  # both fields must match
