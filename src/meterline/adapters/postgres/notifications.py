"""Notification channels, rules, fired events and their delivery log, in PostgreSQL (the
:mod:`meterline.ports.notifications` repositories and the dispatcher's
:class:`~meterline.ports.deliveries.DeliveryStore`).

``due`` hands each delivery to one dispatcher at a time (row locks skipped by the others and a
claim time), so any number of API nodes can run one. The unique key of ``notification_events``
makes "once per rule, customer, feature, threshold and period" hold across API nodes and
workers: ``fire`` inserts with ``ON CONFLICT DO NOTHING`` and queues deliveries only when its
insert won.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from ulid import ULID

from meterline.adapters.postgres.database import Connection, PgDatabase
from meterline.domain.alerts.rules import Rule
from meterline.domain.errors import NotFound
from meterline.domain.notify.channels import Channel
from meterline.ports.deliveries import Due
from meterline.ports.notifications import Attempt, Delivery, EventFilter, FiredEvent

_channel = msgspec.json.Decoder(Channel)
_rule = msgspec.json.Decoder(Rule)
_encode = msgspec.json.Encoder(decimal_format="number").encode
_EVENT = "id, rule, customer, feature, threshold, period_start, payload, created_us"


class PgNotifications:
    def __init__(self, db: PgDatabase, now_us: Callable[[], int], *, claim_us: int = 300_000_000) -> None:
        """``claim_us``: how long a delivery handed out by ``due`` is held from other
        dispatchers (longer than one attempt takes)."""
        self._db = db
        self._now_us = now_us
        self._claim_us = claim_us

    # -- channels ---------------------------------------------------------------------------

    def put_channel(self, channel: Channel) -> None:
        now = self._now_us()
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO notification_channels VALUES (%s,%s,%s,%s,%s,NULL)"
                " ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_us = excluded.updated_us",
                (channel.id, channel.namespace, _encode(channel), now, now),
            )

    def channel(self, namespace: str, channel_id: str) -> Channel:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT spec FROM notification_channels WHERE namespace = %s AND id = %s AND deleted_us IS NULL",
                (namespace, channel_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"no channel {channel_id!r}", code="channel_not_found")
        return _channel.decode(row[0])

    def channels(self, namespace: str, *, include_deleted: bool = False) -> builtins.list[Channel]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT spec FROM notification_channels WHERE namespace = %s AND (%s OR deleted_us IS NULL)"
                " ORDER BY id",
                (namespace, include_deleted),
            ).fetchall()
        return [_channel.decode(r[0]) for r in rows]

    def delete_channel(self, namespace: str, channel_id: str) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE notification_channels SET deleted_us = %s WHERE namespace = %s AND id = %s"
                " AND deleted_us IS NULL",
                (self._now_us(), namespace, channel_id),
            )

    # -- rules ------------------------------------------------------------------------------

    def put_rule(self, rule: Rule) -> None:
        now = self._now_us()
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO notification_rules VALUES (%s,%s,%s,%s,%s,NULL)"
                " ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_us = excluded.updated_us",
                (rule.id, rule.namespace, _encode(rule), now, now),
            )

    def rule(self, namespace: str, rule_id: str, *, include_deleted: bool = False) -> Rule:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT spec FROM notification_rules WHERE namespace = %s AND id = %s AND (%s OR deleted_us IS NULL)",
                (namespace, rule_id, include_deleted),
            ).fetchone()
        if row is None:
            raise NotFound(f"no rule {rule_id!r}", code="rule_not_found")
        return _rule.decode(row[0])

    def rules(self, namespace: str | None = None) -> builtins.list[Rule]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT spec FROM notification_rules WHERE (%(ns)s::text IS NULL OR namespace = %(ns)s)"
                " AND deleted_us IS NULL ORDER BY id",
                {"ns": namespace},
            ).fetchall()
        return [_rule.decode(r[0]) for r in rows]

    def delete_rule(self, namespace: str, rule_id: str) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE notification_rules SET deleted_us = %s WHERE namespace = %s AND id = %s AND deleted_us IS NULL",
                (self._now_us(), namespace, rule_id),
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
        event_id = str(ULID())
        with self._db.tx() as conn:
            won = conn.execute(
                "INSERT INTO notification_events VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (event_id, namespace, rule.id, customer, feature, key, period_start_us, payload(event_id), now_us),
            ).fetchone()
            if won is None:
                return None
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO deliveries VALUES (%s,%s,'PENDING',0,%s,NULL,NULL,%s)",
                    [(event_id, c, now_us, now_us) for c in channels],
                )
        return event_id

    def series(
        self, namespace: str, rule_id: str, customer: str, feature: str, period_start_us: int
    ) -> builtins.list[str]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT threshold FROM notification_events WHERE rule = %s AND customer = %s AND feature = %s"
                " AND period_start = %s AND namespace = %s ORDER BY created_us, id",
                (rule_id, customer, feature, period_start_us, namespace),
            ).fetchall()
        return [key for (key,) in rows]

    def events(
        self, namespace: str, f: EventFilter, *, limit: int, offset: int
    ) -> tuple[int, builtins.list[FiredEvent]]:
        args = {
            "ns": namespace,
            "start": f.start_us,
            "end": f.end_us,
            "rules": list(f.rules) or None,
            "customers": list(f.customers) or None,
            "features": list(f.features) or None,
            "limit": limit,
            "offset": offset,
        }
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT count(*) OVER (), " + _EVENT + " FROM notification_events WHERE namespace = %(ns)s"
                " AND (%(start)s::bigint IS NULL OR created_us >= %(start)s)"
                " AND (%(end)s::bigint IS NULL OR created_us < %(end)s)"
                " AND (%(rules)s::text[] IS NULL OR rule = ANY(%(rules)s))"
                " AND (%(customers)s::text[] IS NULL OR customer = ANY(%(customers)s))"
                " AND (%(features)s::text[] IS NULL OR feature = ANY(%(features)s))"
                " ORDER BY created_us DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s",
                args,
            ).fetchall()
            return (rows[0][0] if rows else 0), [_fired(conn, row[1:]) for row in rows]

    def event(self, namespace: str, event_id: str) -> FiredEvent:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT " + _EVENT + " FROM notification_events WHERE namespace = %s AND id = %s", (namespace, event_id)
            ).fetchone()
            if row is None:
                raise NotFound(f"no notification event {event_id!r}", code="notification_event_not_found")
            return _fired(conn, row)

    def resend(self, namespace: str, event_id: str, channels: Sequence[str] | None, now_us: int) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'PENDING', attempts = 0, next_attempt_us = %(now)s, updated_us = %(now)s"
                " WHERE event = (SELECT id FROM notification_events WHERE namespace = %(ns)s AND id = %(id)s)"
                " AND (%(channels)s::text[] IS NULL OR channel = ANY(%(channels)s))",
                {"now": now_us, "ns": namespace, "id": event_id, "channels": None if channels is None else [*channels]},
            )

    # -- DeliveryStore ----------------------------------------------------------------------

    def due(self, now_us: int, limit: int) -> builtins.list[Due]:
        """Due deliveries, each handed to one caller: the rows are locked (others skip them) and
        their next attempt moved ``claim_us`` ahead in the same transaction, so the dispatchers
        of several API nodes never send one delivery twice at once. ``record`` then stores the
        outcome; if the node dies first, the delivery is due again once the claim lapses."""
        with self._db.tx() as conn:
            rows = conn.execute(
                "WITH due AS (SELECT event, channel, next_attempt_us AS was FROM deliveries"
                "   WHERE state = 'PENDING' AND next_attempt_us <= %(now)s"
                "   ORDER BY next_attempt_us, event, channel LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
                " claimed AS (UPDATE deliveries d SET next_attempt_us = %(until)s FROM due"
                "   WHERE d.event = due.event AND d.channel = due.channel"
                "   RETURNING d.event, d.channel, d.attempts, due.was)"
                " SELECT claimed.event, c.spec, claimed.attempts, e.payload FROM claimed"
                " JOIN notification_events e ON e.id = claimed.event"
                " JOIN notification_channels c ON c.id = claimed.channel"
                " ORDER BY claimed.was, claimed.event, claimed.channel",
                {"now": now_us, "limit": limit, "until": now_us + self._claim_us},
            ).fetchall()
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
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE deliveries SET state = %s, attempts = %s, next_attempt_us = %s, last_status = %s,"
                " last_error = %s, updated_us = %s WHERE event = %s AND channel = %s",
                (state, attempts, next_attempt_us, status_code, error, now, event_id, channel_id),
            )
            conn.execute(
                "INSERT INTO delivery_attempts (event, channel, at_us, state, status_code, error, duration_ms)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (event_id, channel_id, now, state, status_code, error, duration_ms),
            )


def _fired(conn: Connection, row: tuple[Any, ...]) -> FiredEvent:
    id_, rule, customer, feature, threshold, period_start, payload, created = row
    return FiredEvent(id_, rule, customer, feature, threshold, period_start, payload, created, _deliveries(conn, id_))


def _deliveries(conn: Connection, event_id: str) -> builtins.list[Delivery]:
    logs: dict[str, builtins.list[Attempt]] = {}
    for channel, *attempt in conn.execute(
        "SELECT channel, at_us, state, status_code, error, duration_ms FROM delivery_attempts"
        " WHERE event = %s ORDER BY channel, at_us, seq",
        (event_id,),
    ).fetchall():
        logs.setdefault(channel, []).append(Attempt(*attempt))
    rows = conn.execute(
        "SELECT channel, state, attempts, next_attempt_us, updated_us FROM deliveries"
        " WHERE event = %s ORDER BY channel",
        (event_id,),
    ).fetchall()
    return [Delivery(ch, state, n, next_us, updated, logs.get(ch, [])) for ch, state, n, next_us, updated in rows]
