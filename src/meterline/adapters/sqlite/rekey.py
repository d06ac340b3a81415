"""A customer's new key in the records that carry it (SQLite): its entitlements and its
subscriptions name the customer by id and also keep its key, so a key change rewrites them in
the same transaction as the customer. Finalized invoices keep the key they were issued to."""

from __future__ import annotations

import sqlite3

import msgspec

from meterline.domain.billing import Subscription
from meterline.domain.entitlements.model import Entitlement

_ent = msgspec.json.Decoder(Entitlement)
_sub = msgspec.json.Decoder(Subscription)
_encode_ent = msgspec.json.Encoder(decimal_format="number").encode
_encode_sub = msgspec.json.Encoder().encode


def rekey_references(conn: sqlite3.Connection, customer_id: str, key: str) -> None:
    """Write ``key`` into every entitlement and subscription of the customer ``customer_id``."""
    ents = conn.execute("SELECT id, spec FROM entitlements WHERE customer = ?", (customer_id,)).fetchall()
    conn.executemany(
        "UPDATE entitlements SET spec = ? WHERE id = ?",
        [(_encode_ent(msgspec.structs.replace(_ent.decode(spec), customer_key=key)), id_) for id_, spec in ents],
    )
    subs = conn.execute("SELECT id, body FROM subscriptions WHERE customer = ?", (customer_id,)).fetchall()
    conn.executemany(
        "UPDATE subscriptions SET body = ? WHERE id = ?",
        [(_encode_sub(msgspec.structs.replace(_sub.decode(body), customer=key)), id_) for id_, body in subs],
    )
