"""Read one event through one meter: its value and its group-by dimensions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from meterline.domain.clock import to_us
from meterline.domain.decimals import NotAQuantity, canonical, to_quantity
from meterline.domain.events.model import Event, Reason, Rejection
from meterline.domain.events.size import event_size
from meterline.domain.meters.model import Aggregation, Meter, compiled, is_builtin
from meterline.domain.meters.paths import MISSING, Path

_encode = msgspec.json.Encoder().encode


class Reading(NamedTuple):
    """What one event contributes to one meter. ``value`` is a Decimal for numeric
    aggregations, a string for UNIQUE_COUNT and None for COUNT. ``group_key`` is the
    canonical JSON array of the group values in dimension-name order. (A NamedTuple: one is
    made per meter and event, and a tuple is built several times faster than a frozen
    dataclass.)"""

    meter_id: int
    value: Decimal | str | None
    group_key: str
    groups: tuple[str | None, ...]


class CompiledMeter:
    """A meter with its paths compiled once, reused for every event."""

    __slots__ = ("_from_us", "_groups", "_sized", "_value", "aggregation", "dimensions", "meter")

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.aggregation = meter.spec.aggregation
        self._value, self._groups = compiled(meter.spec)
        self.dimensions = tuple(name for name, _ in self._groups)
        start = meter.spec.event_from
        self._from_us = None if start is None else to_us(start)
        self._sized = is_builtin(meter.spec)
        """The built-in meter of bytes ingested: every event, valued at its size."""

    def paths(self) -> tuple[Path, ...]:
        """Every path the meter reads (its value, then its group-by dimensions)."""
        return (*(() if self._value is None else (self._value,)), *(p for _, p in self._groups))

    def applies(self, event: Event) -> bool:
        """Whether the meter counts this event at all (its type, and not before ``eventFrom``)."""
        if event.type != self.meter.spec.event_type and not self._sized:
            return False
        return self._from_us is None or event.time_us >= self._from_us

    def read(self, event: Event) -> Reading | Rejection:
        if self._sized:
            return Reading(self.meter.key, Decimal(event_size(event.raw, event.time_us)), "[]", ())
        data = event.data if event.data is not None else {}
        value = self._read_value(data)
        if isinstance(value, Rejection):
            return value
        groups: list[str | None] = []
        for name, path in self._groups:
            g = _group_value(path.read(data))
            if isinstance(g, Rejection):
                return Rejection(g.reason, f"meter {self.meter.slug!r}: groupBy {name!r} ({path.text}) {g.message}")
            groups.append(g)
        return Reading(self.meter.key, value, _encode(groups).decode(), tuple(groups))

    def _read_value(self, data: dict[str, Any]) -> Decimal | str | Rejection | None:
        if self._value is None:
            return None
        raw = self._value.read(data)
        if raw is MISSING or raw is None:
            return Rejection(Reason.UNREADABLE_VALUE, f"{self._where()} is missing from data")
        if self.aggregation in (Aggregation.UNIQUE_COUNT, Aggregation.APPROX_UNIQUE_COUNT):
            text = _scalar_text(raw)
            if text is None:
                return Rejection(Reason.UNREADABLE_VALUE, f"{self._where()} must be a string or number")
            return text
        try:
            return to_quantity(raw)
        except NotAQuantity as exc:
            return Rejection(Reason.UNREADABLE_VALUE, f"{self._where()}: {exc}")

    def _where(self) -> str:
        """The value's place, for a rejection's message (built only when one is made)."""
        assert self._value is not None
        return f"meter {self.meter.slug!r}: valueProperty {self._value.text}"


def _scalar_text(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, Decimal)):
        return canonical(Decimal(raw))
    return None


def _group_value(raw: Any) -> str | Rejection | None:
    if raw is MISSING or raw is None:
        return None
    text = _scalar_text(raw)
    if text is None:
        return Rejection(Reason.UNREADABLE_GROUP, "must be a string, number or boolean")
    if len(text) > 256:
        return Rejection(Reason.UNREADABLE_GROUP, "is longer than 256 characters")
    return text
