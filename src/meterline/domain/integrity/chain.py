"""The ledger's hash chain: pure functions, no storage.

Every ledger entry ``seq`` carries ``hash(seq) = SHA-256(hash(seq - 1) || seq || content)``,
with ``hash(0) = GENESIS`` (32 zero bytes) and ``content`` the SHA-256 of the entry as stored.
The content has two formats (:class:`ChainFormat`): entries before a store's switch position
``since`` keep format 1 (:func:`content_digest`: identity, type, subject, times, payload digest
and the raw bytes); entries from ``since`` on use format 2 (:func:`content_digest_v2`: the same
fields, a correction's audit record — action, original, reason, actor — and ``since`` itself,
under a tag no format-1 preimage starts with).

Why the switch position cannot be moved to check an edited entry with the older formula: every
format-2 content differs from its format-1 content (the tag) and covers ``since``. Moving the
recorded position later makes the format-2 entries before the new position recompute as format
1, which no stored hash covers; moving it earlier makes format-1 entries recompute as format 2;
any other value changes the ``since`` inside every format-2 content. Each breaks the link of the
first entry between the old and the new position (or of every format-2 entry), so the switch is
held by the stored hashes themselves, not by the marker.
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
ALGORITHM = "sha256-chain/2"
"""Names the rule above (content digests and link), written into exported heads."""
ALGORITHMS = ("sha256-chain/1", ALGORITHM)
"""Rules an exported head may name: a head's hash is the same whichever format the entries up
to it used, so a head exported before the switch (``/1``) still verifies after it."""

_fields = msgspec.json.Encoder()
_lengths = struct.Struct(">IH")
_lengths2 = struct.Struct(">IHI")
_TAG2 = b"meterline-chain-entry/2\n"


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


def content_digest_v2(
    since: int,
    namespace: str,
    source: str,
    id_: str,
    type_: str,
    subject: str,
    time_us: int,
    received_us: int,
    digest: bytes,
    raw: bytes,
    correction: bytes,
) -> bytes:
    """Format 2: the tag, ``since`` (8 bytes), the fields of format 1, the correction's chained
    record (:func:`correction_record`; empty for an ordinary event), each length-delimited."""
    head = _fields.encode((namespace, source, id_, type_, subject, time_us, received_us))
    lengths = _lengths2.pack(len(head), len(digest), len(correction))
    data = _TAG2 + since.to_bytes(8, "big") + lengths + head + digest + correction + raw
    return hashlib.sha256(data).digest()


def correction_record(action: str, original: int, reason: str, actor: str) -> bytes:
    """A correction's audit record as format 2 chains it (and the ledger stores it beside the
    entry): a JSON array ``[action, original, reason, actor]``."""
    return _fields.encode((action, original, reason, actor))


_record = msgspec.json.Decoder(tuple[str, int, str, str])


def parse_correction_record(value: bytes) -> tuple[str, int, str, str] | None:
    """A stored :func:`correction_record` back as its fields; None when it is not one."""
    try:
        return _record.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass(frozen=True, slots=True)
class ChainFormat:
    """Which content formula an entry was hashed with: format 2 from ``since`` on (None: the
    store has no switch position yet, every entry is format 1)."""

    since: int | None = None

    def covers_corrections(self, seq: int) -> bool:
        """Whether entry ``seq`` is format 2 (its correction record is in its content)."""
        return self.since is not None and seq >= self.since

    def content(
        self,
        seq: int,
        namespace: str,
        source: str,
        id_: str,
        type_: str,
        subject: str,
        time_us: int,
        received_us: int,
        digest: bytes,
        raw: bytes,
        correction: bytes | None,
    ) -> bytes:
        """The content digest of entry ``seq`` in the format it was (or is to be) hashed with."""
        fields = (namespace, source, id_, type_, subject, time_us, received_us, digest, raw)
        if self.since is None or seq < self.since:
            return content_digest(*fields)
        return content_digest_v2(self.since, *fields, correction or b"")


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
        if row.seq <= state.seq:
            return _misplaced(row, state)
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


def _misplaced(row: ChainRow, state: Walk) -> Break:
    """A row at a position the walk has passed: before entry 1 (no append makes one), or a
    second row at one position (an entry beside its own pruned marker)."""
    if row.seq < 1:
        why = "before the ledger's first entry (1): it was not appended by meterline"
    else:
        why = "stored twice"
    return Break(row.seq, "added", f"entry {row.seq}{_named(row)} is {why}")


def _content(row: ChainRow) -> Break | None:
    if row.content is None and row.kept is None:
        return Break(row.seq, "missing", f"entry {row.seq} is missing: neither the entry nor its kept digest remain")
    if row.erased_content is not None and row.content != row.erased_content:
        return Break(row.seq, "changed", f"entry {row.seq}{_named(row)} changed after its personal data was erased")
    return None


def _named(row: ChainRow) -> str:
    return f" ({row.label})" if row.label else ""
