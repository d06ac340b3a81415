"""The partition chain's walk (``domain.integrity.batches.check_link``) on links and rows made
by its own rules: what the ClickHouse tests cannot plant cheaply (a fork, an erased row, a
retention cutoff, an anchor after an upgrade)."""

from __future__ import annotations

from meterline.domain.integrity.batches import Link, PartitionWalk, StoredEntry, batch_link, check_link, entry_digest
from meterline.domain.integrity.chain import GENESIS, Break

STREAM = "t:0"


def digest(seq: int, data: str = "x") -> bytes:
    return entry_digest("default", "s", "prompt", "c1", seq, 1_000 + seq, f'{{"id":"e{seq}","d":"{data}"}}'.encode(), 0)


def chain(ranges: list[tuple[int, int]], prev: bytes = GENESIS) -> list[Link]:
    links = []
    for start, end in ranges:
        seqs = tuple(range(start + 1, end + 1))
        received = tuple(1_000 + s for s in seqs)
        digests = tuple(digest(s) for s in seqs)
        hash_ = batch_link(prev, STREAM, start, end, seqs, received, digests)
        links.append(Link(STREAM, start, end, prev, hash_, seqs, digests, received))
        prev = hash_
    return links


def rows(start: int, end: int) -> list[StoredEntry]:
    return [StoredEntry(s, digest(s), f"event 'e{s}'") for s in range(start + 1, end + 1)]


def walk(links: list[Link], stored: list[StoredEntry], **kw: object) -> tuple[PartitionWalk, Break | None]:
    state = PartitionWalk(STREAM)
    for link in links:
        mine = [r for r in stored if link.start < r.seq <= link.end]
        problem = check_link(
            state, link, mine, pruned_before_us=kw.get("pruned"), erased_gone=kw.get("gone", frozenset())
        )  # type: ignore[arg-type]
        if problem is not None:
            return state, problem
    return state, None


def test_an_untouched_chain_walks_to_its_end() -> None:
    state, problem = walk(chain([(0, 3), (3, 7)]), rows(0, 7))
    assert problem is None and (state.end, state.entries, state.links) == (7, 7, 2)


def test_a_fork_and_a_gap_are_named() -> None:
    links = chain([(0, 3), (3, 7)])
    fork = chain([(0, 3), (3, 6)])[1]
    assert walk([links[0], links[1], fork], rows(0, 7))[1].message.endswith("(a fork)")  # type: ignore[union-attr]
    _, gap = walk([links[0], *chain([(5, 7)], prev=links[0].hash)], rows(0, 7))
    assert gap is not None and "offsets 3 to 4 are missing from the chain" in gap.message


def test_an_edited_link_list_is_named() -> None:
    links = chain([(0, 3)])
    edited = links[0]._replace(digests=(digest(1, "y"), *links[0].digests[1:]))
    _, problem = walk([edited], [StoredEntry(1, digest(1, "y"), "e1"), *rows(1, 3)])
    assert problem is not None and "hash does not cover what it lists" in problem.message


def test_rows_past_retention_are_pruned_and_younger_ones_missing() -> None:
    links = chain([(0, 4)])
    state, problem = walk(links, rows(2, 4), pruned=1_003)  # seqs 1, 2 received at 1001, 1002
    assert problem is None and (state.pruned, state.entries) == (2, 2)
    _, problem = walk(links, rows(2, 4), pruned=1_002)
    assert problem is not None and "partition 0 offset 1 is missing" in problem.message


def test_an_erased_row_verifies_and_an_edit_after_the_erasure_does_not() -> None:
    links = chain([(0, 3)])
    erased = digest(2, "erased")
    state, problem = walk(links, [*rows(0, 1), StoredEntry(2, erased, "erased", erased), *rows(2, 3)])
    assert problem is None and (state.erased, state.entries) == (1, 2)
    not_yet = StoredEntry(2, digest(2), "erased", erased)  # the marker is written before the rewrite
    assert walk(links, [*rows(0, 1), not_yet, *rows(2, 3)])[1] is None
    edited = StoredEntry(2, digest(2, "edited"), "erased", erased)
    _, problem = walk(links, [*rows(0, 1), edited, *rows(2, 3)])
    assert problem is not None and "changed after its personal data was erased" in problem.message
    state, problem = walk(links, [*rows(0, 1), *rows(2, 3)], gone=frozenset({2}))
    assert problem is None and state.erased == 1


def test_a_partition_applied_before_the_chain_is_anchored_once() -> None:
    state, problem = walk(chain([(10, 12), (12, 15)]), rows(10, 15))
    assert problem is None and state.anchor == 10
    first = chain([(0, 3)])[0]
    _, problem = walk([first, *chain([(3, 6)])], rows(0, 6))  # a genesis link later is no anchor
    assert problem is not None and "does not follow the one before" in problem.message


def test_an_erasure_between_its_insert_and_its_delete_verifies() -> None:
    """The erased form is inserted beside the original before the original is deleted."""
    links = chain([(0, 3)])
    erased = digest(2, "erased")
    both = [*rows(0, 2), StoredEntry(2, erased, "erased", erased), *rows(2, 3)]
    both[1] = both[1]._replace(erased=erased)  # the marker covers the original row too
    state, problem = walk(links, both)
    assert problem is None and state.erased == 1
    assert walk(links, [*rows(0, 1), both[2], both[1], *rows(2, 3)])[1] is None  # in either order
    other = StoredEntry(2, digest(2, "other"), "erased", erased)
    _, problem = walk(links, [*rows(0, 1), both[1], other, *rows(2, 3)])
    assert problem is not None and "changed after its personal data was erased" in problem.message
    twice = [*rows(0, 2), *rows(1, 3)]
    _, problem = walk(links, twice)
    assert problem is not None and "partition 0 offset 1 (event 'e2') is stored twice" in problem.message
