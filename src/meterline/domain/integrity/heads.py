"""Exported chain heads: the document an auditor keeps to prove a ledger prefix unchanged later.

A head document names the ledger (a random id made when the store was created), a position
and the chain hash there, and may carry an Ed25519 signature over :func:`signed_message`. It
is JSON so that it can be read, archived and checked without meterline.

A partitioned log (scale mode) exports one document with the head of every partition's chain
(:class:`PartitionHeadsDocument`, ``domain.integrity.batches``).
"""

from __future__ import annotations

import msgspec

from meterline.domain.errors import InvalidInput
from meterline.domain.integrity import batches
from meterline.domain.integrity.chain import ALGORITHM, ALGORITHMS, Head

FORMAT = "meterline-ledger-head/1"
PARTITIONS_FORMAT = "meterline-ledger-heads/1"


class Signature(msgspec.Struct, frozen=True, rename="camel"):
    algorithm: str
    public_key: str
    """The raw 32-byte Ed25519 public key, hex."""
    value: str
    """The signature over :func:`signed_message`, hex."""


class HeadDocument(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    format: str
    ledger: str
    seq: int
    hash: str
    algorithm: str
    exported_at: str
    signature: Signature | None = None
    erasures: int | None = None
    """The erasure chain's last link at export (``domain.integrity.erasures``); None in a head
    exported before the erasure chain existed (its erased forms are then not checked)."""
    erasures_hash: str | None = None

    def head(self) -> Head:
        return Head(self.seq, bytes.fromhex(self.hash))

    def erasure_head(self) -> Head | None:
        if self.erasures is None or self.erasures_hash is None:
            return None
        return Head(self.erasures, bytes.fromhex(self.erasures_hash))


def document(ledger: str, head: Head, exported_at: str, erasures: Head | None = None) -> HeadDocument:
    if erasures is None:
        return HeadDocument(FORMAT, ledger, head.seq, head.hash.hex(), ALGORITHM, exported_at)
    return HeadDocument(
        FORMAT, ledger, head.seq, head.hash.hex(), ALGORITHM, exported_at, None, erasures.seq, erasures.hash.hex()
    )


class PartitionHead(msgspec.Struct, frozen=True):
    partition: str
    """The partition's stream, ``<topic>:<partition>``."""
    seq: int
    """The end of the partition's last link (its offset + 1)."""
    hash: str


class PartitionHeadsDocument(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    format: str
    ledger: str
    algorithm: str
    exported_at: str
    heads: tuple[PartitionHead, ...]
    signature: Signature | None = None

    def head_map(self) -> dict[str, Head]:
        return {h.partition: Head(h.seq, bytes.fromhex(h.hash)) for h in self.heads}


AnyHeadDocument = HeadDocument | PartitionHeadsDocument


def partitions_document(ledger: str, heads: dict[str, Head], exported_at: str) -> PartitionHeadsDocument:
    listed = tuple(PartitionHead(stream, h.seq, h.hash.hex()) for stream, h in sorted(heads.items()))
    return PartitionHeadsDocument(PARTITIONS_FORMAT, ledger, batches.ALGORITHM, exported_at, listed)


def signed_message(doc: AnyHeadDocument) -> bytes:
    """The bytes a signature covers: every field but the signature, one per line (a partition's
    head as ``partition seq hash``)."""
    if isinstance(doc, PartitionHeadsDocument):
        partitions = [f"{h.partition} {h.seq} {h.hash}" for h in doc.heads]
        lines = [doc.format, doc.ledger, doc.algorithm, doc.exported_at, *partitions]
        return "".join(f"{line}\n" for line in lines).encode()
    text = f"{doc.format}\n{doc.ledger}\n{doc.algorithm}\n{doc.seq}\n{doc.hash}\n{doc.exported_at}\n"
    if doc.erasures is not None or doc.erasures_hash is not None:  # absent from heads exported before
        text += f"erasures {doc.erasures} {doc.erasures_hash}\n"
    return text.encode()


def encode(doc: AnyHeadDocument) -> bytes:
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def decode(data: bytes) -> HeadDocument:
    """Parse a head document; a readable :class:`InvalidInput` for anything else."""
    try:
        doc = msgspec.json.decode(data, type=HeadDocument)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"not a ledger head document ({exc})", code="invalid_head") from exc
    if doc.format != FORMAT or doc.algorithm not in ALGORITHMS:
        raise InvalidInput(
            f"unsupported head document (format {doc.format!r}, algorithm {doc.algorithm!r}); expected {FORMAT}",
            code="invalid_head",
        )
    if doc.seq < 0 or not _is_hash(doc.hash):
        raise InvalidInput("the head document's seq or hash is malformed", code="invalid_head")
    if (doc.erasures is None) != (doc.erasures_hash is None) or (
        doc.erasures is not None and (doc.erasures < 0 or not _is_hash(doc.erasures_hash or ""))
    ):
        raise InvalidInput("the head document's erasure-chain position or hash is malformed", code="invalid_head")
    return doc


def _is_hash(value: str) -> bool:
    try:
        return len(bytes.fromhex(value)) == 32
    except ValueError:
        return False


def decode_partitions(data: bytes) -> PartitionHeadsDocument:
    """Parse a partitioned log's head document; a readable :class:`InvalidInput` for anything else."""
    try:
        doc = msgspec.json.decode(data, type=PartitionHeadsDocument)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"not a partitioned ledger's head document ({exc})", code="invalid_head") from exc
    if doc.format != PARTITIONS_FORMAT or doc.algorithm not in batches.ALGORITHMS:
        raise InvalidInput(
            f"unsupported head document (format {doc.format!r}, algorithm {doc.algorithm!r});"
            f" expected {PARTITIONS_FORMAT}",
            code="invalid_head",
        )
    if any(h.seq < 0 or not _is_hash(h.hash) for h in doc.heads):
        raise InvalidInput("a partition's seq or hash in the head document is malformed", code="invalid_head")
    return doc
