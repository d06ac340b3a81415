"""A customer's new key in the records that carry it (PostgreSQL): its entitlements and its
subscriptions name the customer by id and also keep its key, so a key change rewrites them in
the same transaction as the customer. Finalized invoices keep the key they were issued to."""

from __future__ import annotations

import msgspec

from meterline.adapters.postgres.database import Connection
from meterline.domain.billing import Subscription
from meterline.domain.entitlements.model import Entitlement

_ent = msgspec.json.Decoder(Entitlement)
_sub = msgspec.json.Decoder(Subscription)
_encode_ent = msgspec.json.Encoder(decimal_format="number").encode
_encode_sub = msgspec.json.Encoder().encode


def rekey_references(conn: Connection, customer_id: str, key: str) -> None:
    """Write ``key`` into every entitlement and subscription of the customer ``customer_id``."""
    ents = conn.execute("SELECT id, spec FROM entitlements WHERE customer = %s", (customer_id,)).fetchall()
    subs = conn.execute("SELECT id, body FROM subscriptions WHERE customer = %s", (customer_id,)).fetchall()
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE entitlements SET spec = %s WHERE id = %s",
            [(_encode_ent(msgspec.structs.replace(_ent.decode(s), customer_key=key)), id_) for id_, s in ents],
        )
        cur.executemany(
            "UPDATE subscriptions SET body = %s WHERE id = %s",
            [(_encode_sub(msgspec.structs.replace(_sub.decode(b), customer=key)), id_) for id_, b in subs],
        )
