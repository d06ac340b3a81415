"""The erasure chain's rule and its place in exported heads (``domain.integrity.erasures``,
``domain.integrity.heads``): pure functions, no store."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meterline.domain.errors import InvalidInput
from meterline.domain.integrity import heads
from meterline.domain.integrity.chain import GENESIS, Head
from meterline.domain.integrity.erasures import ErasureChain, ErasureLink, erasure_link, walk_erasures
from meterline.services.integrity import check_signature, sign

A, B = b"\x01" * 32, b"\x02" * 32


def chain(*links: tuple[int, tuple[tuple[int, bytes], ...]]) -> ErasureChain:
    out, prev = [], GENESIS
    for pos, (erasure, entries) in enumerate(links, start=1):
        prev = erasure_link(prev, pos, erasure, entries)
        out.append(ErasureLink(pos, erasure, prev, entries))
    return ErasureChain(tuple(out), Head(len(out), prev))


def test_a_link_covers_its_entries_in_seq_order_its_place_and_its_erasure() -> None:
    base = erasure_link(GENESIS, 1, 1, [(3, A), (5, B)])
    assert erasure_link(GENESIS, 1, 1, [(5, B), (3, A)]) == base
    for other in (
        erasure_link(GENESIS, 1, 1, [(3, B), (5, A)]),
        erasure_link(GENESIS, 2, 1, [(3, A), (5, B)]),
        erasure_link(GENESIS, 1, 2, [(3, A), (5, B)]),
        erasure_link(GENESIS, 1, 1, [(3, A)]),
        erasure_link(A, 1, 1, [(3, A), (5, B)]),
    ):
        assert other != base
    assert erasure_link(GENESIS, -1, 2**70, [(-5, b"x" * 70_000)])  # hand-edited values hash, never raise


def test_a_later_link_keeps_an_exported_prefix_and_an_edit_before_it_is_named() -> None:
    one = chain((1, ((3, A),)))
    exported = one.recorded
    two = chain((1, ((3, A),)), (2, ((7, B),)))
    assert walk_erasures(two, exported) == (two.recorded, None)
    forged = chain((1, ((3, B),)), (2, ((7, B),)))  # every link recomputed after an edit
    assert walk_erasures(forged)[1] is None
    problem = walk_erasures(forged, exported)[1]
    assert problem is not None and "link 1 differs from the exported head" in problem.message
    short = walk_erasures(ErasureChain((), None), Head(1, A))[1]
    assert short is not None and "before the exported head's (1)" in short.message


def test_an_unlinked_entry_a_gap_and_a_moved_head_are_named() -> None:
    two = chain((1, ((3, A),)), (2, ((7, B),)))
    gap = walk_erasures(ErasureChain(two.links[1:], two.recorded))[1]
    assert gap is not None and "link 1 is missing" in gap.message
    loose = walk_erasures(ErasureChain(two.links, two.recorded, unlinked=(9,)))[1]
    assert loose is not None and "erased entry 9 belongs to no link" in loose.message
    behind = walk_erasures(ErasureChain(two.links[:1], two.recorded))[1]
    assert behind is not None and "ends at link 1 but the last erasure recorded link 2" in behind.message
    headless = walk_erasures(ErasureChain(two.links, None))[1]
    assert headless is not None and "no recorded erasure head" in headless.message


def test_head_documents_with_and_without_erasure_fields() -> None:
    doc = heads.document("ledger-1", Head(4, A), "2026-12-05T05:00:00Z", Head(2, B))
    assert heads.decode(heads.encode(doc)).erasure_head() == Head(2, B)
    old = heads.document("ledger-1", Head(4, A), "2026-12-05T05:00:00Z")
    assert heads.decode(heads.encode(old)).erasure_head() is None
    assert b"erasures" not in heads.signed_message(old)  # as signed before the erasure chain
    half = msgspec.json.encode({**msgspec.to_builtins(doc), "erasuresHash": None})
    with pytest.raises(InvalidInput, match="erasure-chain position or hash"):
        heads.decode(half)


def test_removing_the_erasure_fields_from_a_signed_head_breaks_its_signature() -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signed = sign(heads.document("ledger-1", Head(4, A), "2026-12-05T05:00:00Z", Head(2, B)), pem)
    assert check_signature(signed, None)
    stripped = msgspec.structs.replace(signed, erasures=None, erasures_hash=None)
    with pytest.raises(InvalidInput, match="does not verify"):
        check_signature(stripped, None)
