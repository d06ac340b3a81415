"""Features, entitlements and grants in SQLite.

Writes are writer tasks. After each one commits, the live counters reload their index (a
separate writer task, so it sees the committed catalog and is serialised with ingest).
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

import msgspec
from dateutil.relativedelta import relativedelta
from ulid import ULID

from meterline.adapters.sqlite.customers import SqliteCustomers
from meterline.adapters.sqlite.database import Database
from meterline.adapters.sqlite.meters import SqliteMeters
from meterline.domain.clock import from_us, to_us
from meterline.domain.entitlements.model import (
    Entitlement,
    EntitlementInput,
    Feature,
    FeatureInput,
    Grant,
    GrantInput,
    validate_entitlement,
    validate_feature,
    validate_grant,
)
from meterline.domain.errors import Conflict, InvalidInput, NotFound
from meterline.domain.meters.model import Aggregation
from meterline.domain.periods import parse_interval, recurrence

_feature = msgspec.json.Decoder(FeatureInput)
_ent = msgspec.json.Decoder(EntitlementInput)
_grant = msgspec.json.Decoder(GrantInput)
_encode = msgspec.json.Encoder(decimal_format="number").encode

T = TypeVar("T")

_EXPIRY = {
    "HOUR": lambda n: relativedelta(hours=n),
    "DAY": lambda n: relativedelta(days=n),
    "WEEK": lambda n: relativedelta(weeks=n),
    "MONTH": lambda n: relativedelta(months=n),
    "YEAR": lambda n: relativedelta(years=n),
}


class SqliteEntitlements:
    def __init__(
        self,
        db: Database,
        customers: SqliteCustomers,
        meters: SqliteMeters,
        now_us: Callable[[], int],
        changed: Callable[[], None],
        added: Callable[[Entitlement], None],
    ) -> None:
        self._db = db
        self._customers = customers
        self._meters = meters
        self._now_us = now_us
        self._changed = changed
        self._added = added

    def _write(self, task: Callable[[sqlite3.Connection], T]) -> T:
        result = self._db.writer.call(task)
        self._changed()
        return result

    # -- features ---------------------------------------------------------------------------

    def create_feature(self, namespace: str, inp: FeatureInput) -> Feature:
        validate_feature(inp)
        if inp.meter_slug is not None:
            meter = self._meters.get(namespace, inp.meter_slug)
            for dim in inp.meter_group_by_filters or {}:
                if dim not in meter.spec.group_by:
                    raise InvalidInput(f"meter {meter.slug!r} has no groupBy {dim!r}", code="invalid_feature")
        feature = Feature(str(ULID()), namespace, inp, self._now_us())

        def task(conn: sqlite3.Connection) -> Feature:
            try:
                conn.execute(
                    "INSERT INTO features VALUES (?,?,?,?,?,NULL)",
                    (feature.id, namespace, inp.key, _encode(inp), feature.created_us),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"feature {inp.key!r} already exists", code="feature_exists") from None
            return feature

        return self._write(task)

    def features(self, namespace: str, *, include_archived: bool = False) -> builtins.list[Feature]:
        rows = self._db.reader().execute(
            "SELECT id, namespace, spec, created_us, archived_us FROM features"
            " WHERE namespace = ? AND (? OR archived_us IS NULL) ORDER BY created_us, id",
            (namespace, include_archived),
        )
        return [Feature(i, ns, _feature.decode(s), c, a) for i, ns, s, c, a in rows]

    def feature(self, namespace: str, id_or_key: str, conn: sqlite3.Connection | None = None) -> Feature:
        row = (
            (conn or self._db.reader())
            .execute(
                "SELECT id, namespace, spec, created_us, archived_us FROM features"
                " WHERE namespace = ? AND (id = ? OR (key = ? AND archived_us IS NULL))",
                (namespace, id_or_key, id_or_key),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no feature {id_or_key!r}", code="feature_not_found")
        i, ns, s, c, a = row
        return Feature(i, ns, _feature.decode(s), c, a)

    def archive_feature(self, namespace: str, id_or_key: str) -> None:
        feature = self.feature(namespace, id_or_key)

        def task(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE features SET archived_us = ? WHERE id = ?", (self._now_us(), feature.id))

        self._write(task)

    # -- entitlements -----------------------------------------------------------------------

    def create(self, namespace: str, customer_key: str, inp: EntitlementInput, *, replace: bool = False) -> Entitlement:
        validate_entitlement(inp)
        customer = self._customers.get(namespace, customer_key)
        feature = self.feature(namespace, inp.feature_id or inp.feature_key or "")
        if inp.feature_key and feature.key != inp.feature_key:
            raise InvalidInput("featureKey and featureId name different features", code="invalid_entitlement")
        if inp.type == "metered":
            self._check_meter(namespace, feature)
        now = self._now_us()
        anchor = self._anchor(inp, customer.timezone, now)
        if inp.type == "metered" and inp.usage_period is not None:
            _check_periods(inp.usage_period.interval, anchor, customer.timezone, now)
        ent = Entitlement(
            str(ULID()), namespace, customer.id, customer.key, feature.id, feature.key, inp, anchor, anchor, now
        )

        def task(conn: sqlite3.Connection) -> Entitlement:
            if replace:
                conn.execute(
                    "UPDATE entitlements SET deleted_us = ? WHERE namespace = ? AND customer = ? AND feature = ?"
                    " AND deleted_us IS NULL",
                    (now, namespace, customer.id, feature.id),
                )
            try:
                conn.execute(
                    "INSERT INTO entitlements VALUES (?,?,?,?,?,?,NULL)",
                    (ent.id, namespace, customer.id, feature.id, _encode(ent), now),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"customer {customer.key!r} already has an entitlement to {feature.key!r}",
                    code="entitlement_exists",
                ) from None
            return ent

        ent = self._db.writer.call(task)
        if replace:
            self._changed()
        else:
            self._added(ent)
        return ent

    def _check_meter(self, namespace: str, feature: Feature) -> None:
        if feature.spec.meter_slug is None:
            raise InvalidInput(
                f"feature {feature.key!r} has no meter; a metered entitlement needs one", code="invalid_entitlement"
            )
        meter = self._meters.get(namespace, feature.spec.meter_slug)
        if meter.spec.aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            raise InvalidInput(
                f"meter {meter.slug!r} aggregates with {meter.spec.aggregation.value}; metered entitlements"
                " count SUM or COUNT meters",
                code="invalid_entitlement",
            )

    def _anchor(self, inp: EntitlementInput, zone: str, now_us: int) -> int:
        """The period anchor: as given (to the minute), else the start of the current calendar
        unit in the customer's zone (1st of the month, Monday, Jan 1, midnight)."""
        if inp.usage_period is None:
            return now_us - now_us % 60_000_000
        interval = parse_interval(inp.usage_period.interval)
        if inp.usage_period.anchor is not None:
            if inp.usage_period.anchor.tzinfo is None:
                raise InvalidInput("usagePeriod.anchor must carry a UTC offset", code="invalid_entitlement")
            t = to_us(inp.usage_period.anchor)
            return t - t % 60_000_000
        local = datetime.fromtimestamp(now_us / 1e6, ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0)
        if interval == "MONTH":
            local = local.replace(day=1)
        elif interval == "YEAR":
            local = local.replace(month=1, day=1)
        elif interval == "WEEK":
            local = local - timedelta(days=local.weekday())
        elif interval != "DAY":
            return now_us - now_us % 60_000_000
        return to_us(local)

    def list(
        self,
        namespace: str,
        *,
        customer_id: str | None = None,
        feature: str | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[Entitlement]:
        rows = self._db.reader().execute(
            "SELECT spec, deleted_us FROM entitlements WHERE namespace = ? AND (? IS NULL OR customer = ?)"
            " AND (? OR deleted_us IS NULL) ORDER BY created_us, id",
            (namespace, customer_id, customer_id, include_deleted),
        )
        out = [_loaded(spec, deleted) for spec, deleted in rows]
        return [e for e in out if feature is None or feature in (e.feature_key, e.feature_id)]

    def get(self, namespace: str, id_: str) -> Entitlement:
        row = (
            self._db.reader()
            .execute("SELECT spec, deleted_us FROM entitlements WHERE namespace = ? AND id = ?", (namespace, id_))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no entitlement {id_!r}", code="entitlement_not_found")
        return _loaded(*row)

    def find(self, namespace: str, customer_id: str, id_or_feature: str) -> Entitlement:
        for ent in self.list(namespace, customer_id=customer_id):
            if id_or_feature in (ent.id, ent.feature_key, ent.feature_id):
                return ent
        raise NotFound(f"no entitlement {id_or_feature!r} for this customer", code="entitlement_not_found")

    def delete(self, namespace: str, ent: Entitlement) -> None:
        def task(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE entitlements SET deleted_us = ? WHERE id = ?", (self._now_us(), ent.id))

        self._write(task)

    def reset(self, namespace: str, ent: Entitlement, effective_us: int | None, retain_anchor: bool) -> None:
        """Start a new usage period at ``effective_us`` (to the minute; default now)."""
        if ent.spec.type != "metered":
            raise InvalidInput("only metered entitlements have usage to reset", code="invalid_entitlement")
        now = self._now_us()
        at = now if effective_us is None else effective_us
        at -= at % 60_000_000
        if at > now:
            raise InvalidInput("effectiveAt must not be in the future", code="invalid_reset")
        updated = msgspec.structs.replace(ent, last_reset_us=at, anchor_us=ent.anchor_us if retain_anchor else at)

        def task(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE entitlements SET spec = ? WHERE id = ?", (_encode(updated), ent.id))

        self._write(task)

    # -- grants -----------------------------------------------------------------------------

    def create_grant(self, namespace: str, ent: Entitlement, inp: GrantInput) -> Grant:
        validate_grant(inp)
        if ent.spec.type != "metered":
            raise InvalidInput("grants add to metered entitlements only", code="invalid_grant")
        effective = to_us(inp.effective_at)
        step = _EXPIRY[inp.expiration["duration"]](inp.expiration["count"])
        try:
            expires = to_us(inp.effective_at + step)
        except (OverflowError, ValueError):
            raise InvalidInput("the grant would expire after the year 9999", code="invalid_grant") from None
        grant = Grant(str(ULID()), ent.id, inp, effective, expires, self._now_us())

        def task(conn: sqlite3.Connection) -> Grant:
            conn.execute(
                "INSERT INTO grants VALUES (?,?,?,?,?,NULL)",
                (grant.id, namespace, ent.id, _encode(grant), grant.created_us),
            )
            return grant

        return self._write(task)

    def grants(
        self,
        namespace: str,
        entitlement_id: str | None = None,
        *,
        include_voided: bool = False,
        conn: sqlite3.Connection | None = None,
    ) -> builtins.list[Grant]:
        rows = (conn or self._db.reader()).execute(
            "SELECT spec, voided_us FROM grants WHERE namespace = ? AND (? IS NULL OR entitlement = ?)"
            " AND (? OR voided_us IS NULL) ORDER BY created_us, id",
            (namespace, entitlement_id, entitlement_id, include_voided),
        )
        return [msgspec.structs.replace(_stored_grant.decode(s), voided_us=v) for s, v in rows]

    def void_grant(self, namespace: str, grant_id: str, at_us: int | None) -> None:
        def task(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT voided_us FROM grants WHERE namespace = ? AND id = ?", (namespace, grant_id)
            ).fetchone()
            if row is None:
                raise NotFound(f"no grant {grant_id!r}", code="grant_not_found")
            if row[0] is not None:
                raise Conflict(f"grant {grant_id!r} is already voided", code="grant_voided")
            conn.execute("UPDATE grants SET voided_us = ? WHERE id = ?", (at_us or self._now_us(), grant_id))

        self._write(task)


_stored_ent = msgspec.json.Decoder(Entitlement)
_stored_grant = msgspec.json.Decoder(Grant)


def _loaded(spec: bytes, deleted_us: int | None) -> Entitlement:
    return msgspec.structs.replace(_stored_ent.decode(spec), deleted_us=deleted_us)


def load_live(conn: sqlite3.Connection) -> tuple[builtins.list[Entitlement], dict[str, builtins.list[Grant]]]:
    """Every live entitlement and the non-voided grants of each (for the counters' index)."""
    ents = [_loaded(s, None) for (s,) in conn.execute("SELECT spec FROM entitlements WHERE deleted_us IS NULL")]
    grants: dict[str, builtins.list[Grant]] = {}
    for spec, voided in conn.execute("SELECT spec, voided_us FROM grants"):
        g = msgspec.structs.replace(_stored_grant.decode(spec), voided_us=voided)
        grants.setdefault(g.entitlement_id, []).append(g)
    return ents, grants


def _check_periods(interval: str, anchor_us: int, zone: str, now_us: int) -> None:
    """Refuse, before anything is written, an anchor whose periods the live counter cannot use:
    periods that run past the last representable date in the customer's zone, or that do not
    fall on whole minutes (rollups are kept per minute; an anchor in a zone's local mean time,
    such as +00:53:28, carries its seconds into every period)."""
    try:
        rec = recurrence(interval, from_us(anchor_us), zone)
        rec.period_at_us(anchor_us)
        current = rec.period_at_us(now_us)
    except (InvalidInput, OverflowError, ValueError):
        current = None
    if current is None or current.start_us % 60_000_000 or current.end_us % 60_000_000:
        raise InvalidInput(
            "usagePeriod.anchor is too far from now: its periods fall outside the supported dates",
            code="invalid_entitlement",
        )
