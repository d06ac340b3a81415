"""What the shared dedupe stores of scale mode hold at rest: keyed hashes only, from the claim on
(no namespace, source, event id or payload digest in any PostgreSQL column or any Redis key name
or value), and the one-time conversion of a store an older version wrote in plaintext
(PostgreSQL's migration 18, Redis's ``meterline upgrade-dedupe``) keeping every outcome."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from postgres_server import fresh_schema, server

from contract.dedupe_kit import LEASE_US, key, opened, redis_prefix
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.adapters.postgres.erasure import PgErasureCatalog
from meterline.adapters.postgres.migrations import MIGRATIONS
from meterline.adapters.redis.dedupe import RedisDedupe
from meterline.adapters.redis.dedupe_upgrade import upgrade
from meterline.domain.clock import FixedClock
from meterline.domain.erasure import erased_digest, erased_id
from meterline.domain.errors import ConfigError
from meterline.ports.dedupe import EventKey, Verdict

T0 = 1_772_366_400_000_000
WINDOW_US = 3600 * 1_000_000
CLAIMED, DUPLICATE, CONFLICT, BUSY = Verdict.CLAIMED, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.BUSY


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def pg_dump(store: PgDedupe) -> list[bytes]:
    """Every row of ``dedupe_keys``, every column as its bytes (text as UTF-8)."""
    with store._db.tx() as conn:
        rows = conn.execute("SELECT * FROM dedupe_keys").fetchall()
    return [b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in row) for row in rows]


def redis_dump(store: RedisDedupe) -> list[bytes]:
    """Every key name under the store's prefix with every field and value of its hash."""
    out = []
    for name in store._r.scan_iter(match=store._prefix + "*", count=1000):
        if store._r.type(name) != b"hash":
            continue  # the format marker
        fields: Any = store._r.hgetall(name)
        out.append(name + b"|" + b"|".join(f + b"=" + v for f, v in fields.items()))
    return out


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_no_identifier_or_payload_digest_is_ever_written(kind: str, clock: FixedClock) -> None:
    run = uuid.uuid4().hex
    ns, source = f"tenant-{run}", f"source-{run}"
    ids = [f"event-{run}-{i}" for i in range(4)]
    digests = [f"payload-digest-{i}".encode() for i in range(4)]
    keys = [EventKey(ns, source, i, d) for i, d in zip(ids, digests, strict=True)]
    with opened(kind, clock.now_us, window_us=WINDOW_US) as (store, _):
        claims = store.claim(keys[:3])
        assert store.confirm(claims.token, keys[:2]) == [True, True]  # 0, 1 confirmed; 2 pending
        assert store.claim([keys[0], EventKey(ns, source, ids[1], b"other-digest"), keys[3]]).verdicts == [
            DUPLICATE, CONFLICT, CLAIMED
        ]  # fmt: skip
        dump = pg_dump(store) if kind == "postgres" else redis_dump(store)
        assert len(dump) == 4
        for needle in [ns, source, *ids, "other-digest"]:
            assert not [row for row in dump if needle.encode() in row], needle
        assert not [row for row in dump for d in digests if d in row]
        assert store.confirmed_at(ns, source, ids[0]) == T0 and store.confirmed_at(ns, source, ids[2]) is None


def test_a_postgres_table_with_no_text_column() -> None:
    with fresh_schema(server()) as dsn:
        PgDatabase(dsn, max_size=1).close()
        with psycopg.connect(dsn) as conn:
            columns = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'dedupe_keys' ORDER BY ordinal_position"
            ).fetchall()
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
                " AND table_name LIKE 'dedupe_keys%%'"
            ).fetchone()
    assert columns == [
        ("key", "bytea"), ("digest", "bytea"), ("token", "uuid"), ("confirmed", "boolean"), ("at_us", "bigint"),
        ("erased", "boolean"),
    ]  # fmt: skip
    assert tables == (1,)  # the plaintext table of the older schema is gone


# The plaintext store of an older version: what it held, as (namespace, source, id, digest,
# confirmed, at_us relative to T0), before the conversion.
TOKEN = uuid.uuid4()
D1, D3 = b"payload-digest-1", b"payload-digest-3"
PLAIN = [
    ("default", "src", "confirmed", b"d1", True, -10),
    ("default", "src", "pending-live", b"d1", False, +10),  # a live lease: a sink may still confirm it
    ("default", "src", "pending-lapsed", b"d1", False, -10),
    ("default", "src", "old", b"d1", True, -WINDOW_US - 10),  # left the window, not pruned yet
    ("other", "src", "confirmed", b"d2", True, -10),
    ("default", "src", "resent-after-erasure", D3, True, -5),  # claimed once its erased key left the window
]
ERASED = [  # the 16-byte digests of events: an older erasure kept erased_digest of them
    ("default", "src", "erased", D1, True, -10),
    ("default", "src", "resent-after-erasure", D3, True, -WINDOW_US - 20),  # left the window
]
WORDS = [b"default", b"src", b"payload", b"confirmed", b"pending", b"lapsed", b"erased", b"resent", b"other"]


def expected_after(store: Any) -> None:
    """The answers the converted store must give: those the older store gave."""
    assert store.claim([key("confirmed"), key("confirmed", b"dx")]).verdicts == [DUPLICATE, CONFLICT]
    assert store.claim([key("confirmed", b"d2", namespace="other")]).verdicts == [DUPLICATE]
    assert store.claim([key("pending-live")]).verdicts == [BUSY]
    assert store.confirm(TOKEN.hex, [key("pending-live")]) == [True]
    assert store.claim([key("pending-live")]).verdicts == [DUPLICATE]  # the sink confirmed it under its token
    assert store.claim([key("erased", D1), key("erased", b"dx")]).verdicts == [DUPLICATE, CONFLICT]
    assert store.confirmed_at("default", "src", "erased") is None  # an erased key: no accepted event
    assert store.claim([key("resent-after-erasure", D3)]).verdicts == [DUPLICATE]  # the later row holds
    assert store.confirmed_at("default", "src", "resent-after-erasure") == T0 - 5
    assert store.confirmed_at("default", "src", "confirmed") == T0 - 10
    assert store.claim([key("pending-lapsed"), key("old")]).verdicts == [CLAIMED, CLAIMED]


def plain_rows(secret: bytes) -> Iterator[tuple[str, str, str, bytes, bool, int]]:
    for ns, src, id_, digest, confirmed, at in PLAIN:
        yield ns, src, id_, digest, confirmed, T0 + at
    for ns, src, id_, digest, confirmed, at in ERASED:
        yield ns, "", erased_id(secret, ns, src, id_), erased_digest(secret, digest), confirmed, T0 + at


def test_postgres_migration_18_converts_a_plaintext_store_keeping_every_outcome(clock: FixedClock) -> None:
    with fresh_schema(server()) as dsn:
        with psycopg.connect(dsn) as conn:  # the schema of the older version (migrations 1-17)
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            for version, name, sql in MIGRATIONS[:17]:
                assert isinstance(sql, str)
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))
            secret = uuid.uuid4().bytes + uuid.uuid4().bytes
            conn.execute("INSERT INTO meta VALUES ('erasure_key', %s)", (secret.hex(),))
            for ns, src, id_, digest, confirmed, at in plain_rows(secret):
                conn.execute(
                    "INSERT INTO dedupe_keys VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (ns, src, id_, digest, TOKEN, confirmed, at),
                )
        db = PgDatabase(dsn, max_size=2)  # applies migration 18
        try:
            catalog = PgErasureCatalog(db, clock.now_us)
            assert catalog.secret() == secret  # the secret of the store, kept
            store = PgDedupe(db, clock.now_us, lease_us=LEASE_US, window_us=WINDOW_US, secret=catalog.secret)
            dump = pg_dump(store)
            assert len(dump) == len(PLAIN) + len(ERASED) - 1  # an erased key and its later claim: one row
            assert not [row for row in dump for word in WORDS if word in row]
            with db.tx() as conn:
                kept = {bytes(d) for (d,) in conn.execute("SELECT digest FROM dedupe_keys").fetchall()}
            assert not kept & {b"d1", b"d2", D1, D3}  # every digest keyed
            expected_after(store)
        finally:
            db.close()


def test_redis_conversion_keeps_every_outcome_and_a_node_refuses_the_plaintext_store_before(
    clock: FixedClock,
) -> None:
    with redis_prefix() as (client, prefix):
        secret = uuid.uuid4().bytes
        for ns, src, id_, digest, confirmed, at in plain_rows(secret):  # named as an older version named them
            name = f"{prefix}dd:{len(ns)}:{ns}{len(src)}:{src}{id_}"
            client.hset(name, mapping={"s": "c" if confirmed else "p", "t": TOKEN.hex, "d": digest, "a": at})
            client.pexpire(name, 3_600_000)
        store = RedisDedupe(
            client, clock.now_us, lease_us=LEASE_US, window_us=WINDOW_US, prefix=prefix, secret=lambda: secret
        )
        with pytest.raises(ConfigError, match="stop every API node and sink worker of the older version"):
            store.check_format()
        assert upgrade(client, prefix, secret) == len(PLAIN) + len(ERASED)
        store.check_format()  # converted: a node starts
        names = list(client.scan_iter(match=prefix + "*"))
        assert not [n for n in names if b":dd:" in n]
        assert len([n for n in names if b":dk:" in n]) == len(PLAIN) + len(ERASED) - 1
        assert all(client.pttl(n) > 0 for n in names if b":dk:" in n)  # the TTLs carried over
        dump = redis_dump(store)
        assert not [row for row in dump for word in WORDS if word in row]
        digests = {client.hget(n, "d") for n in names if b":dk:" in n}
        assert not digests & {b"d1", b"d2", D1, D3}  # every digest keyed
        expected_after(store)
        assert upgrade(client, prefix, secret) == 0  # again: nothing left to convert


def test_a_fresh_redis_store_is_marked_keyed_at_once(clock: FixedClock) -> None:
    with redis_prefix() as (client, prefix):
        store = RedisDedupe(client, clock.now_us, lease_us=LEASE_US, prefix=prefix, secret=lambda: b"s" * 32)
        store.check_format()
        assert client.get(prefix + "dd-format") == b"keyed"
        client.hset(f"{prefix}dd:7:default3:srcx", mapping={"s": "c"})  # an older node still running
        store.check_format()  # marked: not scanned again at every start (docs: stop older nodes first)


def test_postgres_migration_18_waits_for_older_nodes_claims_and_fences_their_next_ones(clock: FixedClock) -> None:
    """A rolling upgrade: a claim an older node has in flight when the migration starts is
    waited for and copied (a sink of the new version confirms its event under its token); an
    older node's claim issued while the migration runs waits for it, then fails (nothing of it
    is written: its event is answered a retryable error, never counted)."""
    with fresh_schema(server()) as dsn:
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            for version, name, sql in MIGRATIONS[:17]:
                assert isinstance(sql, str)
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))
        old_claim = (
            "INSERT INTO dedupe_keys (namespace, source, id, digest, token, confirmed, at_us)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s)"
        )
        in_flight = psycopg.connect(dsn)  # an older node's claim, not committed yet
        in_flight.execute(old_claim, ("default", "src", "in-flight", b"d1", TOKEN, False, T0 + LEASE_US))
        opened: list[Any] = []
        migrating = threading.Thread(target=lambda: opened.append(PgDatabase(dsn, max_size=2)))
        migrating.start()
        wait_for_lock(dsn, "LOCK TABLE dedupe_keys")
        late: list[BaseException | None] = []

        def claim_late() -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute(old_claim, ("default", "src", "late", b"d1", uuid.uuid4(), False, T0 + LEASE_US))
                late.append(None)
            except psycopg.Error as exc:
                late.append(exc)

        later = threading.Thread(target=claim_late)
        later.start()
        wait_for_lock(dsn, "INSERT INTO dedupe_keys (namespace")
        in_flight.commit()
        in_flight.close()
        migrating.join(60)
        later.join(60)
        db = opened[0]
        try:
            assert len(late) == 1 and isinstance(late[0], psycopg.Error), late  # fenced: the old claim failed
            catalog = PgErasureCatalog(db, clock.now_us)
            store = PgDedupe(db, clock.now_us, lease_us=LEASE_US, window_us=WINDOW_US, secret=catalog.secret)
            assert store.claim([key("in-flight"), key("late")]).verdicts == [BUSY, CLAIMED]
            assert store.confirm(TOKEN.hex, [key("in-flight")]) == [True]  # the sink counts it once
            assert store.claim([key("in-flight")]).verdicts == [DUPLICATE]
        finally:
            db.close()


def wait_for_lock(dsn: str, query: str) -> None:
    """Until a session running ``query`` (its start) waits for a lock."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as watch:
        while not watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            (query + "%",),
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, f"no session waits for a lock in {query!r}"
            time.sleep(0.02)
