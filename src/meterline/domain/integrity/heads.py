"""Exported chain heads: the document an auditor keeps to prove a ledger prefix unchanged later.

A head document names the ledger (a random id made when the store was created), a position
and the chain hash there, and may carry an Ed25519 signature over :func:`signed_message`. It
is JSON so that it can be read, archived and checked without meterline.
"""

from __future__ import annotations

import msgspec

from meterline.domain.errors import InvalidInput
from meterline.domain.integrity.chain import ALGORITHM, Head

FORMAT = "meterline-ledger-head/1"


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

    def head(self) -> Head:
        return Head(self.seq, bytes.fromhex(self.hash))


def document(ledger: str, head: Head, exported_at: str) -> HeadDocument:
    return HeadDocument(FORMAT, ledger, head.seq, head.hash.hex(), ALGORITHM, exported_at)


def signed_message(doc: HeadDocument) -> bytes:
    """The bytes a signature covers: every field but the signature, one per line."""
    return f"{doc.format}\n{doc.ledger}\n{doc.algorithm}\n{doc.seq}\n{doc.hash}\n{doc.exported_at}\n".encode()


def encode(doc: HeadDocument) -> bytes:
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def decode(data: bytes) -> HeadDocument:
    """Parse a head document; a readable :class:`InvalidInput` for anything else."""
    try:
        doc = msgspec.json.decode(data, type=HeadDocument)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"not a ledger head document ({exc})", code="invalid_head") from exc
    if doc.format != FORMAT or doc.algorithm != ALGORITHM:
        raise InvalidInput(
            f"unsupported head document (format {doc.format!r}, algorithm {doc.algorithm!r}); expected {FORMAT}",
            code="invalid_head",
        )
    if doc.seq < 0 or not _is_hash(doc.hash):
        raise InvalidInput("the head document's seq or hash is malformed", code="invalid_head")
    return doc


def _is_hash(value: str) -> bool:
    try:
        return len(bytes.fromhex(value)) == 32
    except ValueError:
        return False
