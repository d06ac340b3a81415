"""Verifying the hash chains of a partitioned log (scale mode), and exporting their heads.

``verify_partitions`` walks every partition of a :class:`~meterline.ports.integrity.PartitionChainSource`:
its links in order, each checked against the raw rows of its range
(``domain.integrity.batches.check_link``), up to the position the partition is applied to:

- a changed, moved, removed or added raw row is named by partition, offset and key;
- a removed or changed link breaks the chain where it was (a gap, or a link that does not
  follow the one before); links removed from the end leave the chain short of the applied
  position;
- an exported head document, when given, must lie on each partition's chain: some link must
  end exactly at the exported position with the exported hash;
- entries before a partition's first link (an upgrade: applied before the chain existed) must
  have been received before the chain began; a partition applied before it and idle since has
  no link yet and is reported as such.

Each partition's first break is reported; nothing is repaired.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterline.domain.clock import rfc3339
from meterline.domain.errors import InvalidInput
from meterline.domain.integrity.batches import PartitionWalk, StoredEntry, check_link, where
from meterline.domain.integrity.chain import Break, Head
from meterline.domain.integrity.heads import PartitionHeadsDocument, partitions_document
from meterline.ports.integrity import PartitionChainSource
from meterline.services.integrity import sign

CHUNK = 20_000
LINKS = 2_000


@dataclass(frozen=True, slots=True)
class PartitionReport:
    stream: str
    head: Head
    links: int
    entries: int
    pruned: int
    erased: int
    anchor: int
    """Entries before this seq were applied before the partition had the chain (not covered)."""
    problem: Break | None
    against: Head | None = None


@dataclass(frozen=True, slots=True)
class PartitionsReport:
    partitions: tuple[PartitionReport, ...]

    @property
    def ok(self) -> bool:
        return all(p.problem is None for p in self.partitions)

    @property
    def problems(self) -> list[Break]:
        return [p.problem for p in self.partitions if p.problem is not None]


def verify_partitions(source: PartitionChainSource, against: PartitionHeadsDocument | None = None) -> PartitionsReport:
    """Walk every partition's chain (and every partition the exported heads name)."""
    applied = source.applied()
    expected = {} if against is None else against.head_map()
    reports = [
        _walk(source, stream, applied.get(stream, 0), expected.get(stream))
        for stream in sorted(applied.keys() | expected.keys())
    ]
    return PartitionsReport(tuple(reports))


def export_partition_heads(
    source: PartitionChainSource, exported_at: str, private_key_pem: bytes | None = None
) -> PartitionHeadsDocument:
    """Every partition's head in one document, signed when a key is given; only from chains
    that verify."""
    report = verify_partitions(source)
    if not report.ok:
        raise InvalidInput(f"the ledger does not verify: {report.problems[0].message}", code="chain_broken")
    doc = partitions_document(source.ledger_id(), {p.stream: p.head for p in report.partitions}, exported_at)
    return doc if private_key_pem is None else sign(doc, private_key_pem)


def _walk(source: PartitionChainSource, stream: str, done: int, expected: Head | None) -> PartitionReport:
    state = PartitionWalk(stream)
    problem = _links(source, state, done, expected)
    if problem is None and done and (state.anchor or not state.links):
        problem = _before_chain(source, state, done)
    if problem is None and state.end < done:
        problem = Break(
            state.end + 1,
            "missing",
            f"{where(stream, state.end + 1)}: offsets {state.end} to {done - 1} are applied but in no chain link"
            " (the last links were removed)",
        )
    if problem is None and expected is not None and state.end < expected.seq:
        problem = Break(
            state.end + 1,
            "missing",
            f"{where(stream, state.end + 1)}: the chain ends at offset {state.end - 1}, before the exported head"
            f" (offset {expected.seq - 1})",
        )
    head = Head(state.end, state.hash)
    return PartitionReport(
        stream, head, state.links, state.entries, state.pruned, state.erased, state.anchor, problem, expected
    )


def _links(source: PartitionChainSource, state: PartitionWalk, done: int, expected: Head | None) -> Break | None:
    rows = _Rows(source, state.stream, done)
    gone = source.erased_gone(state.stream, 0, done)
    pruned_before = source.pruned_before_us()
    after = 0
    while state.end < done:
        links = [link for link in source.links(state.stream, after, LINKS) if link.end <= done]
        if not links:
            return None
        for link in sorted(links, key=lambda link: (link.start, link.end, link.hash)):
            if expected is not None and max(state.end, link.start) < expected.seq < link.end:
                return _off_head(state.stream, expected)  # no link ends at the exported position
            problem = check_link(
                state, link, rows.take(link.start, link.end), pruned_before_us=pruned_before, erased_gone=gone
            )
            if problem is not None:
                return problem
            if expected is not None and state.end == expected.seq and state.hash != expected.hash:
                return _off_head(state.stream, expected)
        after = links[-1].start + 1
    return None


def _before_chain(source: PartitionChainSource, state: PartitionWalk, done: int) -> Break | None:
    """Entries before a partition's first link (all of them when it has none yet) must have
    been received before the chain began: those are entries applied before it existed (an
    upgrade), the others were linked once and their links removed."""
    upto = state.anchor or done
    since = source.chain_since_us()
    if since is None:
        return Break(1, "unchained", f"{where(state.stream, 1)}: the ledger has no chain (no sink worker with it ran)")
    first = source.unchained(state.stream, upto, since)
    if first is not None:
        return Break(
            first,
            "missing",
            f"{where(state.stream, first)} was received after the chain began ({rfc3339(since)}) but is in no"
            " chain link (its links were removed)",
        )
    if not state.links:  # applied before the chain, idle since: its next batch anchors it here
        state.anchor = state.end = done
    return None


def _off_head(stream: str, expected: Head) -> Break:
    return Break(
        expected.seq,
        "head",
        f"{where(stream, expected.seq)}: the chain differs from the exported head there: some entry up to it"
        " changed, moved or was removed since the head was exported",
    )


class _Rows:
    """A partition's raw rows in seq order, read a chunk at a time as the links ask for them."""

    def __init__(self, source: PartitionChainSource, stream: str, done: int) -> None:
        self._source, self._stream, self._done = source, stream, done
        self._buffer: list[StoredEntry] = []
        self._read = 0

    def take(self, start: int, end: int) -> list[StoredEntry]:
        """The rows of ``(start, end]``; rows before ``start`` not taken by then (applied before
        the partition's first link) are dropped."""
        while self._read < min(end, self._done) and (not self._buffer or self._buffer[-1].seq <= end):
            more = self._source.entries(self._stream, self._read, self._done, CHUNK)
            if not more:
                self._read = self._done
                break
            self._buffer.extend(more)
            self._read = more[-1].seq
        taken = [r for r in self._buffer if start < r.seq <= end]
        self._buffer = [r for r in self._buffer if r.seq > end]
        return taken


__all__ = ["PartitionReport", "PartitionsReport", "export_partition_heads", "verify_partitions"]
