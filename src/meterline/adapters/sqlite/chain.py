"""The hash chain in SQLite: the head the ack path links to, the head recorded with each
commit, the migration of stores from before the chain, and the entries as ``verify`` reads them.

Each ``events`` row carries ``chain``, its link (``domain.integrity.chain``), written by the
ack path (``ingest.Appender._accept``) in the transaction that appends it. ``meta.chain_head``
(``seq:hex``) is rewritten in every transaction that appended, so removing entries from the end
of the ledger is seen too.

Stores from before the chain gain it at their first open (:func:`migrate_step`): the entries
already there are linked in sequence order from the genesis hash, in writer tasks of
``MIGRATE_CHUNK`` rows, resumable after a crash (``meta.chain_migrating``); ``meta.chain_anchor``
(``seq:time_us``) then records how far the migration went and when. The chain proves those
entries unchanged since the migration, not before it. Once the anchor exists, nothing ever
recomputes a stored hash; nor does anything when the anchor is missing from a store that holds
hashes or a recorded head (it was removed by hand: re-linking would turn an edited entry into a
matching one), so ``verify`` then checks the stored hashes as they are.

``meta.chain_format2_since`` is the store's switch position (``domain.integrity.chain.ChainFormat``):
the seq of the first entry hashed with content format 2, which covers a correction's audit
record (``events.correction``: action, original, reason, actor). It is written once, when a
version with format 2 first opens the store (:func:`ensure_format`: the next seq), so the
entries already there keep verifying with format 1 and nothing is rewritten. Moving it breaks
the links of the entries between the old and the new position (see the domain module).
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from meterline.adapters.sqlite.audit import first_audit_break
from meterline.adapters.sqlite.erasure_chain import read_chain
from meterline.adapters.sqlite.hand_edited import as_blob, as_int
from meterline.adapters.sqlite.schema import connect
from meterline.domain.integrity.chain import GENESIS, Break, ChainFormat, ChainRow, Head, link
from meterline.domain.integrity.erasures import ErasureChain

HEAD_KEY = "chain_head"
ANCHOR_KEY = "chain_anchor"
MIGRATING_KEY = "chain_migrating"
LEDGER_ID_KEY = "ledger_id"
FORMAT_KEY = "chain_format2_since"
MIGRATE_CHUNK = 50_000

ENTRY_ROWS = (
    "SELECT seq, namespace, source, id, type, subject, time_us, received_us, digest, raw, chain, correction"
    " FROM events"
    " WHERE seq > ? ORDER BY seq LIMIT ?"
)
FIRST = -(2**63)
"""Below every seq SQLite can store: a walk from the start reads rows at seq 0 or below too
(added by hand: no append makes them), so that ``verify`` names them instead of skipping them."""


def last_entry(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(seq, chain hash) of the last ledger entry; (0, GENESIS) for an empty ledger."""
    row = conn.execute("SELECT seq, chain FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return 0, GENESIS
    return int(row[0]), bytes(row[1] or b"")


def record_head(conn: sqlite3.Connection) -> None:
    """Write the last entry's (seq, hash) to ``meta`` (in the transaction that appended it)."""
    conn.execute(
        "INSERT OR REPLACE INTO meta SELECT ?, seq || ':' || lower(hex(chain)) FROM events ORDER BY seq DESC LIMIT 1",
        (HEAD_KEY,),
    )


def ensure_ledger_id(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (LEDGER_ID_KEY, str(uuid.uuid4())))


def ensure_format(conn: sqlite3.Connection) -> None:
    """Record the switch to content format 2 at the next seq, once (in the writer, before any
    entry is appended by this version)."""
    conn.execute(
        "INSERT OR IGNORE INTO meta SELECT ?, max(coalesce((SELECT max(seq) FROM events), 0),"
        " coalesce((SELECT max(seq) FROM ledger_pruned), 0)) + 1",
        (FORMAT_KEY,),
    )


def read_format(conn: sqlite3.Connection) -> ChainFormat:
    """The store's content formats (``ChainFormat``); a value that is not a seq (edited by hand)
    is a position no entry has, so every entry it misplaces fails its link."""
    value = _meta(conn, FORMAT_KEY)
    if value is None:
        return ChainFormat(None)
    return ChainFormat(int(value) if value.isdigit() else -1)


def migrate_step(conn: sqlite3.Connection, now_us: int) -> bool:
    """One writer task of the migration; True while more remains. A store with an anchor is
    never touched."""
    if _meta(conn, ANCHOR_KEY) is not None:
        return False
    progress = _meta(conn, MIGRATING_KEY)
    seq, prev = (0, GENESIS) if progress is None else _parse_head(progress)
    if _has_chain(conn, seq, progress is None):
        return False  # the anchor or the progress marker was edited: never recompute a stored hash
    rows = conn.execute(ENTRY_ROWS, (seq, MIGRATE_CHUNK)).fetchall()
    updates = []
    fmt = read_format(conn)
    for row in rows:
        prev = link(prev, row[0], entry_content(row, fmt))
        updates.append((prev, row[0]))
        seq = row[0]
    conn.executemany("UPDATE events SET chain = ? WHERE seq = ?", updates)
    if len(rows) == MIGRATE_CHUNK:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MIGRATING_KEY, f"{seq}:{prev.hex()}"))
        return True
    conn.execute("DELETE FROM meta WHERE key = ?", (MIGRATING_KEY,))
    conn.execute("INSERT INTO meta VALUES (?, ?)", (ANCHOR_KEY, f"{seq}:{now_us}"))
    if seq:
        record_head(conn)
    return False


def _has_chain(conn: sqlite3.Connection, after: int, fresh: bool) -> bool:
    """Whether the store already holds chain data the migration would overwrite: a hash of an
    entry it would link, or (starting afresh) a recorded head or a pruned or erased marker. A
    store from before the chain has none of them."""
    if conn.execute("SELECT 1 FROM events WHERE seq > ? AND chain IS NOT NULL LIMIT 1", (after,)).fetchone():
        return True
    if not fresh:
        return False
    markers = "SELECT 1 FROM ledger_pruned UNION ALL SELECT 1 FROM ledger_erased LIMIT 1"
    return _meta(conn, HEAD_KEY) is not None or conn.execute(markers).fetchone() is not None


class SqliteChain:
    """``ports.integrity.ChainSource`` over one read transaction: every read sees the same
    snapshot of the store, however long the walk takes and whatever commits meanwhile."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path, readonly=True)
        self._conn.execute("BEGIN")
        self._conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # the snapshot starts here
        self._format = read_format(self._conn)

    def ledger_id(self) -> str:
        return _meta(self._conn, LEDGER_ID_KEY) or ""

    def recorded_head(self) -> Head | None:
        value = _meta(self._conn, HEAD_KEY)
        if value is None:
            return None
        seq, hash_ = _parse_head(value)
        return Head(seq, hash_)

    def anchor(self) -> tuple[int, int] | None:
        value = _meta(self._conn, ANCHOR_KEY)
        if value is None:
            return None
        seq, at = value.split(":")
        return int(seq), int(at)

    def rows(self, after: int, limit: int) -> list[ChainRow]:
        """Entries and pruned markers after ``after`` (from the start: also any at seq 0 or
        below), merged in sequence order."""
        after = after if after > 0 else FIRST
        out = self._entries(after, limit) + self._pruned(after, limit)
        out.sort(key=lambda row: row.seq)
        return out[:limit]

    def _pruned(self, after: int, limit: int) -> list[ChainRow]:
        """Entries removed by retention (``ledger_pruned``): their kept digest and stored hash."""
        rows = self._conn.execute(
            "SELECT seq, kept, chain FROM ledger_pruned WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [
            ChainRow(seq, as_blob(chain), None, kept=as_blob(kept), label="pruned entry") for seq, kept, chain in rows
        ]

    def _entries(self, after: int, limit: int) -> list[ChainRow]:
        out = []
        rows = self._conn.execute(ENTRY_ROWS, (after, limit)).fetchall()
        erased = self._erased(after, rows[-1][0]) if rows else {}
        for row in rows:
            seq, ns, src, id_, chain = row[0], row[1], row[2], row[3], row[10]
            content = entry_content(row, self._format)
            label = f"event {id_!r} from source {src!r} in namespace {ns!r}"
            kept, after_erasure = erased.get(seq, (None, None))
            if kept is not None:
                label = f"erased event in namespace {ns!r}"
            stored = None if chain is None else as_blob(chain)
            out.append(ChainRow(seq, stored, content, kept=kept, erased_content=after_erasure, label=label))
        return out

    def _erased(self, after: int, last: int) -> dict[int, tuple[bytes, bytes]]:
        """(kept, erased content) of the entries an erasure rewrote in ``(after, last]``."""
        rows = self._conn.execute(
            "SELECT seq, kept, content FROM ledger_erased WHERE seq > ? AND seq <= ?", (after, last)
        )
        return {seq: (as_blob(kept), as_blob(content)) for seq, kept, content in rows}

    def erasure_chain(self) -> ErasureChain:
        return read_chain(self._conn)

    def audit_trail(self) -> Break | None:
        """``corrections`` against the entries it describes (``adapters.sqlite.audit``)."""
        return first_audit_break(self._conn, self._format)

    def uncovered_amends(self) -> tuple[int, int]:
        """(the first entry of content format 2, how many amends before it): those amends'
        reason and actor are in their correction record only."""
        since = self._format.since
        if since is None:
            since = int(self._conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchone()[0])
        row = self._conn.execute("SELECT count(*) FROM corrections WHERE action = 'amend' AND seq < ?", (since,))
        return since, int(row.fetchone()[0])

    def close(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


def entry_content(row: tuple[object, ...], fmt: ChainFormat) -> bytes:
    """The content digest of an ``events`` row read with ``ENTRY_ROWS``, in its format."""
    ns, src, id_, type_, subject, time_us, received_us = row[1:8]
    return fmt.content(
        as_int(row[0]),
        str(ns),
        str(src),
        str(id_),
        str(type_),
        str(subject),
        as_int(time_us),
        as_int(received_us),
        as_blob(row[8]),
        as_blob(row[9]),
        None if row[11] is None else as_blob(row[11]),
    )


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _parse_head(value: str) -> tuple[int, bytes]:
    seq, hex_ = value.split(":")
    return int(seq), bytes.fromhex(hex_)
