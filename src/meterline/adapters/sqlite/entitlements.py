"""Features, entitlements and grants in SQLite (the :mod:`meterline.ports.entitlements`
repositories; the rules are in the entitlement services).

Writes are writer tasks. After each one commits, the live counters update their index
(``changed`` reloads it, a separate writer task that sees the committed catalog and is
serialised with ingest; ``added`` adds one new entitlement).
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import msgspec

from meterline.adapters.sqlite.database import Database
from meterline.domain.entitlements.model import Entitlement, Feature, FeatureInput, Grant
from meterline.domain.errors import Conflict, NotFound

_feature = msgspec.json.Decoder(FeatureInput)
_stored_ent = msgspec.json.Decoder(Entitlement)
_stored_grant = msgspec.json.Decoder(Grant)
_encode = msgspec.json.Encoder(decimal_format="number").encode

T = TypeVar("T")


class _Writes:
    def __init__(self, db: Database, changed: Callable[[], None]) -> None:
        self._db = db
        self._changed = changed

    def _write(self, task: Callable[[sqlite3.Connection], T]) -> T:
        result = self._db.writer.call(task)
        self._changed()
        return result


class SqliteFeatures(_Writes):
    def add(self, feature: Feature) -> Feature:
        def task(conn: sqlite3.Connection) -> Feature:
            try:
                conn.execute(
                    "INSERT INTO features VALUES (?,?,?,?,?,NULL)",
                    (feature.id, feature.namespace, feature.key, _encode(feature.spec), feature.created_us),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"feature {feature.key!r} already exists", code="feature_exists") from None
            return feature

        return self._write(task)

    def list(self, namespace: str, *, include_archived: bool = False) -> builtins.list[Feature]:
        rows = self._db.reader().execute(
            "SELECT id, namespace, spec, created_us, archived_us FROM features"
            " WHERE namespace = ? AND (? OR archived_us IS NULL) ORDER BY created_us, id",
            (namespace, include_archived),
        )
        return [Feature(i, ns, _feature.decode(s), c, a) for i, ns, s, c, a in rows]

    def get(self, namespace: str, id_or_key: str) -> Feature:
        row = (
            self._db.reader()
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

    def archive(self, namespace: str, feature_id: str, at_us: int) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE features SET archived_us = ? WHERE namespace = ? AND id = ?", (at_us, namespace, feature_id)
            )
        )


class SqliteEntitlements(_Writes):
    def __init__(self, db: Database, changed: Callable[[], None], added: Callable[[Entitlement], None]) -> None:
        super().__init__(db, changed)
        self._added = added
        self.features = SqliteFeatures(db, changed)
        self.grants = SqliteGrants(db, changed)

    def add(self, ent: Entitlement, *, replace: bool = False) -> Entitlement:
        def task(conn: sqlite3.Connection) -> Entitlement:
            if replace:
                conn.execute(
                    "UPDATE entitlements SET deleted_us = ? WHERE namespace = ? AND customer = ? AND feature = ?"
                    " AND deleted_us IS NULL",
                    (ent.created_us, ent.namespace, ent.customer_id, ent.feature_id),
                )
            try:
                conn.execute(
                    "INSERT INTO entitlements VALUES (?,?,?,?,?,?,NULL)",
                    (ent.id, ent.namespace, ent.customer_id, ent.feature_id, _encode(ent), ent.created_us),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"customer {ent.customer_key!r} already has an entitlement to {ent.feature_key!r}",
                    code="entitlement_exists",
                ) from None
            return ent

        self._db.writer.call(task)
        if replace:
            self._changed()
        else:
            self._added(ent)
        return ent

    def list(
        self, namespace: str, *, customer_id: str | None = None, include_deleted: bool = False
    ) -> builtins.list[Entitlement]:
        rows = self._db.reader().execute(
            "SELECT spec, deleted_us FROM entitlements WHERE namespace = ? AND (? IS NULL OR customer = ?)"
            " AND (? OR deleted_us IS NULL) ORDER BY created_us, id",
            (namespace, customer_id, customer_id, include_deleted),
        )
        return [_loaded(spec, deleted) for spec, deleted in rows]

    def get(self, namespace: str, entitlement_id: str) -> Entitlement:
        row = (
            self._db.reader()
            .execute(
                "SELECT spec, deleted_us FROM entitlements WHERE namespace = ? AND id = ?", (namespace, entitlement_id)
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no entitlement {entitlement_id!r}", code="entitlement_not_found")
        return _loaded(*row)

    def update(self, ent: Entitlement) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE entitlements SET spec = ? WHERE namespace = ? AND id = ?", (_encode(ent), ent.namespace, ent.id)
            )
        )

    def delete(self, namespace: str, entitlement_id: str, at_us: int) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE entitlements SET deleted_us = ? WHERE namespace = ? AND id = ?",
                (at_us, namespace, entitlement_id),
            )
        )


class SqliteGrants(_Writes):
    def add(self, namespace: str, grant: Grant) -> Grant:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO grants VALUES (?,?,?,?,?,NULL)",
                (grant.id, namespace, grant.entitlement_id, _encode(grant), grant.created_us),
            )
        )
        return grant

    def list(
        self, namespace: str, entitlement_id: str | None = None, *, include_voided: bool = False
    ) -> builtins.list[Grant]:
        rows = self._db.reader().execute(
            "SELECT spec, voided_us FROM grants WHERE namespace = ? AND (? IS NULL OR entitlement = ?)"
            " AND (? OR voided_us IS NULL) ORDER BY created_us, id",
            (namespace, entitlement_id, entitlement_id, include_voided),
        )
        return [msgspec.structs.replace(_stored_grant.decode(s), voided_us=v) for s, v in rows]

    def void(self, namespace: str, grant_id: str, at_us: int) -> None:
        def task(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT voided_us FROM grants WHERE namespace = ? AND id = ?", (namespace, grant_id)
            ).fetchone()
            if row is None:
                raise NotFound(f"no grant {grant_id!r}", code="grant_not_found")
            if row[0] is not None:
                raise Conflict(f"grant {grant_id!r} is already voided", code="grant_voided")
            conn.execute("UPDATE grants SET voided_us = ? WHERE id = ?", (at_us, grant_id))

        self._write(task)


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
