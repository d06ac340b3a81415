"""The hash chain of a partitioned log (scale mode): one chain per partition, one link per
applied batch. Pure functions, no storage.

A sink batch of partition ``stream`` applies the range ``(start, end]`` of its seqs (offset + 1)
and stores the entries it counted. Its link is::

    hash = SHA-256( prev ‖ len(stream) ‖ stream ‖ start ‖ end ‖ (seq ‖ received ‖ digest) per entry )

with ``prev`` the hash of the link that ends at ``start`` (``GENESIS`` for the partition's
first link), each number 8 bytes big-endian (``len(stream)`` 2), ``received`` the entry's
receipt time (µs; what retention goes by) and ``digest`` its content digest
(:func:`entry_digest`, the embedded ledger's :func:`~.chain.content_digest` of the columns the
raw table stores). The link keeps the entries' seqs and digests, so an entry removed later by
raw-event retention still links (it is *pruned*), and an erased one keeps its original digest.

**Format 2.** A link written by a worker of this version has ``format`` 2: its hash starts
with a tag (:data:`TAG2`), and its entries' digests are :func:`entry_digest_v2`, which also
cover a correction's audit record (action, original, reason, actor: what the journal of
corrections keeps). Links written before keep format 1 and verify as they are. The tag puts a
link's format inside its hash, so flipping the stored format of a link fails that link; and once
a partition has a format-2 link, a later format-1 link is refused (a downgrade), so an edited
amend cannot be checked by the formula that does not cover its reason.

A partition's links are contiguous: each starts where the one before ended. Changing an entry
changes its digest; moving it changes the seq its digest is listed at; removing it leaves a
listed seq without a row; adding one leaves a row at a seq no link lists; removing a link
leaves a gap, or a chain that ends before the partition's applied position. :func:`check_link`
finds the first of these, as data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from meterline.domain.integrity.chain import GENESIS, Break, content_digest, content_digest_v2

ALGORITHM = "sha256-batch-chain/2"
"""Names the rule above, written into exported heads."""
ALGORITHMS = ("sha256-batch-chain/1", ALGORITHM)
"""Rules an exported head may name (a link's hash is the same whatever rule a reader names)."""
FORMAT = 2
"""The link format workers write now."""
TAG2 = b"meterline-chain-link/2\n"


def entry_digest(
    namespace: str,
    source: str,
    type_: str,
    subject: str,
    time_us: int,
    received_us: int,
    raw: bytes,
    corrects: int,
) -> bytes:
    """The content digest of one raw-table entry: the embedded ledger's digest, with the event
    id left to the raw event that holds it and the superseded seq of a correction entry in the
    payload-digest slot (empty for an ordinary event)."""
    marker = corrects.to_bytes(8, "big") if corrects else b""
    return content_digest(namespace, source, "", type_, subject, time_us, received_us, marker, raw)


def entry_digest_v2(
    namespace: str,
    source: str,
    type_: str,
    subject: str,
    time_us: int,
    received_us: int,
    raw: bytes,
    corrects: int,
    record: bytes,
) -> bytes:
    """Format 2 of :func:`entry_digest`: also a correction's chained audit record
    (``chain.correction_record``; empty for an ordinary event)."""
    marker = corrects.to_bytes(8, "big") if corrects else b""
    return content_digest_v2(0, namespace, source, "", type_, subject, time_us, received_us, marker, raw, record)


def batch_link(
    prev: bytes,
    stream: str,
    start: int,
    end: int,
    seqs: Sequence[int],
    received: Sequence[int],
    digests: Sequence[bytes],
    format_: int = 1,
) -> bytes:
    """The hash of the link of ``stream``'s batch ``(start, end]`` holding ``seqs`` (in order),
    received at ``received`` (µs), with content digests ``digests``; format 2 is tagged."""
    name = stream.encode()
    tag = TAG2 if format_ == 2 else b""
    h = hashlib.sha256(
        tag + prev + len(name).to_bytes(2, "big") + name + start.to_bytes(8, "big") + end.to_bytes(8, "big")
    )
    for seq, at, digest in zip(seqs, received, digests, strict=True):
        h.update(seq.to_bytes(8, "big") + at.to_bytes(8, "big", signed=True) + digest)
    return h.digest()


class Link(NamedTuple):
    """One stored link: a batch ``(start, end]`` of ``stream``, its entries and their digests
    (``received``: each entry's receipt time, µs, for retention)."""

    stream: str
    start: int
    end: int
    prev: bytes
    hash: bytes
    seqs: tuple[int, ...]
    digests: tuple[bytes, ...]
    received: tuple[int, ...]
    format: int = 1


class StoredEntry(NamedTuple):
    """One raw-table row as stored now: its seq, its content digest recomputed from its
    columns, and a label naming it (offset and key) in a report. ``erased``: the digest of its
    erased form when an erasure rewrote it (then that one must match, and the link's stays)."""

    seq: int
    content: bytes
    label: str
    erased: bytes | None = None
    content2: bytes | None = None
    """The row's format-2 digest (what a format-2 link lists); ``content`` is its format-1 one."""


@dataclass(slots=True)
class PartitionWalk:
    """Walk state of one partition: the end and hash of the last link checked."""

    stream: str
    end: int = 0
    hash: bytes = GENESIS
    links: int = 0
    entries: int = 0
    pruned: int = 0
    erased: int = 0
    anchor: int = 0
    """The partition's first link starts here: entries before it were applied before the chain."""
    format2: int = 0
    """The partition's first format-2 link starts here (0: none yet)."""


def where(stream: str, seq: int) -> str:
    partition = stream.rsplit(":", 1)[-1]
    return f"partition {partition} offset {seq - 1}"


def check_link(
    state: PartitionWalk,
    link: Link,
    rows: Sequence[StoredEntry],
    *,
    pruned_before_us: int | None,
    erased_gone: frozenset[int] = frozenset(),
) -> Break | None:
    """Check ``link`` (the next link of ``state.stream`` by start) against ``rows`` (the raw
    rows of its range, in seq order); move ``state`` past it. ``pruned_before_us``: entries
    received before this may have been removed by retention (None: no retention).
    ``erased_gone``: seqs whose rows an erasure deleted."""
    problem = _place(state, link) or _format(state, link)
    if problem is not None:
        return problem
    if not (len(link.seqs) == len(link.digests) == len(link.received)) or (
        batch_link(link.prev, link.stream, link.start, link.end, link.seqs, link.received, link.digests, link.format)
        != link.hash
    ):
        first = link.seqs[0] if link.seqs else link.start + 1
        return Break(first, "changed", f"{where(link.stream, first)}: the chain link of offsets {link.start} to"
                     f" {link.end - 1} was changed (its hash does not cover what it lists)")  # fmt: skip
    problem = _entries(state, link, rows, pruned_before_us, erased_gone)
    if problem is not None:
        return problem
    state.end, state.hash = link.end, link.hash
    state.links += 1
    if link.format == 2 and not state.format2:
        state.format2 = link.start + 1
    return None


def _format(state: PartitionWalk, link: Link) -> Break | None:
    """A format-1 link after a format-2 one is a downgrade (a stored format flipped back)."""
    if link.format == 2 or (link.format == 1 and not state.format2):
        return None
    return Break(
        link.start + 1,
        "changed",
        f"{where(link.stream, link.start + 1)}: the chain link of offsets {link.start} to {link.end - 1} names"
        f" format {link.format}, but the partition's links use format 2 from offset {state.format2 - 1} on",
    )


def _place(state: PartitionWalk, link: Link) -> Break | None:
    if state.links == 0 and link.prev == GENESIS and link.start > 0 and state.end == 0:
        state.anchor = link.start  # the chain began here: an upgrade, with offsets already applied
        state.end = link.start
    if state.links and link.start < state.end:
        return Break(
            link.start + 1,
            "changed",
            f"{where(link.stream, link.start + 1)}: two chain links cover offsets from {link.start} (a fork)",
        )
    if link.start != state.end:
        return Break(
            state.end + 1,
            "missing",
            f"{where(link.stream, state.end + 1)}: offsets {state.end} to {link.start - 1} are missing from the"
            " chain (a link was removed)",
        )
    if link.prev != state.hash:
        return Break(
            link.start + 1,
            "changed",
            f"{where(link.stream, link.start + 1)}: the chain link of offsets {link.start} to {link.end - 1}"
            " does not follow the one before it",
        )
    return None


def _entries(
    state: PartitionWalk,
    link: Link,
    rows: Sequence[StoredEntry],
    pruned_before_us: int | None,
    erased_gone: frozenset[int],
) -> Break | None:
    """Every listed seq and every stored row of the link's range, in seq order."""
    stored: dict[int, list[StoredEntry]] = {}
    for each in rows:
        stored.setdefault(each.seq, []).append(each)
    listed = {s: (d, r) for s, d, r in zip(link.seqs, link.digests, link.received, strict=True)}
    for seq in sorted(listed.keys() | stored.keys()):
        copies = stored.get(seq, [])
        if seq not in listed:
            return Break(seq, "added", f"{where(link.stream, seq)} ({copies[0].label}) is in no chain link:"
                         " it was not applied by meterline")  # fmt: skip
        digest, received = listed[seq]
        if not copies:
            if seq in erased_gone:
                state.erased += 1
            elif pruned_before_us is not None and received < pruned_before_us:
                state.pruned += 1
            else:
                return Break(seq, "missing", f"{where(link.stream, seq)} is missing from the raw events")
            continue
        if len(copies) > 1 and copies[0].erased is None:  # an erasure inserts the erased form, then deletes
            return Break(seq, "added", f"{where(link.stream, seq)} ({copies[0].label}) is stored twice")
        for row in copies:
            problem = _content(link.stream, row, digest, link.format)
            if problem is not None:
                return problem
        erased = any(row.erased is not None and row.content == row.erased for row in copies)
        state.erased += erased
        state.entries += not erased
    return None


def _content(stream: str, row: StoredEntry, digest: bytes, format_: int) -> Break | None:
    """The row against the digest its link lists (in the link's format); an erased form is
    recorded by its format-1 digest (an erased row carries no correction record)."""
    current = row.content2 if format_ == 2 else row.content
    if row.erased is not None and row.content != row.erased and current != digest:
        return Break(row.seq, "changed", f"{where(stream, row.seq)} ({row.label}) changed after its"
                     " personal data was erased")  # fmt: skip
    if row.erased is None and current != digest:
        return Break(row.seq, "changed", f"{where(stream, row.seq)} ({row.label}) does not match the chain:"
                     " its content or its place in the partition changed")  # fmt: skip
    return None
