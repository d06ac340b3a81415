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


def admit_event(
    meters: Iterable[CompiledMeter],
    known: dict[tuple[int, str], set[str]],
    cap: int,
    event: Event,
    taken: dict[int, Reading] | None = None,
) -> list[tuple[int, str, str]] | Rejection:
    """The group values the event newly admits (added to ``known``), or why it is rejected
    (``known`` then unchanged). When admitted, its readings go into ``taken`` by meter key."""
    readings: list[tuple[CompiledMeter, Reading]] = []
    for meter in meters:
        if not meter.applies(event):
            continue
        reading = meter.read(event)
        if isinstance(reading, Rejection):
            return reading
        readings.append((meter, reading))
    admitted = _admit_all(known, cap, readings)
    if taken is not None and not isinstance(admitted, Rejection):
        for meter, reading in readings:
            taken[meter.meter.key] = reading
    return admitted


def _admit_all(
    known: dict[tuple[int, str], set[str]], cap: int, readings: list[tuple[CompiledMeter, Reading]]
) -> list[tuple[int, str, str]] | Rejection:
    admitted: list[tuple[int, str, str]] = []
    for meter, reading in readings:
        fresh = admit_groups(known, cap, meter, reading.groups)
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
