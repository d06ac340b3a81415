"""Notification channels, rules, fired events and their delivery log, in SQLite (the
:mod:`meterline.ports.notifications` repositories; the rules are in the notification service).

This is also the dispatcher's :class:`~meterline.ports.deliveries.DeliveryStore`: a delivery is
one (event, channel) row with its state (PENDING, SUCCESS, FAILED), attempts and next attempt
time; every attempt is appended to ``delivery_attempts``.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from ulid import ULID

from meterline.adapters.sqlite.database import Database
from meterline.domain.alerts.rules import Rule
from meterline.domain.errors import NotFound
from meterline.domain.notify.channels import Channel
from meterline.ports.deliveries import Due
from meterline.ports.notifications import Attempt, Delivery, EventFilter, FiredEvent

T = TypeVar("T")
_channel = msgspec.json.Decoder(Channel)
_rule = msgspec.json.Decoder(Rule)
_encode = msgspec.json.Encoder(decimal_format="number").encode


class SqliteNotifications:
    def __init__(self, db: Database, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us
        self.changed: Callable[[], None] = lambda: None

    def _write(self, task: Callable[[sqlite3.Connection], T]) -> T:
        result = self._db.writer.call(task)
        self.changed()
        return result

    # -- channels ---------------------------------------------------------------------------

    def put_channel(self, channel: Channel) -> None:
        self._write(lambda conn: self._put(conn, "notification_channels", channel.id, channel.namespace, channel))

    def channel(self, namespace: str, channel_id: str) -> Channel:
        return _channel.decode(self._spec("notification_channels", "channel", namespace, channel_id))

    def channels(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Channel]:
        rows = self._db.reader().execute(
            "SELECT spec FROM notification_channels WHERE namespace = ? AND (? OR deleted_us IS NULL) ORDER BY id",
            (namespace, include_deleted),
        )
        return [_channel.decode(r[0]) for r in rows]

    def delete_channel(self, namespace: str, channel_id: str) -> None:
        self._write(lambda conn: self._delete(conn, "notification_channels", namespace, channel_id))

    # -- rules ------------------------------------------------------------------------------

    def put_rule(self, rule: Rule) -> None:
        self._write(lambda conn: self._put(conn, "notification_rules", rule.id, rule.namespace, rule))

    def rule(self, namespace: str, rule_id: str, *, include_deleted: bool = False) -> Rule:
        return _rule.decode(self._spec("notification_rules", "rule", namespace, rule_id, include_deleted))

    def _spec(self, table: str, what: str, namespace: str, id_: str, include_deleted: bool = False) -> bytes:
        """The stored spec of a live row (or a deleted one with ``include_deleted``), or NotFound
        (code ``<what>_not_found``)."""
        row = (
            self._db.reader()
            .execute(
                f"SELECT spec FROM {table} WHERE namespace = ? AND id = ? AND (? OR deleted_us IS NULL)",
                (namespace, id_, include_deleted),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no {what} {id_!r}", code=f"{what}_not_found")
        spec: bytes = row[0]
        return spec

    def rules(self, namespace: str | None = None, conn: sqlite3.Connection | None = None) -> builtins.list[Rule]:
        rows = (conn or self._db.reader()).execute(
            "SELECT spec FROM notification_rules WHERE (? IS NULL OR namespace = ?) AND deleted_us IS NULL ORDER BY id",
            (namespace, namespace),
        )
        return [_rule.decode(r[0]) for r in rows]

    def delete_rule(self, namespace: str, rule_id: str) -> None:
        self._write(lambda conn: self._delete(conn, "notification_rules", namespace, rule_id))

    def _put(self, conn: sqlite3.Connection, table: str, id_: str, namespace: str, value: Any) -> None:
        now = self._now_us()
        conn.execute(
            f"INSERT INTO {table} VALUES (?,?,?,?,?,NULL)"
            " ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_us = excluded.updated_us",
            (id_, namespace, _encode(value), now, now),
        )

    def _delete(self, conn: sqlite3.Connection, table: str, namespace: str, id_: str) -> None:
        conn.execute(
            f"UPDATE {table} SET deleted_us = ? WHERE namespace = ? AND id = ? AND deleted_us IS NULL",
            (self._now_us(), namespace, id_),
        )

    # -- fired events -----------------------------------------------------------------------

    def fire(
        self,
        namespace: str,
        rule: Rule,
        customer: str,
        feature: str,
        key: str,
        period_start_us: int,
        payload: Callable[[str], bytes],
        now_us: int,
        channels: Sequence[str],
    ) -> str | None:
        return self._db.writer.call(
            lambda conn: insert_event(
                conn, namespace, rule, customer, feature, key, period_start_us, payload, now_us, channels
            )
        )

    def series(
        self, namespace: str, rule_id: str, customer: str, feature: str, period_start_us: int
    ) -> builtins.list[str]:
        rows = self._db.reader().execute(
            "SELECT threshold FROM notification_events WHERE rule = ? AND customer = ? AND feature = ?"
            " AND period_start = ? AND namespace = ? ORDER BY created_us, id",
            (rule_id, customer, feature, period_start_us, namespace),
        )
        return [key for (key,) in rows]

    def events(
        self, namespace: str, f: EventFilter, *, limit: int, offset: int
    ) -> tuple[int, builtins.list[FiredEvent]]:
        conn = self._db.reader()
        lists = [_encode(list(v)) if v else None for v in (f.rules, f.customers, f.features)]
        rows = conn.execute(
            "SELECT count(*) OVER (), id, rule, customer, feature, threshold, period_start, payload, created_us"
            " FROM notification_events WHERE namespace = ?1"
            " AND (?2 IS NULL OR created_us >= ?2) AND (?3 IS NULL OR created_us < ?3)"
            " AND (?4 IS NULL OR rule IN (SELECT value FROM json_each(?4)))"
            " AND (?5 IS NULL OR customer IN (SELECT value FROM json_each(?5)))"
            " AND (?6 IS NULL OR feature IN (SELECT value FROM json_each(?6)))"
            " ORDER BY created_us DESC, id DESC LIMIT ?7 OFFSET ?8",
            (namespace, f.start_us, f.end_us, lists[0], lists[1], lists[2], limit, offset),
        ).fetchall()
        return (rows[0][0] if rows else 0), [_fired(conn, row[1:]) for row in rows]

    def event(self, namespace: str, event_id: str) -> FiredEvent:
        conn = self._db.reader()
        row = conn.execute(
            "SELECT id, rule, customer, feature, threshold, period_start, payload, created_us FROM notification_events"
            " WHERE namespace = ? AND id = ?",
            (namespace, event_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"no notification event {event_id!r}", code="notification_event_not_found")
        return _fired(conn, row)

    def resend(self, namespace: str, event_id: str, channels: Sequence[str] | None, now_us: int) -> None:
        def task(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET state = 'PENDING', attempts = 0, next_attempt_us = ?, updated_us = ?"
                " WHERE event = (SELECT id FROM notification_events WHERE namespace = ? AND id = ?)"
                " AND (? IS NULL OR channel IN (SELECT value FROM json_each(?)))",
                (now_us, now_us, namespace, event_id, None if channels is None else 1, _encode(list(channels or []))),
            )

        self._write(task)

    # -- DeliveryStore ----------------------------------------------------------------------

    def due(self, now_us: int, limit: int) -> builtins.list[Due]:
        rows = self._db.reader().execute(
            "SELECT d.event, c.spec, d.attempts, e.payload FROM deliveries d"
            " JOIN notification_events e ON e.id = d.event JOIN notification_channels c ON c.id = d.channel"
            " WHERE d.state = 'PENDING' AND d.next_attempt_us <= ? ORDER BY d.next_attempt_us LIMIT ?",
            (now_us, limit),
        )
        return [Due(event, _channel.decode(spec), attempts, payload) for event, spec, attempts, payload in rows]

    def record(
        self,
        event_id: str,
        channel_id: str,
        *,
        state: str,
        attempts: int,
        next_attempt_us: int | None,
        status_code: int | None,
        error: str | None,
        duration_ms: int | None,
    ) -> None:
        now = self._now_us()

        def task(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_us = ?, last_status = ?,"
                " last_error = ?, updated_us = ? WHERE event = ? AND channel = ?",
                (state, attempts, next_attempt_us, status_code, error, now, event_id, channel_id),
            )
            conn.execute(
                "INSERT INTO delivery_attempts VALUES (?,?,?,?,?,?,?)",
                (event_id, channel_id, now, state, status_code, error, duration_ms),
            )

        self._db.writer.call(task)


def _fired(conn: sqlite3.Connection, row: tuple[Any, ...]) -> FiredEvent:
    id_, rule, customer, feature, threshold, period_start, payload, created = row
    return FiredEvent(id_, rule, customer, feature, threshold, period_start, payload, created, _deliveries(conn, id_))


def _deliveries(conn: sqlite3.Connection, event_id: str) -> builtins.list[Delivery]:
    out = []
    for channel, state, attempts, next_us, updated in conn.execute(
        "SELECT channel, state, attempts, next_attempt_us, updated_us FROM deliveries WHERE event = ? ORDER BY channel",
        (event_id,),
    ).fetchall():
        log = [
            Attempt(*a)
            for a in conn.execute(
                "SELECT at_us, state, status_code, error, duration_ms FROM delivery_attempts"
                " WHERE event = ? AND channel = ? ORDER BY at_us, rowid",
                (event_id, channel),
            )
        ]
        out.append(Delivery(channel, state, attempts, next_us, updated, log))
    return out


def insert_event(
    conn: sqlite3.Connection,
    namespace: str,
    rule: Rule,
    customer: str,
    feature: str,
    key: str,
    period_start_us: int,
    payload: Callable[[str], bytes],
    now_us: int,
    channels: Sequence[str],
) -> str | None:
    """Record a fired alert once per (rule, customer, feature, key, period) and queue its
    deliveries; returns the new event id, or None when it had fired already."""
    event_id = str(ULID())
    cur = conn.execute(
        "INSERT OR IGNORE INTO notification_events VALUES (?,?,?,?,?,?,?,?,?)",
        (event_id, namespace, rule.id, customer, feature, key, period_start_us, payload(event_id), now_us),
    )
    if cur.rowcount == 0:
        return None
    conn.executemany(
        "INSERT INTO deliveries VALUES (?,?, 'PENDING', 0, ?, NULL, NULL, ?)",
        [(event_id, c, now_us, now_us) for c in channels],
    )
    return event_id
