"""Verifying the ledger's hash chain, and exporting (optionally signed) chain heads.

``verify_chain`` walks every position of a :class:`~meterline.ports.integrity.ChainSource` in
sequence order (``domain.integrity.chain.walk``) and then checks the end: the head the store
recorded with its last append must be where the walk ended (entries removed from the end are
seen), and an exported head, when given, must lie on the chain (the prefix up to it unchanged).
The erasure chain (``domain.integrity.erasures``) is walked as well: the erased forms' digests
the ledger walk compares erased entries with, and, for an exported head that carries one, its
erasure head (erasures made after the export only add links after it).
The first break is the report's ``problem``; nothing is repaired.

Signatures are Ed25519 (the ``cryptography`` package, extra ``sign``): keys are PEM files, as
``openssl genpkey -algorithm ed25519`` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from meterline.domain.errors import InvalidInput
from meterline.domain.integrity.chain import GENESIS, Break, Head, Walk, walk
from meterline.domain.integrity.erasures import walk_erasures
from meterline.domain.integrity.heads import (
    AnyHeadDocument,
    HeadDocument,
    PartitionHeadsDocument,
    Signature,
    document,
    signed_message,
)
from meterline.ports.integrity import ChainSource
from meterline.runtime.extras import import_extra

CHUNK = 20_000
NO_ERASURES = Head(0, GENESIS)
D = TypeVar("D", HeadDocument, PartitionHeadsDocument)


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int
    """Positions walked (including pruned ones)."""
    head: Head
    pruned: int
    erased: int
    anchor: tuple[int, int] | None
    problem: Break | None
    against: Head | None = None
    """The exported head that was checked, if any."""
    erasures: Head = NO_ERASURES
    """The erasure chain's last link walked (``domain.integrity.erasures``)."""
    erasure_anchor: tuple[int, int] | None = None
    """(link, time_us): links up to it were made, when the store gained the erasure chain, from
    erasures committed before; None: no such erasures."""
    against_erasures: Head | None = None
    """The exported head's erasure head, if it carries one (links after it are later erasures)."""
    later_erasures: tuple[int, ...] = ()
    """Ids of the erasures whose links come after ``against_erasures``: made since the export."""

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(source: ChainSource, against: HeadDocument | None = None) -> ChainReport:
    """Walk the whole chain; the first break, if any, is ``problem``."""
    state = Walk()
    expected = None if against is None else against.head()
    problem: Break | None = None
    while problem is None:
        rows = source.rows(state.seq, CHUNK)
        if not rows:
            break
        if expected is not None and state.seq < expected.seq <= rows[-1].seq:
            upto = [r for r in rows if r.seq <= expected.seq]
            problem = walk(state, upto) or _at_head(state, expected)
            if problem is None:
                problem = walk(state, rows[len(upto) :])
        else:
            problem = walk(state, rows)
    if problem is None:
        problem = _end(state, source.recorded_head(), expected)
    erasures = source.erasure_chain()
    exported = None if against is None else against.erasure_head()
    erasure_head, erasure_problem = walk_erasures(erasures, exported)
    later = () if exported is None else tuple(sorted({k.erasure for k in erasures.links if k.pos > exported.seq}))
    anchor = erasures.anchor if erasures.anchor and erasures.anchor[0] else None
    head = Head(state.seq, state.hash)
    return ChainReport(
        state.seq,
        head,
        state.pruned,
        state.erased,
        source.anchor(),
        problem or erasure_problem,
        expected,
        erasure_head,
        anchor,
        exported,
        later,
    )


def _at_head(state: Walk, expected: Head) -> Break | None:
    if state.seq == expected.seq and state.hash != expected.hash:
        return Break(
            expected.seq,
            "head",
            f"the chain at entry {expected.seq} differs from the exported head: some entry up to {expected.seq}"
            " changed, moved or was removed since the head was exported",
        )
    return None


def _end(state: Walk, recorded: Head | None, expected: Head | None) -> Break | None:
    if recorded is not None:
        if recorded.seq > state.seq:
            return Break(
                state.seq + 1,
                "missing",
                f"entries {state.seq + 1} to {recorded.seq} are missing: the ledger ends at {state.seq}"
                f" but its last append recorded entry {recorded.seq}",
            )
        if recorded.seq < state.seq:
            return Break(
                recorded.seq + 1,
                "added",
                f"entry {recorded.seq + 1} is after the last head meterline recorded ({recorded.seq}):"
                " it was not appended by meterline",
            )
        if recorded.hash != state.hash:
            return Break(state.seq, "changed", f"entry {state.seq} does not match the head recorded with it")
    elif state.seq:
        return Break(1, "added", "the ledger has entries but no recorded head: they were not appended by meterline")
    if expected is not None and expected.seq > state.seq:
        return Break(
            state.seq + 1, "missing", f"the ledger ends at entry {state.seq}, before the exported head ({expected.seq})"
        )
    return None


def export_head(source: ChainSource, exported_at: str, private_key_pem: bytes | None = None) -> HeadDocument:
    """The head of the chain as a document, signed when a private key is given. The chain is
    verified first: a head is only exported from a ledger that verifies."""
    report = verify_chain(source)
    if report.problem is not None:
        raise InvalidInput(f"the ledger does not verify: {report.problem.message}", code="chain_broken")
    doc = document(source.ledger_id(), report.head, exported_at, report.erasures)
    return doc if private_key_pem is None else sign(doc, private_key_pem)


def sign(doc: D, private_key_pem: bytes) -> D:
    """``doc`` with an Ed25519 signature over ``heads.signed_message`` by the PEM key."""
    key = _private_key(private_key_pem)
    value = key.sign(signed_message(doc)).hex()
    signature = Signature("ed25519", _raw_public(key.public_key()), value)
    return type(doc)(**{**_fields(doc), "signature": signature})


def check_signature(doc: AnyHeadDocument, public_key_pem: bytes | None) -> str | None:
    """Check a head document's signature: against ``public_key_pem`` when given (a document
    without a signature is then refused), else against the key it names. Returns the public key
    (hex) that signed it, None for an unsigned document without a key to check."""
    if doc.signature is None:
        if public_key_pem is not None:
            raise InvalidInput("the head document is not signed", code="signature_invalid")
        return None
    ed = import_extra("cryptography.hazmat.primitives.asymmetric.ed25519", "sign")
    exceptions = import_extra("cryptography.exceptions", "sign")
    if doc.signature.algorithm != "ed25519":
        raise InvalidInput(f"unsupported signature algorithm {doc.signature.algorithm!r}", code="signature_invalid")
    named = doc.signature.public_key
    if public_key_pem is not None:
        pinned = _raw_public(_public_key(public_key_pem))
        if pinned != named:
            raise InvalidInput("the head document was signed by another key", code="signature_invalid")
    try:
        key = ed.Ed25519PublicKey.from_public_bytes(bytes.fromhex(named))
        key.verify(bytes.fromhex(doc.signature.value), signed_message(doc))
    except (ValueError, exceptions.InvalidSignature) as exc:
        raise InvalidInput("the head document's signature does not verify", code="signature_invalid") from exc
    return named


def _fields(doc: AnyHeadDocument) -> dict[str, Any]:
    return {f: getattr(doc, f) for f in doc.__struct_fields__}


def _private_key(pem: bytes) -> Any:
    serialization = import_extra("cryptography.hazmat.primitives.serialization", "sign")
    ed = import_extra("cryptography.hazmat.primitives.asymmetric.ed25519", "sign")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("the signing key is not an unencrypted PEM private key", code="invalid_key") from exc
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise InvalidInput("the signing key is not an Ed25519 key", code="invalid_key")
    return key


def _public_key(pem: bytes) -> Any:
    serialization = import_extra("cryptography.hazmat.primitives.serialization", "sign")
    ed = import_extra("cryptography.hazmat.primitives.asymmetric.ed25519", "sign")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("the public key is not a PEM public key", code="invalid_key") from exc
    if not isinstance(key, ed.Ed25519PublicKey):
        raise InvalidInput("the public key is not an Ed25519 key", code="invalid_key")
    return key


def _raw_public(key: Any) -> str:
    serialization = import_extra("cryptography.hazmat.primitives.serialization", "sign")
    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()
