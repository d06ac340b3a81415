"""Features, entitlements and grants in PostgreSQL (the :mod:`meterline.ports.entitlements`
repositories; the rules are in the entitlement services). Partial unique indexes keep one live
feature per key and one live entitlement per customer and feature across API nodes."""

from __future__ import annotations

import builtins

import msgspec

from meterline.adapters.postgres.database import PgDatabase, is_unique_violation
from meterline.domain.entitlements.model import Entitlement, Feature, FeatureInput, Grant
from meterline.domain.errors import Conflict, NotFound

_feature = msgspec.json.Decoder(FeatureInput)
_stored_ent = msgspec.json.Decoder(Entitlement)
_stored_grant = msgspec.json.Decoder(Grant)
_encode = msgspec.json.Encoder(decimal_format="number").encode


class PgFeatures:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(self, feature: Feature) -> Feature:
        try:
            with self._db.tx() as conn:
                conn.execute(
                    "INSERT INTO features VALUES (%s,%s,%s,%s,%s,NULL)",
                    (feature.id, feature.namespace, feature.key, _encode(feature.spec), feature.created_us),
                )
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict(f"feature {feature.key!r} already exists", code="feature_exists") from None
            raise
        return feature

    def list(self, namespace: str, *, include_archived: bool = False) -> builtins.list[Feature]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT id, namespace, spec, created_us, archived_us FROM features"
                " WHERE namespace = %s AND (%s OR archived_us IS NULL) ORDER BY created_us, id",
                (namespace, include_archived),
            ).fetchall()
        return [Feature(i, ns, _feature.decode(s), c, a) for i, ns, s, c, a in rows]

    def get(self, namespace: str, id_or_key: str) -> Feature:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT id, namespace, spec, created_us, archived_us FROM features"
                " WHERE namespace = %s AND (id = %s OR (key = %s AND archived_us IS NULL))"
                " ORDER BY (id = %s) DESC LIMIT 1",
                (namespace, id_or_key, id_or_key, id_or_key),
            ).fetchone()
        if row is None:
            raise NotFound(f"no feature {id_or_key!r}", code="feature_not_found")
        i, ns, s, c, a = row
        return Feature(i, ns, _feature.decode(s), c, a)

    def archive(self, namespace: str, feature_id: str, at_us: int) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE features SET archived_us = %s WHERE namespace = %s AND id = %s", (at_us, namespace, feature_id)
            )


class PgEntitlements:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(self, ent: Entitlement, *, replace: bool = False) -> Entitlement:
        try:
            with self._db.tx() as conn:
                if replace:
                    conn.execute(
                        "UPDATE entitlements SET deleted_us = %s WHERE namespace = %s AND customer = %s"
                        " AND feature = %s AND deleted_us IS NULL",
                        (ent.created_us, ent.namespace, ent.customer_id, ent.feature_id),
                    )
                conn.execute(
                    "INSERT INTO entitlements VALUES (%s,%s,%s,%s,%s,%s,NULL)",
                    (ent.id, ent.namespace, ent.customer_id, ent.feature_id, _encode(ent), ent.created_us),
                )
        except Exception as exc:
            if is_unique_violation(exc):
                raise Conflict(
                    f"customer {ent.customer_key!r} already has an entitlement to {ent.feature_key!r}",
                    code="entitlement_exists",
                ) from None
            raise
        return ent

    def list(
        self, namespace: str, *, customer_id: str | None = None, include_deleted: bool = False
    ) -> builtins.list[Entitlement]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT spec, deleted_us FROM entitlements WHERE namespace = %(ns)s"
                " AND (%(c)s::text IS NULL OR customer = %(c)s) AND (%(all)s OR deleted_us IS NULL)"
                " ORDER BY created_us, id",
                {"ns": namespace, "c": customer_id, "all": include_deleted},
            ).fetchall()
        return [_loaded(spec, deleted) for spec, deleted in rows]

    def get(self, namespace: str, entitlement_id: str) -> Entitlement:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT spec, deleted_us FROM entitlements WHERE namespace = %s AND id = %s",
                (namespace, entitlement_id),
            ).fetchone()
        if row is None:
            raise NotFound(f"no entitlement {entitlement_id!r}", code="entitlement_not_found")
        return _loaded(*row)

    def update(self, ent: Entitlement) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE entitlements SET spec = %s WHERE namespace = %s AND id = %s",
                (_encode(ent), ent.namespace, ent.id),
            )

    def delete(self, namespace: str, entitlement_id: str, at_us: int) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "UPDATE entitlements SET deleted_us = %s WHERE namespace = %s AND id = %s",
                (at_us, namespace, entitlement_id),
            )


class PgGrants:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add(self, namespace: str, grant: Grant) -> Grant:
        with self._db.tx() as conn:
            conn.execute(
                "INSERT INTO grants VALUES (%s,%s,%s,%s,%s,NULL)",
                (grant.id, namespace, grant.entitlement_id, _encode(grant), grant.created_us),
            )
        return grant

    def list(
        self, namespace: str, entitlement_id: str | None = None, *, include_voided: bool = False
    ) -> builtins.list[Grant]:
        with self._db.tx() as conn:
            rows = conn.execute(
                "SELECT spec, voided_us FROM grants WHERE namespace = %(ns)s"
                " AND (%(e)s::text IS NULL OR entitlement = %(e)s) AND (%(all)s OR voided_us IS NULL)"
                " ORDER BY created_us, id",
                {"ns": namespace, "e": entitlement_id, "all": include_voided},
            ).fetchall()
        return [msgspec.structs.replace(_stored_grant.decode(s), voided_us=v) for s, v in rows]

    def void(self, namespace: str, grant_id: str, at_us: int) -> None:
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT voided_us FROM grants WHERE namespace = %s AND id = %s FOR UPDATE", (namespace, grant_id)
            ).fetchone()
            if row is None:
                raise NotFound(f"no grant {grant_id!r}", code="grant_not_found")
            if row[0] is not None:
                raise Conflict(f"grant {grant_id!r} is already voided", code="grant_voided")
            conn.execute("UPDATE grants SET voided_us = %s WHERE id = %s", (at_us, grant_id))


def _loaded(spec: bytes, deleted_us: int | None) -> Entitlement:
    return msgspec.structs.replace(_stored_ent.decode(spec), deleted_us=deleted_us)
