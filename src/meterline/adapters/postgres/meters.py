"""The meter catalog in PostgreSQL: definitions by namespace (the usage they count is the
UsageStore's). Each meter gets a database-wide ``key`` from a sequence, as in the embedded store."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import msgspec
from ulid import ULID

from meterline.adapters.postgres.database import PgDatabase, is_unique_violation
from meterline.domain.errors import Conflict, NotFound
from meterline.domain.meters.model import (
    RESERVED_SLUGS,
    Meter,
    MeterSpec,
    ingested_bytes_spec,
)

_encode = msgspec.json.Encoder().encode
_spec = msgspec.json.Decoder(MeterSpec)
_SELECT = "SELECT key, id, namespace, spec, created_us, coalesce(updated_us, created_us) FROM meters"


class PgMeters:
    def __init__(self, db: PgDatabase, now_us: Callable[[], int]) -> None:
        self._db = db
        self._now_us = now_us
        self.builtins = False
        """Whether each namespace has the built-in meters (``set_builtins``)."""
        self._ensured: set[str] = set()

    def set_builtins(self, on: bool) -> None:
        """On: a namespace gets the built-in meter ``ingested_bytes`` when its meters are first
        read through this catalog (any node may create it; the unique slug makes one win).
        The sink workers count a new built-in meter's past events by the backfill any new
        meter gets. Off: no namespace gets one any more; those in the shared catalog stay
        (another node may have it on), and keep counting."""
        self.builtins = on
        self._ensured.clear()

    def _ensure(self, namespace: str) -> None:
        if not self.builtins or namespace in self._ensured:
            return
        spec = ingested_bytes_spec()
        with self._db.tx() as conn:
            live = "SELECT 1 FROM meters WHERE namespace = %s AND slug = %s AND deleted_us IS NULL"
            found = conn.execute(live, (namespace, spec.slug)).fetchone()
        if found is None:
            try:
                self.create(namespace, spec)
            except Conflict:
                pass  # another node created it first
        self._ensured.add(namespace)

    def create(self, namespace: str, spec: MeterSpec) -> Meter:
        meter_id, now = str(ULID()), self._now_us()
        try:
            with self._db.tx() as conn:
                row = conn.execute(
                    "INSERT INTO meters (id, namespace, slug, spec, created_us, updated_us) VALUES (%s,%s,%s,%s,%s,%s)"
                    " RETURNING key",
                    (meter_id, namespace, spec.slug, _encode(spec), now, now),
                ).fetchone()
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict(f"A meter with slug {spec.slug!r} already exists", code="meter_exists") from None
            raise
        assert row is not None
        return Meter(row[0], meter_id, namespace, spec, now, now)

    def get(self, namespace: str, id_or_slug: str) -> Meter:
        if id_or_slug in RESERVED_SLUGS:
            self._ensure(namespace)
        with self._db.tx() as conn:
            row = conn.execute(
                _SELECT + " WHERE namespace = %s AND (slug = %s OR id = %s) AND deleted_us IS NULL",
                (namespace, id_or_slug, id_or_slug),
            ).fetchone()
        if row is None:
            raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")
        return _meter(row)

    def list(self, namespace: str) -> builtins.list[Meter]:
        self._ensure(namespace)
        with self._db.tx() as conn:
            rows = conn.execute(_SELECT + " WHERE namespace = %s AND deleted_us IS NULL ORDER BY key", (namespace,))
            return [_meter(r) for r in rows.fetchall()]

    def live(self) -> builtins.list[Meter]:
        """Every live meter of every namespace, by key (what a usage store follows)."""
        with self._db.tx() as conn:
            return [_meter(r) for r in conn.execute(_SELECT + " WHERE deleted_us IS NULL ORDER BY key").fetchall()]

    def update(self, namespace: str, id_or_slug: str, spec: MeterSpec) -> Meter:
        """A new name, description, metadata or ``groupBy``. A new ``groupBy`` gives the meter
        a new ``key`` (its id and slug stay): to the sink workers that is a meter created now,
        so they derive its rollups from the raw events by the backfill every new meter gets
        (reads wait for it or say it is not done, as for a new meter), while the rollups kept
        under the old key are no longer read."""
        now = self._now_us()
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT spec FROM meters WHERE namespace = %s AND (slug = %s OR id = %s) AND deleted_us IS NULL"
                " FOR UPDATE",
                (namespace, id_or_slug, id_or_slug),
            ).fetchone()
            if row is None:
                raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")
            rekey = _spec.decode(row[0]).group_by != spec.group_by
            row = conn.execute(
                "UPDATE meters SET spec = %s, updated_us = %s"
                + (", key = nextval(pg_get_serial_sequence('meters', 'key'))" if rekey else "")
                + " WHERE namespace = %s AND (slug = %s OR id = %s) AND deleted_us IS NULL"
                " RETURNING key, id, namespace, spec, created_us, updated_us",
                (_encode(spec), now, namespace, id_or_slug, id_or_slug),
            ).fetchone()
        if row is None:
            raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")
        return _meter(row)

    def delete(self, namespace: str, id_or_slug: str) -> None:
        with self._db.tx() as conn:
            row = conn.execute(
                "UPDATE meters SET deleted_us = %s WHERE namespace = %s AND (slug = %s OR id = %s)"
                " AND deleted_us IS NULL RETURNING key",
                (self._now_us(), namespace, id_or_slug, id_or_slug),
            ).fetchone()
        if row is None:
            raise NotFound(f"No meter {id_or_slug!r}", code="meter_not_found")


def _meter(row: tuple[Any, ...]) -> Meter:
    key, id_, ns, spec, created, updated = row
    return Meter(key, id_, ns, _spec.decode(spec), created, updated)
