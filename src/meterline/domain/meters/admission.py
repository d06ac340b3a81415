"""Whether a ledger may accept an event: the rule every ledger adapter applies at ingest.

Every live meter of the event's type (that applies to it) must read it: its value, and its
group values within the cardinality cap. The first meter that cannot rejects the event as a
whole, so an event is never counted by some meters and not others. Pure: the caller keeps
the admitted group values and stores them with the event.
"""

from __future__ import annotations

from collections.abc import Iterable

from meterline.domain.events.model import Event, Reason, Rejection
from meterline.domain.meters.evaluate import CompiledMeter, Reading
from meterline.domain.meters.fold import admit_groups

Readings = list[tuple[CompiledMeter, Reading]]


def admit_event(
    meters: Iterable[CompiledMeter],
    known: dict[tuple[int, str], set[str]],
    cap: int,
    event: Event,
    taken: dict[int, Reading] | None = None,
) -> list[tuple[int, str, str]] | Rejection:
    """The group values the event newly admits (added to ``known``), or why it is rejected
    (``known`` then unchanged). When admitted, its readings go into ``taken`` by meter key."""
    readings = read_event(meters, event)
    if isinstance(readings, Rejection):
        return readings
    admitted = admit_readings(known, cap, readings)
    if taken is not None and not isinstance(admitted, Rejection):
        for meter, reading in readings:
            taken[meter.meter.key] = reading
    return admitted


def read_event(meters: Iterable[CompiledMeter], event: Event) -> Readings | Rejection:
    """What every meter that applies to the event reads from it, or the first meter's reason
    not to read it."""
    readings: Readings = []
    for meter in meters:
        if not meter.applies(event):
            continue
        reading = meter.read(event)
        if isinstance(reading, Rejection):
            return reading
        readings.append((meter, reading))
    return readings


def unknown_values(known: dict[tuple[int, str], set[str]], readings: Readings) -> list[tuple[int, str, str]]:
    """The group values of ``readings`` that ``known`` does not hold yet."""
    out = []
    for meter, reading in readings:
        for dim, value in zip(meter.dimensions, reading.groups, strict=True):
            if value is not None and value not in known.get((meter.meter.key, dim), ()):
                out.append((meter.meter.key, dim, value))
    return out


def admit_readings(
    known: dict[tuple[int, str], set[str]],
    cap: int,
    readings: Readings,
    refused: frozenset[tuple[int, str, str]] = frozenset(),
) -> list[tuple[int, str, str]] | Rejection:
    """Admit an event by what its meters read (``read_event``): its new group values (added to
    ``known``), or the cardinality rejection (``known`` unchanged). Values in ``refused`` are
    over the cap (``admit_groups``)."""
    admitted: list[tuple[int, str, str]] = []
    for meter, reading in readings:
        fresh = admit_groups(known, cap, meter, reading.groups, refused)
        if isinstance(fresh, str):
            for key, dim, value in admitted:  # undo the other meters' admissions
                known[(key, dim)].discard(value)
            return Rejection(
                Reason.GROUP_CARDINALITY,
                f"meter {meter.meter.slug!r}: groupBy {fresh!r} already has {cap} distinct values;"
                " this event would exceed the cap",
            )
        admitted.extend(fresh)
    return admitted
