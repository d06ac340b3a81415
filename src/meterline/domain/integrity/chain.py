"""The ledger's hash chain: pure functions, no storage.

Every ledger entry ``seq`` carries ``hash(seq) = SHA-256(hash(seq - 1) || seq || content)``,
with ``hash(0) = GENESIS`` (32 zero bytes) and ``content`` the SHA-256 of the entry as stored
(:func:`content_digest`: identity, type, subject, times, payload digest and the raw bytes).
Changing an entry's content changes its content digest; moving it changes the ``seq`` its
link covers; removing it leaves a gap; each breaks the link at that entry. Because each hash
covers every entry before it, one exported head ``(seq, hash)`` proves the whole prefix
``1..seq`` unchanged.

An entry whose raw event was removed later (retention) or whose personal data was erased keeps
the content digest it had when it was appended (``kept``), so the chain still links through
it; see ``docs/integrity.md``.

:func:`walk` checks a run of entries in sequence order and returns the first break as data.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

GENESIS = bytes(32)
"""The hash "before" entry 1."""
ALGORITHM = "sha256-chain/1"
"""Names the rule above (content digest and link), written into exported heads."""

_fields = msgspec.json.Encoder()
_lengths = struct.Struct(">IH")


def content_digest(
    namespace: str,
    source: str,
    id_: str,
    type_: str,
    subject: str,
    time_us: int,
    received_us: int,
    digest: bytes,
    raw: bytes,
) -> bytes:
    """SHA-256 of one entry as the ledger stores it: its fields as a JSON array, the payload
    digest and the raw event, each length-delimited (the raw bytes come last)."""
    head = _fields.encode((namespace, source, id_, type_, subject, time_us, received_us))
    return hashlib.sha256(_lengths.pack(len(head), len(digest)) + head + digest + raw).digest()


def link(previous: bytes, seq: int, content: bytes) -> bytes:
    """The hash of entry ``seq``: covers every entry before it (``previous``), its place and
    its content."""
    return hashlib.sha256(previous + seq.to_bytes(8, "big") + content).digest()


class ChainRow(NamedTuple):
    """One ledger position as a store holds it now, for :func:`walk`.

    ``stored``: the hash stored with the entry (None: none was written). ``content``: the
    content digest recomputed from the entry's current fields (None: the raw entry is gone,
    pruned by retention). ``kept``: the content digest kept when the entry was pruned or
    erased (the chain links that one). ``erased_content``: for an erased entry, the content
    digest of its erased form, so an edit after the erasure is still seen. ``label`` names
    the entry in a report."""

    seq: int
    stored: bytes | None
    content: bytes | None
    kept: bytes | None = None
    erased_content: bytes | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class Head:
    """A chain head: the hash of entry ``seq`` (``GENESIS`` at seq 0)."""

    seq: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Break:
    """The first entry where the chain does not hold, and how."""

    seq: int
    kind: str
    """``changed`` (content or place), ``missing`` (absent, or removed from the end),
    ``unchained`` (no hash stored), ``added`` (after the last recorded head), ``head``
    (differs from an exported head)."""
    message: str


@dataclass(slots=True)
class Walk:
    """Walk state across chunks: the last entry checked and its hash."""

    seq: int = 0
    hash: bytes = GENESIS
    pruned: int = 0
    erased: int = 0


def walk(state: Walk, rows: Iterable[ChainRow]) -> Break | None:
    """Check ``rows`` (the entries after ``state.seq``, in sequence order) and move ``state``
    past them; the first break stops the walk."""
    for row in rows:
        if row.seq != state.seq + 1:
            return Break(state.seq + 1, "missing", f"entry {state.seq + 1} is missing from the ledger")
        if row.stored is None:
            return Break(row.seq, "unchained", f"entry {row.seq}{_named(row)} has no chain hash")
        problem = _content(row)
        if problem is not None:
            return problem
        linked = row.kept if row.kept is not None else row.content
        assert linked is not None
        expected = link(state.hash, row.seq, linked)
        if expected != row.stored:
            return Break(
                row.seq,
                "changed",
                f"entry {row.seq}{_named(row)} does not match the chain:"
                " its content or its place in the ledger changed",
            )
        state.seq, state.hash = row.seq, expected
        state.pruned += row.content is None
        state.erased += row.erased_content is not None
    return None


def _content(row: ChainRow) -> Break | None:
    if row.content is None and row.kept is None:
        return Break(row.seq, "missing", f"entry {row.seq} is missing: neither the entry nor its kept digest remain")
    if row.erased_content is not None and row.content != row.erased_content:
        return Break(row.seq, "changed", f"entry {row.seq}{_named(row)} changed after its personal data was erased")
    return None


def _named(row: ChainRow) -> str:
    return f" ({row.label})" if row.label else ""
