"""Meter query input: the ``GET`` parameters and the ``POST`` body, validated into a MeterQuery.

Both forms go through the same checks. The body is decoded straight into :class:`QueryBody`
(a wrong type anywhere is a 400 naming the member), so nothing downstream sees a number where
a list of strings belongs. ``subject`` and ``groupBy`` may be one string or a list of them;
one string means a list of one, never a list of its characters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from meterline.api.http import parse_time
from meterline.config import Config
from meterline.domain.errors import InvalidInput
from meterline.domain.meters.edges import exact_query
from meterline.domain.meters.query import MeterQuery, QueryLimits
from meterline.domain.meters.windows import WindowSize, zone

MAX_ITEMS = 100
"""Most subjects, groupBy dimensions and filtered dimensions in one query (OpenMeter's limit)."""
MAX_TEXT = 1024
"""Longest subject, dimension or filter value accepted in a query."""

Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Texts = Annotated[list[Text], msgspec.Meta(max_length=MAX_ITEMS)]
OneOrMany = Text | Texts
Filters = Annotated[dict[Text, Text | Texts], msgspec.Meta(max_length=MAX_ITEMS)]
Advanced = Annotated[dict[Text, dict[str, Text | Texts]], msgspec.Meta(max_length=MAX_ITEMS)]
Filter = tuple[str, tuple[str, ...], bool]
T = TypeVar("T")


class QueryBody(msgspec.Struct, frozen=True, rename="camel"):
    """``POST .../query``: the query parameters as a JSON object. Other members are ignored."""

    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    window_size: WindowSize | None = None
    window_time_zone: Text | None = None
    subject: OneOrMany | None = None
    group_by: OneOrMany | None = None
    filter_group_by: Filters | None = None
    advanced_meter_group_by_filters: Advanced | None = None
    filter_customer_id: Texts | None = None


_advanced_param = msgspec.json.Decoder(Advanced)


def limits_of(config: Config) -> QueryLimits:
    """The configured bounds of one answer (``[query]``)."""
    return QueryLimits(config.query.max_windows, config.query.max_rows)


async def run_query(request: Request, work: Callable[[], T]) -> T:
    """Run ``work`` (a query) in the thread pool, at most ``query.max_concurrent`` at a time;
    others wait for a turn, so the memory of answers being built stays bounded."""
    state = request.app.state
    slots: asyncio.Semaphore | None = getattr(state, "query_slots", None)
    if slots is None:
        slots = state.query_slots = asyncio.Semaphore(state.ctx.config.query.max_concurrent)
    async with slots:
        return await run_in_threadpool(work)


CUSTOMER_ID = "customer_id"
"""OpenMeter's ``groupBy`` dimension of the customer an event's subject is attributed to."""


@dataclass(frozen=True, slots=True)
class CustomerScope:
    """OpenMeter's ``filterCustomerId``: the customers (ids or keys) whose usage a query keeps,
    one row set per customer, each row naming it in ``customerId``."""

    customers: tuple[str, ...] = ()


def query_from_body(q: QueryBody, limits: QueryLimits) -> tuple[MeterQuery, CustomerScope]:
    """The decoded body of ``POST .../query`` as a validated query."""
    filters = [(k, _many(v), False) for k, v in (q.filter_group_by or {}).items()]
    filters += _advanced(q.advanced_meter_group_by_filters or {})
    single = {"from": q.from_, "to": q.to, "windowTimeZone": q.window_time_zone}
    if q.window_size is not None:
        single["windowSize"] = q.window_size.value
    subjects, group_by = list(_many(q.subject)), [g for g in _many(q.group_by) if g != CUSTOMER_ID]
    query = build_query({k: v for k, v in single.items() if v}, subjects, group_by, filters, limits)
    return query, CustomerScope(tuple(dict.fromkeys(q.filter_customer_id or ())))


def query_from_params(items: list[tuple[str, str]], limits: QueryLimits | None = None) -> MeterQuery:
    """The query string of ``GET .../query`` (repeated keys, ``name[]`` and deepObject filters)."""
    return scoped_query_from_params(items, limits)[0]


def scoped_query_from_params(
    items: list[tuple[str, str]], limits: QueryLimits | None = None
) -> tuple[MeterQuery, CustomerScope]:
    """:func:`query_from_params` with OpenMeter's ``filterCustomerId`` (repeated) apart."""
    single: dict[str, str] = {}
    subjects: list[str] = []
    group_by: list[str] = []
    filters: list[Filter] = []
    customers: list[str] = []
    for name, value in items:
        if name in ("subject", "subject[]"):
            subjects.append(value)
        elif name in ("filterCustomerId", "filterCustomerId[]"):
            customers.append(value)
        elif name in ("groupBy", "groupBy[]"):
            if value != CUSTOMER_ID:
                group_by.append(value)
        elif name.startswith("filterGroupBy[") and name.endswith("]"):
            filters.append((name[len("filterGroupBy[") : -1], (value,), False))
        elif name == "filterGroupBy":
            filters += [(k, (v,), False) for k, v in loose_mapping(value).items()]
        elif name == "advancedMeterGroupByFilters":
            filters += _advanced(_decode_advanced(value))
        else:
            single[name] = value
    if len(customers) > MAX_ITEMS:
        raise InvalidInput(f"at most {MAX_ITEMS} filterCustomerId values in one query", code="invalid_query")
    query = build_query(single, subjects, group_by, filters, limits or QueryLimits())
    return query, CustomerScope(tuple(dict.fromkeys(customers)))


def build_query(
    single: dict[str, str], subjects: list[str], group_by: list[str], filters: list[Filter], limits: QueryLimits
) -> MeterQuery:
    _check_sizes(subjects, group_by, filters)
    start = parse_time("from", single.get("from"))
    end = parse_time("to", single.get("to"))
    if start is not None and end is not None and end <= start:
        raise InvalidInput("`to` must be after `from`", code="invalid_range")
    size = single.get("windowSize")
    if size is not None and size not in WindowSize.__members__:
        raise InvalidInput(f"windowSize must be one of {', '.join(WindowSize)}", code="invalid_window_size")
    return exact_query(
        start,
        end,
        window_size=WindowSize(size) if size else None,
        tz=zone(single.get("windowTimeZone") or "UTC"),
        subjects=tuple(subjects),
        group_by=tuple(dict.fromkeys(group_by)),
        filters=tuple(filters),
        limits=limits,
    )


def _check_sizes(subjects: list[str], group_by: list[str], filters: list[Filter]) -> None:
    for name, items in (("subject", subjects), ("groupBy", group_by), ("filters", filters)):
        if len(items) > MAX_ITEMS:
            raise InvalidInput(f"at most {MAX_ITEMS} {name} values in one query", code="invalid_query")
    texts = [*subjects, *group_by, *(f[0] for f in filters), *(v for f in filters for v in f[1])]
    if any(len(t) > MAX_TEXT for t in texts):
        raise InvalidInput(
            f"subjects, dimensions and filter values are at most {MAX_TEXT} characters", code="invalid_query"
        )


def _many(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


# -- filterGroupBy as one parameter ----------------------------------------------------------

# A Python dict repr of string keys and values, as some OpenMeter SDK versions send it:
# {'model': 'gpt-4', "it's": 'x'}. Parsed by this grammar only, never evaluated.
_PY_STRING = r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\""""
_PAIR = rf"\s*({_PY_STRING})\s*:\s*({_PY_STRING})\s*"
_PY_DICT = re.compile(rf"\{{(?:{_PAIR}(?:,{_PAIR})*,?)?\s*\}}", re.DOTALL)
_PAIRS = re.compile(_PAIR, re.DOTALL)
_mapping = msgspec.json.Decoder(dict[str, str])


def loose_mapping(value: str) -> dict[str, str]:
    """``filterGroupBy`` as a JSON object of strings, or as the Python dict repr of one."""
    try:
        return _mapping.decode(value)
    except (msgspec.DecodeError, RecursionError):
        pass
    if len(value) <= 64 * MAX_TEXT and _PY_DICT.fullmatch(value):
        try:
            return {_py_string(k): _py_string(v) for k, v in _PAIRS.findall(value)}
        except UnicodeDecodeError:
            pass
    raise InvalidInput(
        "filterGroupBy must map dimensions to values, e.g. filterGroupBy[model]=gpt-4", code="invalid_filter"
    )


def _py_string(literal: str) -> str:
    """The value of a quoted Python string literal (the escapes ``repr`` writes)."""
    return literal[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")


# -- advancedMeterGroupByFilters ----------------------------------------------------------------

_OPS = {"$eq": False, "$in": False, "$ne": True, "$nin": True}


def _decode_advanced(value: str) -> dict[str, dict[str, Any]]:
    try:
        return _advanced_param.decode(value)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"advancedMeterGroupByFilters: {exc}", code="invalid_filter") from None
    except (msgspec.DecodeError, RecursionError):
        raise InvalidInput("advancedMeterGroupByFilters must be a JSON object", code="invalid_filter") from None


def _advanced(parsed: dict[str, dict[str, Any]]) -> list[Filter]:
    """advancedMeterGroupByFilters: supports $eq, $in, $ne and $nin on each dimension."""
    out = []
    for dim, cond in parsed.items():
        if len(cond) != 1 or next(iter(cond)) not in _OPS:
            raise InvalidInput(
                f"filter on {dim!r}: supported operators are $eq, $in, $ne, $nin", code="unsupported_filter"
            )
        op, arg = next(iter(cond.items()))
        out.append((dim, _many(arg), _OPS[op]))
    return out
