"""The debug views: the event explorer, dead letters (with re-submission) and the quarantine
(with release to a customer). Lists page by index (newest first for events, by id for the
others): a page never counts or scans what it does not show. In embedded mode a filtered event
page looks through at most ``SCAN`` ledger positions, so a filter that matches few events
answers as fast as one that matches many; a partitioned log (scale mode) has no single sequence
(the ledger's position is 0), so its pages continue at the last event's cursor and ClickHouse
filters the raw events table itself."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.api.dashboard.web import View, action, redirect, view, zone
from meterline.api.v2_events import continue_at
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import to_us
from meterline.domain.customers.model import CustomerInput
from meterline.domain.errors import InvalidInput, NotFound
from meterline.ports.dead_letters import DeadLetterFilter
from meterline.ports.ledger import EventFilter
from meterline.services.dead_letters import REASONS
from meterline.services.resubmit import Resubmission

PAGE = 50
SCAN = 100_000
"""Ledger positions one filtered explorer page looks through at most (newest first); a page
that did not fill up says which positions it looked through and links to the next window."""
MAX_IDS = 500


def local_time(v: View, name: str, tz: str) -> int | None:
    """A ``datetime-local`` filter (``YYYY-MM-DDTHH:MM``) in ``tz`` as epoch microseconds."""
    text = v.q(name)
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"`{name}` must be a date and time (YYYY-MM-DDTHH:MM)", code="invalid_parameter") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone(tz))
    return to_us(parsed.astimezone(UTC))


def cursor(v: View, name: str) -> int | None:
    text = v.q(name)
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"`{name}` must be a whole number", code="invalid_parameter")
    return int(text)


def shown(raw: bytes) -> dict[str, Any]:
    """The event's members for the table (an unreadable body shows as text)."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {"_text": raw.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"_text": raw.decode("utf-8", "replace")}


def pretty(raw: bytes) -> str:
    try:
        return msgspec.json.format(raw, indent=2).decode("utf-8", "replace")
    except msgspec.DecodeError:
        return raw.decode("utf-8", "replace")


@view(Scope.READ)
async def events(v: View) -> Response:
    tz = v.q("tz", "UTC") or "UTC"
    f = EventFilter(
        subject=v.q("subject") or None,
        event_id=v.q("id") or None,
        start_us=local_time(v, "from", tz),
        end_us=local_time(v, "to", tz),
        received_from_us=local_time(v, "ingestedFrom", tz),
        received_to_us=local_time(v, "ingestedTo", tz),
        source=v.q("source") or None,
        type=v.q("type") or None,
    )
    start = continue_at(v.q("before") or None)  # a position (embedded mode) or a cursor (scale mode)
    f = dataclasses.replace(f, before_seq=start.before_seq, after=start.after)
    window = None
    top = v.ctx.ledger.position() + 1  # 1: no single sequence (scale mode), or nothing stored yet
    if _filtered(f) and top > 1 and f.after is None:  # a filter may match few events: one window a page
        if f.before_seq is not None:
            top = f.before_seq
        window = (max(1, top - SCAN), top)
        f = dataclasses.replace(f, before_seq=window[1], from_seq=window[0])
    rows = await v.run(v.ctx.ledger.list, v.namespace, f, limit=PAGE)
    items = [(r, shown(r.raw), pretty(r.raw)) for r in rows]
    params = dict(v.request.query_params)
    older = {**params, "before": rows[-1].cursor or str(rows[-1].seq)} if len(rows) == PAGE else None
    if older is None and window is not None and window[0] > 1:
        older = {**params, "before": str(window[0])}  # the window was looked through: go on below it
    scanned = None if window is None or len(rows) == PAGE else window
    return v.render(
        "events.html",
        title="Events",
        items=items,
        params=params,
        tz=tz,
        older=older,
        scanned=scanned,
        stamp=v.stamp(),
        page=PAGE,
    )


def _filtered(f: EventFilter) -> bool:
    """Whether anything but the page position filters the list."""
    return dataclasses.replace(f, before_seq=None, after=None) != EventFilter()


@view(Scope.READ)
async def dead_letters(v: View) -> Response:
    reason = v.q("reason") or None
    f = DeadLetterFilter(reason=reason, source=v.q("source") or None)
    after = cursor(v, "after") or 0
    items = await v.run(v.ctx.catalog.dead_letters.list, v.namespace, f, limit=PAGE, after_id=after)
    params = dict(v.request.query_params)
    newer = {**params, "after": str(items[-1].id)} if len(items) == PAGE else None
    done = v.q("done")
    return v.render(
        "dead_letters.html",
        title="Dead letters",
        items=[(d, pretty(d.raw)) for d in items],
        reasons=REASONS,
        params=params,
        more=newer,
        stamp=v.stamp(),
        done=done,
    )


@action(Scope.ADMIN)
async def resubmit(v: View, form: dict[str, str]) -> Response:
    """Re-submit the chosen dead letters (``ids``, comma-separated) through ingest."""
    ids = _ids(form.get("ids", ""))
    service: Resubmission = v.request.app.state.dashboard.resubmission
    report = await v.run(service.resubmit, v.namespace, ids, actor=v.session.actor)
    v.ctx.metrics.observe([o for _, o in report.outcomes])  # received again: the on-call counts show it
    summary = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items()) if n) or "none found"
    return redirect("/ui/dead-letters", done=f"Re-submitted {len(ids)}: {summary}", reason=form.get("reason", ""))


def _ids(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or len(parts) > MAX_IDS or not all(p.isdigit() and len(p) < 19 for p in parts):
        raise InvalidInput(f"choose 1 to {MAX_IDS} dead letters", code="invalid_form")
    return tuple(dict.fromkeys(int(p) for p in parts))


@view(Scope.READ)
async def quarantine(v: View) -> Response:
    subject = v.q("subject") or None
    after = cursor(v, "after") or 0
    items = await v.run(v.ctx.catalog.customers.quarantined, v.namespace, subject, limit=PAGE, after_id=after)
    params = dict(v.request.query_params)
    more = {**params, "after": str(items[-1].id)} if len(items) == PAGE else None
    subjects = sorted({q.subject for q in items})
    return v.render(
        "quarantine.html",
        title="Quarantine",
        items=[(q, pretty(q.raw)) for q in items],
        subjects=subjects,
        params=params,
        more=more,
        stamp=v.stamp(),
        done=v.q("done"),
    )


@action(Scope.ADMIN)
async def release(v: View, form: dict[str, str]) -> Response:
    """Release a subject's quarantined events to a customer: the customer (``customer``, new or
    existing) claims the subject, and its held events enter the ledger."""
    subject, key = form.get("subject", "").strip(), form.get("customer", "").strip()
    if not subject or not key:
        raise InvalidInput("name the subject and the customer that claims it", code="invalid_form")
    customers = v.ctx.catalog.customers

    def claim() -> int:
        try:
            existing = customers.get(v.namespace, key)
        except NotFound:
            return customers.create(v.namespace, CustomerInput(key=key, subject_keys=[subject])).released
        keys = list(dict.fromkeys([*(existing.subjects or (existing.key,)), subject]))
        inp = CustomerInput(key=existing.key, name=existing.name, subject_keys=keys, timezone=existing.timezone,
                            metadata=existing.metadata)  # fmt: skip
        return customers.replace(v.namespace, existing.key, inp).released

    released = await v.run(claim)
    return redirect("/ui/quarantine", done=f"{key} now claims {subject}: {released} quarantined events released")
