"""The erasure chain in SQLite (``domain.integrity.erasures``): one link per writer task of an
erasure that rewrote ledger entries.

``erasure_chain`` holds each link's place, erasure id and hash; ``ledger_erased.link`` says
which link recorded an entry's erased form; ``meta.erasure_head`` (``pos:hex``) is rewritten
with every link. A link is written by :func:`append_link` in the transaction that rewrites its
entries, so the two commit together or not at all.

Stores whose erasures were made before the erasure chain gain it at their first open
(:func:`migrate`): the erasures already there become links 1..n in the order of their ids,
and ``meta.erasure_anchor`` (``pos:time_us``) records how far and when: those erased forms are
proven unchanged since then only. As for the ledger's chain (``adapters.sqlite.chain``), nothing
relinks once the anchor exists, nor when it is missing from a store that holds a link, a
recorded erasure head or an entry assigned to a link: removing the anchor never turns an edited
erased entry into a matching one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from meterline.adapters.sqlite.hand_edited import as_blob, as_int
from meterline.domain.integrity.chain import GENESIS, Head
from meterline.domain.integrity.erasures import ErasureChain, ErasureLink, erasure_link

HEAD_KEY = "erasure_head"
ANCHOR_KEY = "erasure_anchor"


def append_link(conn: sqlite3.Connection, erasure: int, entries: Iterable[tuple[int, bytes]]) -> int:
    """Link the entries (seq, erased content digest) one erasure task just recorded in
    ``ledger_erased``; returns the link's place (0: no entries, nothing linked)."""
    listed = list(entries)
    if not listed:
        return 0
    last = conn.execute("SELECT pos, hash FROM erasure_chain ORDER BY pos DESC LIMIT 1").fetchone()
    pos, prev = (0, GENESIS) if last is None else (int(last[0]), bytes(last[1]))
    _write(conn, pos + 1, prev, erasure, listed)
    return pos + 1


def migrate(conn: sqlite3.Connection, now_us: int) -> None:
    """Link the erasures of a store from before the erasure chain, once (see the module doc)."""
    if _meta(conn, ANCHOR_KEY) is not None or _has_links(conn):
        return
    pos, prev = 0, GENESIS
    rows = conn.execute("SELECT erasure, seq, content FROM ledger_erased ORDER BY erasure, seq").fetchall()
    groups: dict[int, list[tuple[int, bytes]]] = {}
    for erasure, seq, content in rows:
        groups.setdefault(int(erasure), []).append((int(seq), bytes(content)))
    for erasure, entries in groups.items():
        pos += 1
        prev = _write(conn, pos, prev, erasure, entries)
    conn.execute("INSERT INTO meta VALUES (?, ?)", (ANCHOR_KEY, f"{pos}:{now_us}"))


def _has_links(conn: sqlite3.Connection) -> bool:
    if _meta(conn, HEAD_KEY) is not None:
        return True
    found = "SELECT 1 FROM erasure_chain UNION ALL SELECT 1 FROM ledger_erased WHERE link IS NOT NULL LIMIT 1"
    return conn.execute(found).fetchone() is not None


def _write(conn: sqlite3.Connection, pos: int, prev: bytes, erasure: int, entries: list[tuple[int, bytes]]) -> bytes:
    hash_ = erasure_link(prev, pos, erasure, entries)
    conn.execute("INSERT INTO erasure_chain (pos, erasure, hash) VALUES (?,?,?)", (pos, erasure, hash_))
    conn.executemany("UPDATE ledger_erased SET link = ? WHERE seq = ?", [(pos, seq) for seq, _ in entries])
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (HEAD_KEY, f"{pos}:{hash_.hex()}"))
    return hash_


def read_chain(conn: sqlite3.Connection) -> ErasureChain:
    """The stored links with their entries, the recorded head and the anchor (``verify``)."""
    entries: dict[int, list[tuple[int, bytes]]] = {}
    unlinked: list[int] = []
    for seq, link, content in conn.execute("SELECT seq, link, content FROM ledger_erased ORDER BY seq"):
        if isinstance(link, int):
            entries.setdefault(link, []).append((as_int(seq), as_blob(content)))
        else:
            unlinked.append(as_int(seq))
    links: list[ErasureLink] = []
    claimed: set[int] = set()
    for pos, erasure, hash_ in conn.execute("SELECT pos, erasure, hash FROM erasure_chain ORDER BY pos"):
        claimed.add(pos)
        links.append(ErasureLink(as_int(pos), as_int(erasure), as_blob(hash_), tuple(entries.get(pos, ()))))
    for pos in sorted(set(entries) - claimed):
        unlinked.extend(seq for seq, _ in entries[pos])
    return ErasureChain(tuple(links), _head(conn), _anchor(conn), tuple(sorted(unlinked)))


def _head(conn: sqlite3.Connection) -> Head | None:
    value = _meta(conn, HEAD_KEY)
    if value is None:
        return None
    pos, _, hex_ = value.partition(":")
    try:
        return Head(int(pos), bytes.fromhex(hex_))
    except ValueError:
        return Head(-1, b"")  # edited by hand: matches no chain


def _anchor(conn: sqlite3.Connection) -> tuple[int, int] | None:
    value = _meta(conn, ANCHOR_KEY)
    if value is None:
        return None
    pos, _, at = value.partition(":")
    return (int(pos), int(at)) if pos.isdigit() and at.isdigit() else None


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])
