"""Pure rules of entitlements and grants: where a usage period is anchored, which anchors the
live counters can use, when a grant expires and what a reset changes.

Every function is pure (time comes in as ``now_us``), so each is unit-tested directly.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
from dateutil.relativedelta import relativedelta
from ulid import ULID

from meterline.domain.clock import from_us, to_us
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, Grant, GrantInput, measure_from_time
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import parse_interval, recurrence

MINUTE_US = 60_000_000

_EXPIRY = {
    "HOUR": lambda n: relativedelta(hours=n),
    "DAY": lambda n: relativedelta(days=n),
    "WEEK": lambda n: relativedelta(weeks=n),
    "MONTH": lambda n: relativedelta(months=n),
    "YEAR": lambda n: relativedelta(years=n),
}


def anchor_us(inp: EntitlementInput, zone: str, now_us: int) -> int:
    """The period anchor: as given (to the minute), else the start of the current calendar
    unit in the customer's zone (1st of the month, Monday, Jan 1, midnight); an entitlement
    without a usage period, or with a custom interval, is anchored at the current minute."""
    if inp.usage_period is None:
        return now_us - now_us % MINUTE_US
    interval = parse_interval(inp.usage_period.interval)
    if inp.usage_period.anchor is not None:
        if inp.usage_period.anchor.tzinfo is None:
            raise InvalidInput("usagePeriod.anchor must carry a UTC offset", code="invalid_entitlement")
        t = to_us(inp.usage_period.anchor)
        return t - t % MINUTE_US
    local = datetime.fromtimestamp(now_us / 1e6, ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "MONTH":
        local = local.replace(day=1)
    elif interval == "YEAR":
        local = local.replace(month=1, day=1)
    elif interval == "WEEK":
        local = local - timedelta(days=local.weekday())
    elif interval != "DAY":
        return now_us - now_us % MINUTE_US
    return to_us(local)


def measured_from_us(inp: EntitlementInput, anchor: int, zone: str, now_us: int) -> int:
    """Where a metered entitlement starts measuring usage (OpenMeter's ``measureUsageFrom``, to
    the minute): ``NOW``; ``CURRENT_PERIOD_START`` (the start of the usage period holding now);
    a date-time (not in the future); without one, now, as OpenMeter measures from the creation
    time by default."""
    given = inp.measure_usage_from
    if inp.usage_period is None:
        return anchor
    if given is None or given == "NOW":
        t = now_us
    elif given == "CURRENT_PERIOD_START":
        t = recurrence(inp.usage_period.interval, from_us(anchor), zone).period_at_us(now_us).start_us
    else:
        at = measure_from_time(given)
        assert at is not None  # validate_entitlement checked it
        t = to_us(at)
        if t > now_us:
            raise InvalidInput("measureUsageFrom must not be in the future", code="invalid_entitlement")
    return t - t % MINUTE_US


def check_periods(interval: str, anchor: int, zone: str, now_us: int) -> None:
    """Refuse, before anything is written, an anchor whose periods the live counter cannot use:
    periods that run past the last representable date in the customer's zone, or that do not
    fall on whole minutes (rollups are kept per minute; an anchor in a zone's local mean time,
    such as +00:53:28, carries its seconds into every period)."""
    try:
        rec = recurrence(interval, from_us(anchor), zone)
        rec.period_at_us(anchor)
        current = rec.period_at_us(now_us)
    except (InvalidInput, OverflowError, ValueError):
        current = None
    if current is None or current.start_us % MINUTE_US or current.end_us % MINUTE_US:
        raise InvalidInput(
            "usagePeriod.anchor is too far from now: its periods fall outside the supported dates",
            code="invalid_entitlement",
        )


def grant_expiry_us(inp: GrantInput) -> int:
    """When a grant effective at ``inp.effective_at`` expires (its expiration after that)."""
    step = _EXPIRY[inp.expiration["duration"]](inp.expiration["count"])
    try:
        return to_us(inp.effective_at + step)
    except (OverflowError, ValueError):
        raise InvalidInput("the grant would expire after the year 9999", code="invalid_grant") from None


DEFAULT_GRANT = "issueAfterReset"
"""OpenMeter's annotation of the grant ``issueAfterReset`` stands for."""


def default_grant(ent: Entitlement) -> Grant | None:
    """The grant OpenMeter creates for a metered entitlement's ``issueAfterReset`` (above 0):
    the amount, at ``issueAfterResetPriority``, effective from the start of measurement, never
    expiring, rolled over to its amount at every reset (``connector.go``, ``AfterCreate``).
    meterline keeps it on the entitlement; this is its grant, with a fixed id (:func:`default_grant_id`)."""
    issue = ent.spec.issue_after_reset
    if ent.spec.type != "metered" or issue is None or issue <= 0:
        return None
    start = ent.last_reset_us if ent.measured_from_us is None else ent.measured_from_us
    spec = GrantInput(
        issue,
        from_us(start),
        {},
        priority=ent.spec.issue_after_reset_priority,
        max_rollover_amount=issue,
        min_rollover_amount=issue,
    )
    return Grant(default_grant_id(ent.id), ent.id, spec, start, None, ent.created_us, ent.issue_voided_us)


def is_default_grant(g: Grant) -> bool:
    return g.id == default_grant_id(g.entitlement_id)


_MASK = bytes.fromhex("9e3779b97f4a7c15f491")
"""XORed into the 80 random bits of an entitlement's ULID to give its default grant's ULID."""


def default_grant_id(entitlement_id: str) -> str:
    """The id of the grant ``issueAfterReset`` stands for: a ULID, as OpenMeter's grant ids are
    (clients check the pattern), derived from the entitlement's ULID (same time part, the
    random part XORed with a fixed mask) so that it is stable and names its entitlement back
    (:func:`default_grant_owner`). An entitlement id that is not a ULID keeps the older
    ``<entitlementId>.issueAfterReset``."""
    flipped = _flip(entitlement_id)
    return f"{entitlement_id}.{DEFAULT_GRANT}" if flipped is None else flipped


def default_grant_owner(grant_id: str) -> str | None:
    """The entitlement whose default grant ``grant_id`` would be (``None``: not a grant id of
    that form); the caller checks that the entitlement exists and has that grant. The older
    ``<entitlementId>.issueAfterReset`` form is understood too."""
    if grant_id.endswith(f".{DEFAULT_GRANT}"):
        return grant_id.removesuffix(f".{DEFAULT_GRANT}")
    return _flip(grant_id)


def _flip(ulid: str) -> str | None:
    """``ulid`` with its random part XORed with the mask (its own inverse); ``None``: not a ULID."""
    try:
        raw = bytes(ULID.from_str(ulid))
    except ValueError:
        return None
    return str(ULID.from_bytes(raw[:6] + bytes(a ^ b for a, b in zip(raw[6:], _MASK, strict=True))))


def reset_at(ent: Entitlement, effective_us: int | None, now_us: int) -> int:
    """When a reset of ``ent`` takes effect: ``effective_us`` to the minute (default now). Only
    metered entitlements have usage to reset, and a reset cannot be in the future."""
    if ent.spec.type != "metered":
        raise InvalidInput("only metered entitlements have usage to reset", code="invalid_entitlement")
    at = now_us if effective_us is None else effective_us
    at -= at % MINUTE_US
    if at > now_us:
        raise InvalidInput("effectiveAt must not be in the future", code="invalid_reset")
    return at


def reset(
    ent: Entitlement,
    effective_us: int | None,
    retain_anchor: bool,
    now_us: int,
    carried: Decimal = Decimal(0),
    balances: dict[str, Decimal] | None = None,
) -> Entitlement:
    """``ent`` with a new usage period starting at the reset (``reset_at``): the anchor moves
    there too unless ``retain_anchor``, and the span it ends is kept in ``earlier_resets``.
    ``carried`` is the overage left after the reset (what it preserved, OpenMeter's
    ``preserveOverage``, less what the rolled-over grants covered; 0 when it starts from zero)
    and ``balances`` each grant's balance then (the credit engine)."""
    at = reset_at(ent, effective_us, now_us)
    anchor = ent.anchor_us if retain_anchor else at
    earlier = (*ent.earlier_resets, (ent.last_reset_us, ent.anchor_us))  # the span this reset ends
    return msgspec.structs.replace(
        ent,
        last_reset_us=at,
        anchor_us=anchor,
        reset_overage=carried,
        reset_balances=balances,
        earlier_resets=earlier,
    )
