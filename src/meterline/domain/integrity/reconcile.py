"""Reconciliation's pure rules, shared by every store's counts (``ports.reconciliation``).

- :func:`expected`: what a meter's rollups must hold for the versions that count, as the
  aggregator folds them (events; distinct values for UNIQUE_COUNT), per quarter hour;
- :func:`standing`: where one version (or a void) stands with a customer's finalized billing
  windows;
- :func:`billed_changes`: per billed window and meter, what the versions received after the
  window was billed changed in it, from each key's chain of versions.

A key's versions form a chain (``domain.events.corrections``): the version that counted when a
window was billed is the last one received by then; the one that counts now is the chain's last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from meterline.domain.decimals import add
from meterline.domain.events.model import Event, Rejection
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.fold import LedgerEntry, Replay, event_data
from meterline.domain.meters.model import Aggregation, Meter, counts_type

QUARTER = 900
"""Seconds in one counting bucket."""
_Q_US = QUARTER * 1_000_000

Counts = dict[tuple[str, int], int]
"""(event type or meter slug, bucket) -> events."""

Window = tuple[int, int, int, int]
"""(start, end, first finalized, last adjusted) of an invoiced window, in µs."""


@dataclass(frozen=True)
class BilledWindow:
    """A finalized billing window of one customer: its subjects, its event-time range and
    when its quantities were last billed (the issue time of the invoice that did)."""

    subjects: tuple[str, ...]
    start_us: int
    end_us: int
    snapshot_us: int


@dataclass
class Change:
    """What ledger entries received after a billed window's snapshot did to one meter's
    quantity in it (SUM and COUNT meters; others only count ``entries``)."""

    late: Decimal = Decimal(0)
    """Events that arrived, or were amended, since: the quantity now minus then."""
    voided: Decimal = Decimal(0)
    """Events voided since: minus what they counted then."""
    entries: int = 0
    """Keys with a version received since whose version then or now is in the window."""


@dataclass(frozen=True)
class Invoiced:
    """A namespace's finalized billing windows, for :func:`standing`: each subject's customer
    and each customer's invoiced windows."""

    owners: dict[str, str]
    windows: dict[str, list[Window]]

    def of(self, subject: str) -> list[Window]:
        """The invoiced windows of the customer that claims ``subject`` (none: no customer)."""
        return self.windows.get(self.owners.get(subject, ""), [])


class Version(NamedTuple):
    """One version of a key: an original (``action`` empty), an amend or a void."""

    seq: int
    source: str
    type: str
    subject: str
    time_us: int
    raw: bytes
    received_us: int
    action: str


def quarter(time_us: int) -> int:
    """The quarter hour (epoch seconds) that holds ``time_us``."""
    return time_us // _Q_US * QUARTER


def add_count(into: Counts, key: tuple[str, int], n: int = 1) -> None:
    into[key] = into.get(key, 0) + n


def expected(
    meters: Sequence[Meter], counting: Iterable[LedgerEntry], admitted: dict[tuple[int, str], set[str]]
) -> Counts:
    """Replay the versions that count through the meters as the aggregator does (cap 0: only
    the group values the rollups admitted) and count what each meter's rollups must hold per
    quarter hour: events, or distinct values per subject and group for UNIQUE_COUNT."""
    out: Counts = {}
    replay = Replay(0, {k: set(v) for k, v in admitted.items()})
    replay.apply([CompiledMeter(m) for m in meters], counting)
    slugs = {m.key: m.slug for m in meters}
    for states in replay.fold.minutes.values():
        for (meter, _, _, bucket, _), slot in states.items():
            add_count(out, (slugs[meter], bucket - bucket % QUARTER), slot[0])
    for meter, level, _, bucket, _, _ in replay.fold.uniques:
        if level == QUARTER:
            add_count(out, (slugs[meter], bucket))
    for (meter, _, _, bucket, _), points in replay.fold.gauges.items():
        add_count(out, (slugs[meter], bucket - bucket % QUARTER), len(points))
    return out


def standing(windows: Iterable[Window], time_us: int, received_us: int, *, counted: bool) -> str:
    """``invoiced``, ``late_adjusted``, ``late_pending`` or ``not_invoiced`` (a void: empty
    unless it came after its window was finalized)."""
    for a, b, first, last in windows:
        if a <= time_us < b:
            if received_us <= first:
                return "invoiced" if counted else ""
            return "late_adjusted" if received_us <= last else "late_pending"
    return "not_invoiced" if counted else ""


def billed_changes(
    namespace: str, meters: Sequence[Meter], windows: Sequence[BilledWindow], chains: Iterable[Sequence[Version]]
) -> list[dict[str, Change]]:
    """Per window (in order), per meter slug: the :class:`Change` of the keys' ``chains``
    (each in log order) whose last version was received after the window's snapshot."""
    out: list[dict[str, Change]] = [{} for _ in windows]
    compiled = [CompiledMeter(m) for m in meters]
    chains = list(chains)
    for i, window in enumerate(windows):
        subjects = set(window.subjects)
        for chain in chains:
            if chain[-1].received_us <= window.snapshot_us:
                continue  # nothing of this key arrived after the window was billed
            then = _at(chain, window.snapshot_us)
            now = chain[-1]
            if not (_inside(then, window, subjects) or _inside(now, window, subjects)):
                continue
            was, is_ = _inside(then, window, subjects), _inside(now, window, subjects)
            for meter in compiled:
                _note(out[i], meter, namespace, then if was else None, now, counts_now=is_)
    return out


def _note(
    into: dict[str, Change],
    meter: CompiledMeter,
    namespace: str,
    then: Version | None,
    now: Version,
    *,
    counts_now: bool,
) -> None:
    """Add what the key moved in the window: ``then`` (None unless it counted in the window when
    it was billed) and ``now`` (counted only when ``counts_now``: an amend may move the event to
    another subject or window, and then the window loses it)."""
    before = _quantity(meter, namespace, then)
    after = _quantity(meter, namespace, now) if counts_now else None
    if before is None and after is None:
        return
    change = into.setdefault(meter.meter.slug, Change())
    change.entries += 1
    if now.action == "void":
        change.voided = add(change.voided, -(before or Decimal(0)))
    else:
        change.late = add(change.late, (after or Decimal(0)) - (before or Decimal(0)))


def _quantity(meter: CompiledMeter, namespace: str, v: Version | None) -> Decimal | None:
    """What version ``v`` adds to the meter's quantity (None: nothing, it does not read it)."""
    if v is None or v.action == "void" or not counts_type(meter.meter.spec, v.type):
        return None
    event = Event(namespace, v.source, "", v.type, v.subject, v.time_us, event_data(v.raw), v.raw, b"")
    if not meter.applies(event):
        return None
    reading = meter.read(event)
    if isinstance(reading, Rejection):
        return None
    if meter.aggregation is Aggregation.COUNT:
        return Decimal(1)
    if meter.aggregation is Aggregation.SUM and isinstance(reading.value, Decimal):
        return reading.value
    return Decimal(0)  # read, but not additive: counted in ``entries`` only


def _inside(v: Version | None, w: BilledWindow, subjects: set[str]) -> bool:
    return v is not None and v.action != "void" and v.subject in subjects and w.start_us <= v.time_us < w.end_us


def _at(chain: Sequence[Version], at_us: int) -> Version | None:
    found = None
    for v in chain:
        if v.received_us <= at_us:
            found = v
    return found
