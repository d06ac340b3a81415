"""The hash chain of scale mode in ClickHouse: the sink workers' links, and the reads
``meterline verify`` walks (``ports.integrity.PartitionChainSource``).

Each applied batch of a partition gets one ``ledger_chain`` row (``domain.integrity.batches``):
its range, the hash of the link before it, its own hash, and its entries' seqs, content
digests (one hex string) and receipt times, and its format (2: the digests cover a correction's
record, ``events.correction``; 1: links written by an earlier version). :class:`ChainLinks` makes it inside
``ClickHouseSink.write``, after the raw events and before the new position is recorded, under
the batch's token
``<stream>:<start>-<end>:chain``: a batch redone after a crash is the same range with the same
entries and the same previous link, so it makes the same row under the same token and
ClickHouse drops it; the partition's next batch links to the link ending where it starts,
whichever worker wrote that one, so a worker taking a partition over continues its chain.

The link before a batch is remembered per partition and read back (the link ending at the
batch's start) when the worker has none in memory. A partition applied before the chain
existed gets a first link that starts at its position with the genesis hash before it (an
*anchor*: what was applied before it is not covered). ``ledger_meta`` records when the first
worker with the chain started (``chain_since_us``), so ``verify`` can tell such entries from
linked ones whose links were removed: an entry before a partition's first link must have been
received before then.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.kept import raw_union
from meterline.adapters.clickhouse.schema import CHAIN
from meterline.adapters.clickhouse.usage import LIVE
from meterline.domain.integrity.batches import FORMAT, Link, StoredEntry, batch_link, entry_digest, entry_digest_v2
from meterline.domain.integrity.chain import GENESIS
from meterline.domain.integrity.journal import CorrectionRow
from meterline.domain.meters.fold import LedgerEntry

ENTRY_COLUMNS = "seq, namespace, source, id, type, subject, time_us, received_us, raw, corrects, correction"
LEDGER_ID = "ledger_id"
CHAIN_SINCE = "chain_since_us"
"""When the first worker with the chain started: a partition's rows received before it may
be in no link (applied before the chain existed); rows received after it must be linked."""


class ChainLinks:
    """Writes each batch's link; one per sink store (the worker holds each partition alone)."""

    def __init__(self, conn: Connection, now_us: Callable[[], int]) -> None:
        self._conn = conn
        self._last: dict[str, tuple[int, bytes]] = {}
        ensure_ledger_id(conn)
        _ensure_meta(conn, CHAIN_SINCE, str(now_us()))

    def link(self, stream: str, start: int, end: int, entries: Sequence[LedgerEntry], token: str) -> None:
        """Store the link of the batch ``(start, end]`` of ``stream`` holding ``entries``."""
        prev = self._prev(stream, start)
        seqs = [e.seq for e in entries]
        digests = [
            entry_digest_v2(
                e.namespace, e.source, e.type, e.subject, e.time_us, e.received_us, e.raw, e.correction, e.record
            )
            for e in entries
        ]
        received = [e.received_us for e in entries]
        hash_ = batch_link(prev, stream, start, end, seqs, received, digests, FORMAT)
        row = [stream, start, end, prev.hex(), hash_.hex(), seqs, b"".join(digests).hex(), received, FORMAT]
        self._conn.insert("ledger_chain", CHAIN, [row], token)
        self._last[stream] = (end, hash_)

    def _prev(self, stream: str, start: int) -> bytes:
        last = self._last.get(stream)
        if last is not None and last[0] == start:
            return last[1]
        rows = self._conn.rows(
            "SELECT hash FROM ledger_chain WHERE stream = {s:String} AND end = {e:UInt64} ORDER BY start LIMIT 1",
            {"s": stream, "e": start},
        )
        return bytes.fromhex(rows[0][0]) if rows else GENESIS


def ensure_ledger_id(conn: Connection) -> str:
    """The ledger's random id, made once."""
    return _ensure_meta(conn, LEDGER_ID, str(uuid.uuid4()))


def _ensure_meta(conn: Connection, key: str, value: str) -> str:
    """``key``'s value in ``ledger_meta``, ``value`` when it has none yet (two processes racing
    insert under one token: one row stays)."""
    found = _meta(conn, key)
    if found is not None:
        return found
    meta = [("key", "String"), ("value", "String"), ("at_us", "Int64")]
    conn.insert("ledger_meta", meta, [[key, value, 0]], f"ledger_meta:{key}")
    return _meta(conn, key) or value


def _meta(conn: Connection, key: str) -> str | None:
    found = conn.rows("SELECT value FROM ledger_meta FINAL WHERE key = {k:String}", {"k": key})
    return str(found[0][0]) if found else None


class ClickHouseChain:
    """What ``verify`` reads of scale mode's chain (``ports.integrity.PartitionChainSource``).
    ClickHouse has no snapshot across queries: the walk reads each partition's applied
    position first and then nothing past it, so batches the workers apply meanwhile are not
    half seen."""

    def __init__(self, conn: Connection, retention_seconds: int | None, now_us: int) -> None:
        self._conn = conn
        self._pruned_before = None if retention_seconds is None else now_us - retention_seconds * 1_000_000

    def ledger_id(self) -> str:
        return ensure_ledger_id(self._conn)

    def applied(self) -> dict[str, int]:
        """From ``usage_progress``; a partition with links but no position (its row removed by
        hand) is walked up to its last link."""
        rows = self._conn.rows("SELECT stream, done FROM usage_progress FINAL WHERE stream NOT LIKE 'backfill:%'")
        out = {str(s): int(d) for s, d in rows if s != LIVE}
        for stream, end in self._conn.rows("SELECT stream, max(end) FROM ledger_chain GROUP BY stream"):
            out.setdefault(str(stream), int(end))
        return out

    def links(self, stream: str, after: int, limit: int) -> list[Link]:
        rows = self._conn.rows(
            "SELECT DISTINCT stream, start, end, prev, hash, seqs, digests, received, format FROM ledger_chain"
            " WHERE stream = {s:String} AND start >= {a:UInt64} ORDER BY start LIMIT {n:UInt32} WITH TIES",
            {"s": stream, "a": after, "n": limit},
        )
        return [_link(r) for r in rows]

    def entries(self, stream: str, after: int, end: int, limit: int) -> list[StoredEntry]:
        rows = self._conn.rows(
            f"SELECT {ENTRY_COLUMNS} FROM events WHERE stream = {{s:String}} AND seq > {{a:UInt64}}"
            " AND seq <= {e:UInt64} ORDER BY seq LIMIT {n:UInt32} WITH TIES",
            {"s": stream, "a": after, "e": end, "n": limit},
        )
        erased = self._erased(stream, after, rows[-1][0]) if rows else {}
        return [_entry(stream, r, erased.get(int(r[0]))) for r in rows]

    def erased_gone(self, stream: str, after: int, end: int) -> frozenset[int]:
        return frozenset(s for s, content in self._erased(stream, after, end).items() if content is None)

    def pruned_before_us(self) -> int | None:
        return self._pruned_before

    def chain_since_us(self) -> int | None:
        value = _meta(self._conn, CHAIN_SINCE)
        return None if value is None else int(value)

    def unchained(self, stream: str, upto: int, since_us: int) -> int | None:
        rows = self._conn.rows(
            "SELECT min(seq) FROM events WHERE stream = {s:String} AND seq <= {e:UInt64}"
            " AND received_us >= {t:Int64} HAVING count() > 0",
            {"s": stream, "e": upto, "t": since_us},
        )
        return int(rows[0][0]) if rows else None

    def corrections(self, stream: str, upto: int) -> list[CorrectionRow]:
        rows = self._conn.rows(
            "SELECT DISTINCT seq, namespace, source, id, corrects, correction, raw FROM events"
            " WHERE stream = {s:String} AND corrects > 0 AND seq <= {e:UInt64} ORDER BY seq",
            {"s": stream, "e": upto},
        )
        erased = self._erased(stream, 0, upto)
        return [
            CorrectionRow(
                stream, int(seq), ns, src, id_, int(corrects), _bytes(record), _bytes(raw), int(seq) in erased
            )
            for seq, ns, src, id_, corrects, record, raw in rows
        ]

    def keys(self, stream: str, seqs: list[int]) -> dict[int, tuple[str, str, str]]:
        if not seqs:
            return {}
        where = "stream = {s:String} AND has({q:Array(UInt64)}, seq)"
        rows = self._conn.rows(
            f"SELECT DISTINCT seq, namespace, source, id FROM {raw_union('seq, namespace, source, id', where)}",
            {"s": stream, "q": sorted(set(seqs))},
        )
        return {int(seq): (ns, src, id_) for seq, ns, src, id_ in rows}

    def close(self) -> None:
        self._conn.close()

    def _erased(self, stream: str, after: int, end: int) -> dict[int, bytes | None]:
        rows = self._conn.rows(
            "SELECT seq, content FROM ledger_erased FINAL WHERE stream = {s:String} AND seq > {a:UInt64}"
            " AND seq <= {e:UInt64}",
            {"s": stream, "a": after, "e": end},
        )
        return {int(seq): (bytes.fromhex(c) if c else None) for seq, c in rows}


def stored_digest(row: Sequence[Any]) -> bytes:
    """The format-1 content digest of an ``events`` row read with ``ENTRY_COLUMNS``."""
    _, ns, source, _, type_, subject, time_us, received_us, raw, corrects, _ = row
    return entry_digest(ns, source, type_, subject, time_us, received_us, _bytes(raw), corrects)


def stored_digest_v2(row: Sequence[Any]) -> bytes:
    """The format-2 content digest of an ``events`` row read with ``ENTRY_COLUMNS``."""
    _, ns, source, _, type_, subject, time_us, received_us, raw, corrects, record = row
    return entry_digest_v2(ns, source, type_, subject, time_us, received_us, _bytes(raw), corrects, _bytes(record))


def _entry(stream: str, row: Sequence[Any], erased: bytes | None) -> StoredEntry:
    seq, ns, source, id_ = row[0], row[1], row[2], row[3]
    label = f"event {id_!r} from source {source!r} in namespace {ns!r}"
    if erased is not None:
        label = f"erased event in namespace {ns!r}"
    return StoredEntry(int(seq), stored_digest(row), label, erased, stored_digest_v2(row))


def _link(row: Sequence[Any]) -> Link:
    stream, start, end, prev, hash_, seqs, digests, received, format_ = row
    return Link(
        stream,
        int(start),
        int(end),
        _hex(prev),
        _hex(hash_),
        tuple(int(s) for s in seqs),
        _digests(digests),
        tuple(int(r) for r in received),
        int(format_),
    )


def _digests(value: str) -> tuple[bytes, ...]:
    """The concatenated hex digests of a link, 32 bytes each."""
    raw = _hex(value)
    return tuple(raw[i : i + 32] for i in range(0, len(raw), 32))


def _hex(value: str) -> bytes:
    """A stored hash; one edited into something else is a hash that matches nothing."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        return value.encode()


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
