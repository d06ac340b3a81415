"""``GET /api/v2/events``: OpenMeter's cursor-paged events list with its JSON ``filter``.

``filter`` is a JSON object whose members (``id``, ``source``, ``subject``, ``type``,
``customerId``, ``time``, ``ingestedAt``) hold OpenMeter's filter operators: for strings
``$eq``, ``$ne``, ``$in``, ``$nin``, ``$like``, ``$nlike``, ``$ilike``, ``$nilike`` (``%`` any
text), ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$and``, ``$or``; for times ``$gt``, ``$gte``,
``$lt``, ``$lte``, ``$and``, ``$or``. Events come newest first; ``nextCursor`` is the ledger
position to continue before, present while more events may match. One request reads at most
``SCAN`` ledger entries, so a rare match never makes it unbounded: a page may then hold fewer
than ``limit`` events and still carry a ``nextCursor``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, parse_int
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339, to_us
from meterline.domain.errors import InvalidInput
from meterline.ports.ledger import EventFilter, StoredEvent

SCAN = 10_000
_BATCH = 500
_STRING_FIELDS = ("id", "source", "subject", "type")
_TIME_FIELDS = ("time", "ingestedAt")
_filter = msgspec.json.Decoder(dict[str, dict[str, Any]])
_event = msgspec.json.Decoder(dict[str, Any])
Predicate = Callable[[dict[str, Any], int], bool]


class CustomerOf:
    """The id of the customer an event's subject is attributed to, as OpenMeter fills an
    event's ``customerId``: the customer keyed by the subject, else the one claiming it (looked up
    once per subject and request)."""

    def __init__(self, call: Call) -> None:
        self._customers = call.ctx.catalog.customers
        self._namespace = call.namespace
        self._known: dict[str, str | None] = {}

    def __call__(self, subject: str) -> str | None:
        if subject not in self._known:
            owner = self._customers.owner(self._namespace, subject)
            self._known[subject] = None if owner is None else owner.id
        return self._known[subject]


class _Subject(msgspec.Struct):
    subject: Any = None


_subject = msgspec.json.Decoder(_Subject)


def subject_of(row: StoredEvent) -> Any:
    return _subject.decode(row.raw).subject


def scan(call: Call, f: EventFilter) -> Iterator[StoredEvent]:
    """The ledger entries ``f`` matches, newest first, at most ``SCAN`` of them."""
    scanned = 0
    while scanned < SCAN:
        rows = call.ctx.ledger.list(call.namespace, f, limit=_BATCH)
        yield from rows
        scanned += len(rows)
        if len(rows) < _BATCH:
            return
        f = after(f, rows[-1])


def after(f: EventFilter, row: StoredEvent) -> EventFilter:
    """``f`` for the entries a newest-first list has after ``row``."""
    if row.cursor:
        return dataclasses.replace(f, after=row.cursor)
    return dataclasses.replace(f, before_seq=row.seq)


def continue_at(cursor: str | None) -> EventFilter:
    """The filter of the page a ``nextCursor`` starts (a ledger position, or, in scale mode,
    the cursor its list gave the last event)."""
    if cursor is None:
        return EventFilter()
    if cursor.isascii() and cursor.isdigit() and len(cursor) <= 19:
        return EventFilter(before_seq=int(cursor))
    if not cursor.isascii() or not cursor.isprintable() or len(cursor) > 400:
        raise InvalidInput("cursor must be a nextCursor this list answered", code="invalid_cursor")
    return EventFilter(after=cursor)


def event_item(row: StoredEvent, customer_of: CustomerOf, subject: Any = None) -> dict[str, Any]:
    """One item of OpenMeter's events lists (v1 and v2): the event as ingested, with
    ``customerId`` when its subject (read from the event unless given) belongs to a customer."""
    item: dict[str, Any] = {"event": msgspec.Raw(row.raw)}
    if subject is None:
        subject = subject_of(row)
    customer = customer_of(subject) if isinstance(subject, str) else None
    if customer is not None:
        item["customerId"] = customer
    item["ingestedAt"] = item["storedAt"] = rfc3339(row.received_us)
    return item


def subjects_of_customers(call: Call, ids: list[str]) -> frozenset[str]:
    """The subjects whose events are the usage of the customers ``ids`` (ids or keys): each
    one's key and subject keys; ``NotFound`` for an unknown one."""
    customers = call.ctx.catalog.customers
    return frozenset(s for c in ids for s in customers.get(call.namespace, c).usage_subjects)


def _bad(detail: str) -> InvalidInput:
    return InvalidInput(f"filter: {detail}", code="invalid_filter")


def _like(pattern: str, text: str, fold: bool) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("%"))
    return re.fullmatch(regex, text, re.IGNORECASE | re.DOTALL if fold else re.DOTALL) is not None


def _string_test(op: str, arg: Any) -> Callable[[str], bool]:
    if op in ("$and", "$or"):
        if not isinstance(arg, list) or not all(isinstance(a, dict) for a in arg):
            raise _bad(f"{op} takes a list of filters")
        tests = [_string_filter(a) for a in arg]
        combine = all if op == "$and" else any
        return lambda v: combine(t(v) for t in tests)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not all(isinstance(a, str) for a in arg):
            raise _bad(f"{op} takes a list of strings")
        values = frozenset(arg)
        return (lambda v: v in values) if op == "$in" else (lambda v: v not in values)
    if not isinstance(arg, str):
        raise _bad(f"{op} takes a string")
    simple: dict[str, Callable[[str], bool]] = {
        "$eq": lambda v: v == arg,
        "$ne": lambda v: v != arg,
        "$gt": lambda v: v > arg,
        "$gte": lambda v: v >= arg,
        "$lt": lambda v: v < arg,
        "$lte": lambda v: v <= arg,
        "$like": lambda v: _like(arg, v, False),
        "$nlike": lambda v: not _like(arg, v, False),
        "$ilike": lambda v: _like(arg, v, True),
        "$nilike": lambda v: not _like(arg, v, True),
    }
    if op not in simple:
        raise _bad(f"unsupported string operator {op!r}")
    return simple[op]


def _string_filter(spec: dict[str, Any]) -> Callable[[str], bool]:
    tests = [_string_test(op, arg) for op, arg in spec.items()]
    return lambda v: all(t(v) for t in tests)


def _time_filter(spec: dict[str, Any]) -> Callable[[int], bool]:
    tests: list[Callable[[int], bool]] = []
    for op, arg in spec.items():
        if op in ("$and", "$or"):
            if not isinstance(arg, list) or not all(isinstance(a, dict) for a in arg):
                raise _bad(f"{op} takes a list of filters")
            tests.append(_combined([_time_filter(a) for a in arg], op == "$and"))
            continue
        if op not in ("$gt", "$gte", "$lt", "$lte"):
            raise _bad(f"unsupported time operator {op!r}")
        tests.append(_compare(op, _instant(op, arg)))
    return lambda v: all(t(v) for t in tests)


def _combined(parts: list[Callable[[int], bool]], every: bool) -> Callable[[int], bool]:
    return (lambda v: all(p(v) for p in parts)) if every else (lambda v: any(p(v) for p in parts))


def _compare(op: str, bound: int) -> Callable[[int], bool]:
    if op == "$gt":
        return lambda v: v > bound
    if op == "$gte":
        return lambda v: v >= bound
    if op == "$lt":
        return lambda v: v < bound
    return lambda v: v <= bound


def _instant(op: str, arg: Any) -> int:
    try:
        t = datetime.fromisoformat(str(arg).replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{op} takes an RFC 3339 time") from None
    if t.tzinfo is None:
        raise _bad(f"{op} takes an RFC 3339 time with an offset")
    return to_us(t)


def predicate(text: str | None, subjects_of: Callable[[str], tuple[str, ...]]) -> Predicate:
    """The filter parameter as a test of (decoded event, ingestion time)."""
    if not text:
        return lambda event, ingested: True
    try:
        spec = _filter.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise _bad("must be a JSON object of field filters") from None
    tests = [_field_test(name, sub, subjects_of) for name, sub in spec.items()]
    return lambda e, i: all(t(e, i) for t in tests)


def _field_test(name: str, spec: dict[str, Any], subjects_of: Callable[[str], tuple[str, ...]]) -> Predicate:
    if name in _STRING_FIELDS:
        text = _string_filter(spec)
        return lambda e, i: isinstance(e.get(name), str) and text(e[name])
    if name == "time":
        at = _time_filter(spec)
        return lambda e, i: (t := _event_time(e)) is not None and at(t)
    if name == "ingestedAt":
        ingested = _time_filter(spec)
        return lambda e, i: ingested(i)
    if name == "customerId":
        subjects = _customer_subjects(spec, subjects_of)
        return lambda e, i: e.get("subject") in subjects
    raise _bad(f"unknown field {name!r} (known: {', '.join(_STRING_FIELDS + _TIME_FIELDS)}, customerId)")


def _customer_subjects(spec: dict[str, Any], subjects_of: Callable[[str], tuple[str, ...]]) -> frozenset[str]:
    ids = [spec["$eq"]] if "$eq" in spec else spec.get("$in")
    if set(spec) - {"$eq", "$in"} or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _bad("customerId takes $eq (an id) or $in (a list of ids)")
    return frozenset(s for customer in ids for s in subjects_of(customer))


def _event_time(e: dict[str, Any]) -> int | None:
    try:
        return _instant("time", e["time"]) if isinstance(e.get("time"), str) else None
    except InvalidInput:
        return None


@endpoint(Scope.READ)
async def list_events_v2(call: Call) -> Response:
    q = call.request.query_params
    limit = parse_int("limit", q.get("limit"), 100, 1, 100)
    start = continue_at(q.get("cursor"))
    customers = call.ctx.catalog.customers

    def subjects_of(customer: str) -> tuple[str, ...]:
        return customers.get(call.namespace, customer).usage_subjects

    keep = predicate(q.get("filter"), subjects_of)
    items, next_cursor = await call.run(_scan, call, keep, start, limit)
    body: dict[str, Any] = {"items": items}
    if next_cursor is not None:
        body["nextCursor"] = next_cursor
    return json_response(body)


def _scan(call: Call, keep: Predicate, f: EventFilter, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` matching events of the page ``f`` starts, reading at most ``SCAN``
    entries; and where to continue (None once the ledger is exhausted)."""
    items: list[dict[str, Any]] = []
    scanned, customer_of = 0, CustomerOf(call)
    last: StoredEvent | None = None
    while scanned < SCAN:
        rows: list[StoredEvent] = call.ctx.ledger.list(call.namespace, f, limit=_BATCH)
        for row in rows:
            scanned += 1
            last = row
            event = _event.decode(row.raw)
            if keep(event, row.received_us):
                items.append(event_item(row, customer_of, event.get("subject")))
                if len(items) == limit:
                    return items, _next(row)
        if len(rows) < _BATCH:
            return items, None
        f = after(f, rows[-1])
    return items, None if last is None else _next(last)


def _next(row: StoredEvent) -> str:
    return row.cursor or str(row.seq)
