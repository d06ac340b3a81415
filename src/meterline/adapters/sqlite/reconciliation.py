"""Reconciliation counts in SQLite (:class:`~meterline.ports.reconciliation.ReconciliationCounts`).

Each answer reads indexed rows on a reader connection: ledger counts and meter-wide summaries
(``summaries.py``: kept by the aggregator, per UTC quarter hour, in one transaction with its
offset; read together in one snapshot), dead letters by namespace and receipt time, or the
usually small quarantine. No answer scans the ledger but :meth:`ledger_check`.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable, Sequence

from meterline.adapters.sqlite.billed_changes import billed_changes
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.replay import stored_offset
from meterline.domain.integrity.reconcile import Window, expected, standing
from meterline.domain.meters.fold import LedgerEntry
from meterline.domain.meters.model import Aggregation, Meter
from meterline.ports.reconciliation import QUARTER, BilledWindow, Change, Counted, Counts, LedgerCheck

_US = 1_000_000
_Q = QUARTER * _US
_COUNTING = (
    "SELECT e.seq, e.namespace, e.source, e.type, e.subject, e.time_us, e.raw, e.received_us FROM events e"
    " LEFT JOIN corrections c ON c.seq = e.seq"
    " WHERE e.namespace = ?1 AND e.time_us >= ?2 AND e.time_us < ?3 AND e.seq <= ?4"
    " AND coalesce(c.action, '') <> 'void' AND NOT EXISTS (SELECT 1 FROM corrections later"
    " WHERE later.original = coalesce(c.original, e.seq) AND later.seq > e.seq AND later.seq <= ?4)"
)
"""The version of each key that counts at position ?4 (``domain.events.corrections``)."""
_VOIDS = (
    "SELECT v.type, v.subject, v.time_us, v.received_us, o.type, o.time_us FROM corrections c"
    " JOIN events v ON v.seq = c.seq JOIN events o ON o.seq = c.original"
    " WHERE c.namespace = ?1 AND o.time_us >= ?2 AND o.time_us < ?3 AND c.seq <= ?4 AND c.action = 'void'"
)
_WINDOWS = (
    "SELECT b.customer, b.window_start_us, b.window_end_us, min(i.issued_us), max(i.issued_us)"
    " FROM billed_windows b JOIN invoices i ON i.id = b.invoice"
    " WHERE b.namespace = ? AND b.window_end_us > ? AND b.window_start_us < ?"
    " AND b.invoice NOT IN (SELECT invoice FROM invoice_voids) AND b.origin NOT IN (SELECT invoice FROM invoice_voids)"
    " GROUP BY b.subscription, b.window_start_us"
)

_METER_WIDE = "FROM summaries WHERE meter = ? AND level = ? AND subject = ''"


class SqliteReconciliationCounts:
    def __init__(self, db: Database) -> None:
        self._db = db

    def counted(
        self, namespace: str, meters: list[Meter], start: int, end: int, periods: Sequence[int] = ()
    ) -> Counted:
        """``ledger_counts`` and every meter's quarter-hour counts in one read snapshot, so all
        reflect the live offset read in it: the aggregator writes them in one transaction with
        that offset (backfilling meters hold what their backfill reached). With ``periods``,
        SQLite adds them up per period (:func:`_period_sql`)."""
        period = _period_sql(periods)
        self._db.fresh()  # wait as the request asks (the aggregator writes these counts)
        conn = self._db.reader()
        conn.execute("BEGIN")
        try:
            offset = stored_offset(conn)
            at = conn.execute("SELECT received_us FROM events WHERE seq = ?", (offset,)).fetchone()
            rows = conn.execute(
                f"SELECT type, {period} AS p, sum(cnt) FROM ledger_counts"
                " WHERE namespace = ? AND bucket >= ? AND bucket < ? GROUP BY type, p",
                (namespace, start, end),
            )
            accepted = {(t, b): n for t, b, n in rows if n}
            metered = {m.slug: _metered(conn, m, start, end, period) for m in meters}
        finally:
            conn.execute("COMMIT")
        return Counted(offset, None if at is None else int(at[0]), accepted, metered)

    def rejected(self, namespace: str, start: int, end: int) -> dict[tuple[str, str, int], int]:
        rows = self._db.reader().execute(
            "SELECT reason, CASE WHEN json_valid(CAST(raw AS TEXT)) THEN json_extract(CAST(raw AS TEXT), '$.type')"
            f" END AS t, received_us / {QUARTER * _US} AS q, count(*) FROM dead_letters"
            " WHERE namespace = ? AND received_us >= ? AND received_us < ?"
            " AND id NOT IN (SELECT dead_letter FROM resubmissions) GROUP BY reason, t, q",
            (namespace, start * _US, end * _US),
        )
        return {(r, t if isinstance(t, str) else "", q * QUARTER): n for r, t, q, n in rows}

    def quarantined(self, namespace: str, start: int, end: int) -> dict[tuple[str, int], int]:
        rows = self._db.reader().execute(
            f"SELECT type, received_us / {QUARTER * _US} AS q, count(*) FROM quarantine"
            " WHERE namespace = ? AND received_us >= ? AND received_us < ? GROUP BY type, q",
            (namespace, start * _US, end * _US),
        )
        return {(t, q * QUARTER): n for t, q, n in rows}

    def namespaces(self) -> list[str]:
        rows = self._db.reader().execute("SELECT DISTINCT namespace FROM meters WHERE deleted_us IS NULL ORDER BY 1")
        return [ns for (ns,) in rows]

    def billed_changes(
        self, namespace: str, meters: list[Meter], windows: list[BilledWindow], through: int
    ) -> list[dict[str, Change]]:
        conn = self._db.reader()
        conn.execute("BEGIN")  # one snapshot for every chain
        try:
            return billed_changes(conn, namespace, meters, windows, through)
        finally:
            conn.execute("COMMIT")

    def ledger_check(self, namespace: str, meters: list[Meter], start: int, end: int, through: int) -> LedgerCheck:
        conn = self._db.reader()
        conn.execute("BEGIN")  # one snapshot for every count
        try:
            return _check(conn, namespace, meters, (namespace, start * _US, end * _US, through))
        finally:
            conn.execute("COMMIT")


def _metered(conn: sqlite3.Connection, meter: Meter, start: int, end: int, period: str = "bucket") -> dict[int, int]:
    """Events of the meter's quarter hours (or of the periods ``period`` maps them to), from
    the meter-wide summaries; for UNIQUE_COUNT (no summaries: distinct values do not add up)
    the distinct values its rollups hold."""
    if meter.spec.aggregation is Aggregation.APPROX_UNIQUE_COUNT:
        return {}  # sketches hold no count to compare (reconcile compares nothing for them)
    sql = f"SELECT {period} AS p, sum(cnt) {_METER_WIDE}"
    if meter.spec.aggregation is Aggregation.UNIQUE_COUNT:
        sql = f"SELECT {period} AS p, count(*) FROM uniques WHERE meter = ? AND level = ?"
    rows = conn.execute(f"{sql} AND bucket >= ? AND bucket < ? GROUP BY p", (meter.key, QUARTER, start, end))
    return {int(b): int(n) for b, n in rows}


MAX_PERIODS = 64
"""Periods added up in SQL (a CASE over their boundaries); more are answered per quarter hour."""


def _period_sql(periods: Sequence[int]) -> str:
    """SQL for the start of the period of ``periods`` (boundaries: every period's start, then
    the last one's end) that holds ``bucket``; ``bucket`` itself without periods or with more
    than :data:`MAX_PERIODS` of them (a CASE is evaluated row by row)."""
    if not 2 <= len(periods) <= MAX_PERIODS + 1:
        return "bucket"
    whens = " ".join(f"WHEN bucket < {int(b)} THEN {int(a)}" for a, b in itertools.pairwise(periods))
    return f"CASE {whens} ELSE {int(periods[-2])} END"


def _check(
    conn: sqlite3.Connection, namespace: str, meters: list[Meter], span: tuple[str, int, int, int]
) -> LedgerCheck:
    check = LedgerCheck()
    for t, q, n in conn.execute(
        f"SELECT type, time_us / {_Q}, count(*) FROM events WHERE namespace = ?1 AND time_us >= ?2 AND time_us < ?3"
        " AND seq <= ?4 AND seq NOT IN (SELECT seq FROM corrections) GROUP BY 1, 2",
        span,
    ):
        check.accepted[(t, q * QUARTER)] = n
    voids = conn.execute(_VOIDS, span).fetchall()
    for *_, o_type, o_time in voids:
        _add(check.voided, (o_type, o_time // _Q * QUARTER))
    counting = [LedgerEntry(*row) for row in conn.execute(_COUNTING, span)]
    for e in counting:
        _add(check.counting, (e.type, e.time_us // _Q * QUARTER))
    _expected(conn, check, meters, counting)
    _stray(conn, check, meters, span[1] // _US, span[2] // _US)
    _billing(conn, check, namespace, meters, counting, voids, span)
    return check


def _expected(conn: sqlite3.Connection, check: LedgerCheck, meters: list[Meter], counting: list[LedgerEntry]) -> None:
    """What each meter's rollups must hold: the counting versions replayed through the meters
    with only the group values the rollups admitted (``domain.integrity.reconcile.expected``)."""
    admitted: dict[tuple[int, str], set[str]] = {}
    for key, dim, value in conn.execute("SELECT meter, dim, value FROM group_values"):
        admitted.setdefault((key, dim), set()).add(value)
    check.expected.update(expected(meters, counting, admitted))


def _stray(conn: sqlite3.Connection, check: LedgerCheck, meters: list[Meter], start: int, end: int) -> None:
    """Per-subject quarter-hour rollups against the meter-wide summaries of the same snapshot
    (the aggregator writes both in one transaction), for the meters that keep both: a row of
    one edited or lost by hand shows as a difference (``LedgerCheck.stray``)."""
    per_subject = (
        f"SELECT bucket, sum(cnt) FROM rollups WHERE meter = ? AND level = {QUARTER}"
        " AND bucket >= ? AND bucket < ? GROUP BY bucket"
    )  # the level as a literal: the partial index rollups_by_time serves the range
    wide = f"SELECT bucket, sum(cnt) {_METER_WIDE} AND bucket >= ? AND bucket < ? GROUP BY bucket"
    for m in meters:
        if m.spec.aggregation in (Aggregation.UNIQUE_COUNT, Aggregation.APPROX_UNIQUE_COUNT):
            continue  # distinct values, read per subject already (``_metered``); sketches hold no count
        rows = dict(conn.execute(per_subject, (m.key, start, end)).fetchall())
        summed = dict(conn.execute(wide, (m.key, QUARTER, start, end)).fetchall())
        for bucket in rows.keys() | summed.keys():
            if difference := int(rows.get(bucket) or 0) - int(summed.get(bucket) or 0):
                check.stray[(m.slug, int(bucket))] = difference


def _billing(
    conn: sqlite3.Connection,
    check: LedgerCheck,
    namespace: str,
    meters: list[Meter],
    counting: list[LedgerEntry],
    voids: list[tuple[str, str, int, int, str, int]],
    span: tuple[str, int, int, int],
) -> None:
    """Where each counting version (and each void) of a meter's type stands with billing."""
    owner = dict(conn.execute("SELECT subject, customer FROM customer_subjects WHERE namespace = ?", (namespace,)))
    windows: dict[str, list[Window]] = {}
    for customer, a, b, first, last in conn.execute(_WINDOWS, (namespace, span[1], span[2])):
        windows.setdefault(customer, []).append((a, b, first, last))
    by_type: dict[str, list[str]] = {}
    for m in meters:
        by_type.setdefault(m.spec.event_type, []).append(m.slug)
    for e in counting:
        where = standing(windows.get(owner.get(e.subject, ""), ()), e.time_us, e.received_us, counted=True)
        _add_all(getattr(check, where), by_type.get(e.type, ()), e.time_us)
    for _, subject, time_us, received_us, o_type, o_time in voids:
        where = standing(windows.get(owner.get(subject, ""), ()), time_us, received_us, counted=False)
        if where:
            _add_all(getattr(check, where), by_type.get(o_type, ()), o_time)


def _add_all(into: Counts, slugs: Iterable[str], time_us: int) -> None:
    for slug in slugs:
        _add(into, (slug, time_us // _Q * QUARTER))


def _add(into: Counts, key: tuple[str, int], n: int = 1) -> None:
    into[key] = into.get(key, 0) + n
