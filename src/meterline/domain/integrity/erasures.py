"""The erasure chain: the erased forms of ledger entries, chained in the order they were committed.

The ledger's chain links an erased entry's content digest from *before* the erasure (``kept``);
the digest of its erased form is recorded beside it (``content``) and ``verify`` requires the
entry as stored to match it. This chain covers those recorded digests, so that editing an
erased entry and its recorded digest together is seen as well.

Every step that rewrote entries (one writer transaction of an erasure) is a link ``pos``
(1, 2, ...) with ``hash(pos) = SHA-256(hash(pos - 1) || pos || erasure || n || (seq || content)*)``:
``hash(0) = GENESIS``, ``erasure`` the erasure's id, ``n`` (4 bytes) and the entries it
rewrote sorted by seq, each as seq (8 bytes), the length of ``content`` (4 bytes) and
``content``. A link's hash is stored in the transaction that rewrote its entries, and the last
link's ``(pos, hash)`` is recorded as the erasure head. An exported head carries that head too:
it proves every erased form up to it unchanged, and erasures made later only add links after it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from meterline.domain.integrity.chain import GENESIS, Break, Head

_entry = struct.Struct(">QI")
_U64 = 2**64 - 1
"""Numbers are hashed as 8 unsigned bytes (a value edited by hand out of range wraps, never raises)."""


def erasure_link(previous: bytes, pos: int, erasure: int, entries: Iterable[tuple[int, bytes]]) -> bytes:
    """The hash of link ``pos``: the link before it, its place, its erasure and the (seq, erased
    content digest) of the entries it rewrote (sorted here by seq)."""
    ordered = sorted(entries)
    data = previous + (pos & _U64).to_bytes(8, "big") + (erasure & _U64).to_bytes(8, "big")
    data += len(ordered).to_bytes(4, "big")
    for seq, content in ordered:
        data += _entry.pack(seq & _U64, len(content)) + content
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class ErasureLink:
    """One stored link: its place, its erasure, the stored hash and its entries' (seq, content)."""

    pos: int
    erasure: int
    stored: bytes
    entries: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class ErasureChain:
    """What a store holds of the erasure chain. ``unlinked``: seqs of erased entries that no
    stored link claims. ``anchor``: (pos, time_us) when the store gained the chain (the links up to
    ``pos`` were made from erasures committed before); None: not yet."""

    links: tuple[ErasureLink, ...]
    recorded: Head | None
    anchor: tuple[int, int] | None = None
    unlinked: tuple[int, ...] = field(default=())


def walk_erasures(chain: ErasureChain, expected: Head | None = None) -> tuple[Head, Break | None]:
    """Recompute every link in order; the head reached and the first break (None: it holds, and
    ``expected``, an exported erasure head, lies on it)."""
    state = Head(0, GENESIS)
    if chain.unlinked:
        seq = chain.unlinked[0]
        return state, Break(seq, "erased", f"erased entry {seq} belongs to no link of the erasure chain")
    for link in chain.links:
        if link.pos != state.seq + 1:
            return state, _gap(link, state.seq + 1)
        computed = erasure_link(state.hash, link.pos, link.erasure, link.entries)
        if computed != link.stored:
            return state, Break(link.entries[0][0] if link.entries else 0, "erased", _changed(link))
        state = Head(link.pos, computed)
        if expected is not None and state.seq == expected.seq and state.hash != expected.hash:
            return state, Break(0, "head", _differs(expected.seq))
    return state, _end(state, chain.recorded, expected)


def _gap(link: ErasureLink, wanted: int) -> Break:
    if link.pos < wanted:
        return Break(0, "erased", f"erasure-chain link {link.pos} (erasure {link.erasure}) is stored twice")
    return Break(0, "erased", f"erasure-chain link {wanted} is missing (the next stored is {link.pos})")


def _changed(link: ErasureLink) -> str:
    seqs = ", ".join(str(seq) for seq, _ in link.entries[:5]) + (", ..." if len(link.entries) > 5 else "")
    return (
        f"erasure {link.erasure} (erasure-chain link {link.pos}, erased entries {seqs or 'none'}) does not match"
        " the erasure chain: an erased entry of it, its recorded erased digest, or the order of erasures changed"
    )


def _differs(pos: int) -> str:
    return (
        f"the erasure chain at link {pos} differs from the exported head: an erased entry up to that erasure"
        " changed since the head was exported"
    )


def _end(state: Head, recorded: Head | None, expected: Head | None) -> Break | None:
    if recorded is None:
        if state.seq:
            return Break(0, "erased", "the store has erasure-chain links but no recorded erasure head")
    elif recorded.seq != state.seq:
        return Break(
            0,
            "erased",
            f"the erasure chain ends at link {state.seq} but the last erasure recorded link {recorded.seq}",
        )
    elif recorded.hash != state.hash:
        return Break(0, "erased", f"erasure-chain link {state.seq} does not match the erasure head recorded with it")
    if expected is not None and expected.seq > state.seq:
        return Break(
            0, "head", f"the erasure chain ends at link {state.seq}, before the exported head's ({expected.seq})"
        )
    return None
