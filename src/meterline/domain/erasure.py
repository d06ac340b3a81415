"""Erasure of a subject (GDPR right to erasure): pure rules, no storage.

An erasure removes what identifies a subject from the store while keeping what accounting
needs (see ``docs/erasure.md``):

- the subject key becomes a **pseudonym**, a keyed hash of (namespace, subject) with the
  store's erasure secret (:func:`pseudonym`): the same subject always maps to the same
  pseudonym, nobody without the secret can compute it back or test a guess;
- an erased ledger entry's idempotency key (namespace, source, id) becomes an **erased key**
  (source ``""``, which no CloudEvent can have, and id :func:`erased_id`) that still
  deduplicates: a resent event is found by the same keyed hash and answered duplicate;
- its payload is reduced to the values the live meters read (:func:`reduced_data`), so a
  replay of the ledger gives the same readings and the same rollups;
- its payload digest (dedupe conflicts) becomes a keyed digest (:func:`erased_digest`).

The shared dedupe store of scale mode holds every key in those keyed forms from its claim on
(:func:`dedupe_key`, :func:`erased_digest`), erased or not.

Errors (stable codes, see ``meterline.domain.errors``):

    InvalidInput invalid_erasure     400  no subject or reason, a reason too long or naming the subject
    NotFound     subject_not_found   404  nothing in the namespace refers to the subject
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from meterline.domain.clock import rfc3339
from meterline.domain.errors import Conflict, InvalidInput, NotFound
from meterline.domain.events.model import Event, Rejection
from meterline.domain.events.size import RECEIVED_SIZE, event_size
from meterline.domain.meters.evaluate import CompiledMeter
from meterline.domain.meters.paths import Path

MAX_REASON = 1000
MAX_SUBJECT = 1000
ERASED_SOURCE = ""
"""The source of an erased key: CloudEvents require a non-empty source, so no event sent
later can have an erased entry's key by accident."""
PSEUDONYM_PREFIX = "erased-"
ERASED_REASON = "(erased with the subject)"
"""What replaces the reason of a correction of an erased entry (free text that may name the person)."""
_decode = msgspec.json.Decoder(float_hook=Decimal)  # numbers stay exact, as the meters read them
_encode = msgspec.json.Encoder(decimal_format="number")


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    namespace: str
    subject: str
    reason: str
    actor: str


def validate(req: ErasureRequest) -> ErasureRequest:
    """The request, or ``invalid_erasure`` saying what is wrong. The reason is kept in the audit
    record, so it must not name the subject."""
    if not req.subject:
        raise InvalidInput("`subject` is required", code="invalid_erasure")
    if len(req.subject) > MAX_SUBJECT:
        raise InvalidInput(f"`subject` is longer than {MAX_SUBJECT} characters", code="invalid_erasure")
    if not req.reason.strip():
        raise InvalidInput("`reason` is required: the audit record says why data was erased", code="invalid_erasure")
    if len(req.reason) > MAX_REASON:
        raise InvalidInput(f"`reason` is longer than {MAX_REASON} characters", code="invalid_erasure")
    if req.subject in req.reason:
        raise InvalidInput(
            "`reason` must not contain the subject: it is kept in the audit record after the erasure",
            code="invalid_erasure",
        )
    return req


def subject_not_found() -> NotFound:
    return NotFound(
        "nothing in the namespace refers to this subject (no events, quarantined events, dead letters,"
        " usage, customer or portal token); it may have been erased already",
        code="subject_not_found",
    )


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """The audit record of one erasure: who, when, why and how much; never the subject (its
    pseudonym only)."""

    id: int
    namespace: str
    erased_us: int
    actor: str
    reason: str
    pseudonym: str
    counts: dict[str, int] = field(default_factory=dict)
    """What was rewritten or deleted, by kind (``ledgerEntries``, ``events``, ``quarantined``,
    ``deadLetters``, ``portalTokens``, ``customerMappings``, ``customerKeys``, ``rollupRows``)."""
    through_seq: int = 0
    """The last ledger position the erasure covered: later entries of the subject are a new life.
    In scale mode: the log records applied over every partition (``through_log`` per partition)."""
    through_log: dict[int, int] | None = None
    """Scale mode: per log partition, the offset after the last record the erasure covered."""
    log_kept_ms: int | None = None
    """Scale mode: how long after the erasure the log may still hold the subject's records (its
    topic's ``retention.ms`` + ``segment.ms``, ``domain.log_retention``); -1: forever (unlimited
    retention); None: the broker did not say."""
    redis_files: dict[str, str] | None = None
    """Scale mode with Redis: what was done to Redis's persistence files once the erasure's keys
    were gone (``aof``, ``rdb``: ``rewritten``, ``saved``, ``off``, ``unknown``, ``failed``,
    ``unfinished``; ``detail`` when not every one is done or off)."""
    postgres_files: dict[str, str] | None = None
    """Scale mode: per PostgreSQL table rewritten after the erasure (``VACUUM FULL``), the
    outcome: ``rewritten``, ``busy``, ``held``, ``failed: ...``
    (``ports.erasure.TableRewriter``); None until it was tried."""

    def log_purged_by_us(self) -> int | None:
        """When the subject's records before the cut have left the log at the latest (None:
        never, or not known: ``log_kept_ms``)."""
        if self.log_kept_ms is None or self.log_kept_ms < 0:
            return None
        return self.erased_us + self.log_kept_ms * 1000


def _mac(secret: bytes, *parts: str | bytes) -> bytes:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode()
        mac.update(len(data).to_bytes(4, "big") + data)
    return mac.digest()


def pseudonym(secret: bytes, namespace: str, subject: str) -> str:
    """The subject key that replaces ``subject`` everywhere (128 bits of an HMAC-SHA256)."""
    return PSEUDONYM_PREFIX + _mac(secret, b"subject", namespace, subject)[:16].hex()


def erased_id(secret: bytes, namespace: str, source: str, id_: str) -> str:
    """The id of an erased key (HMAC-SHA256 of the original key, hex)."""
    return _mac(secret, b"key", namespace, source, id_).hex()


DEDUPE_KEY_BYTES = 16
"""The width of a key's name in the shared dedupe store of scale mode (:func:`dedupe_key`): 128
bits. Two keys held at once that share a name would make the later one's event a duplicate (or
a conflict) and drop it, so the width is chosen for collisions to be negligible: among n keys
held at once the chance of any collision is below n² / 2^129, about 10^-15 for 10^12 keys (ten
years at 3,000 events/s) and 10^-9 for 10^15. The names are keyed hashes: without the secret
nobody can aim two events at one name."""


def dedupe_key(secret: bytes, namespace: str, source: str, id_: str) -> bytes:
    """The name of the key (namespace, source, id) in the shared dedupe store of scale mode: the
    first :data:`DEDUPE_KEY_BYTES` of its :func:`erased_id`, so an erased key has the same name
    as before its erasure, and no name holds an identifier (the store holds nothing else of the
    key)."""
    return _mac(secret, b"key", namespace, source, id_)[:DEDUPE_KEY_BYTES]


def dedupe_key_of_erased(erased_id_: str) -> bytes:
    """The dedupe-store name (:func:`dedupe_key`) of the original key of an erased id."""
    return bytes.fromhex(erased_id_)[:DEDUPE_KEY_BYTES]


def dedupe_digest(secret: bytes, digest: bytes) -> bytes:
    """The payload digest as the shared dedupe store of scale mode keeps it: keyed, at least 128
    bits (a shorter digest is not truncated further). Equal to :func:`erased_digest` for the
    16-byte digests events carry (``Event.digest``), so an erased key's row needs no change."""
    return _mac(secret, b"digest", digest)[: max(len(digest), 16)]


def erased_digest(secret: bytes, digest: bytes) -> bytes:
    """The payload digest kept for an erased entry: a resend with the same payload is a
    duplicate, with another one a conflict, as before the erasure."""
    return _mac(secret, b"digest", digest)[: len(digest) or 16]


def reduced_data(data: Any, paths: Iterable[Path]) -> Any:
    """``data`` with only the values ``paths`` read (the live meters' value and group-by paths),
    at the same places; everything else is dropped. Lists keep their length up to the last
    index read (other items become null), so an index reads the same value."""
    if data is None:
        return None
    out: Any = {} if isinstance(data, dict) else [] if isinstance(data, list) else None
    for path in paths:
        where = path.locate(data)
        if where is None:
            continue
        if not where:
            return data  # the path reads the whole of data
        out = _place(out, data, where)
    return out


def _place(out: Any, data: Any, where: tuple[str | int, ...]) -> Any:
    node, source = out, data
    for i, key in enumerate(where):
        value = source[key]
        last = i == len(where) - 1
        if isinstance(key, int):
            while len(node) <= key:
                node.append(None)
        if last:
            node[key] = value
        else:
            if (node[key] if isinstance(key, int) else node.get(key)) is None:
                node[key] = {} if isinstance(value, dict) else []
            node, source = node[key], value
    return out


def erased_raw(
    raw: bytes,
    ns: str,
    type_: str,
    subject: str,
    id_: str,
    time_us: int,
    meters: Sequence[CompiledMeter],
    keep_size: bool = False,
) -> bytes:
    """The erased form of a raw CloudEvent: the envelope without the key or extensions, the
    pseudonymous ``subject``, the erased ``id_`` and ``data`` reduced to what ``meters`` (the
    live meters of its type) read. Checked: each meter reads the same value and groups from
    it as from ``raw``, else ``erasure_unsafe`` (nothing may be erased then). ``keep_size``:
    the size ``raw`` counts for in ``ingested_bytes`` goes along (``domain.events.size``), so
    refolding the erased form changes no figure."""
    try:
        data = _decode.decode(raw).get("data")
    except (msgspec.DecodeError, AttributeError):
        data = None
    paths: list[Path] = [p for m in meters for p in m.paths()]
    kept = reduced_data(data, paths)
    for meter in meters:
        before = meter.read(_event(ns, type_, subject, time_us, data))
        after = meter.read(_event(ns, type_, subject, time_us, kept))
        if not _same(before, after):
            raise Conflict(
                f"meter {meter.meter.slug!r} cannot read an erased payload as before; the erasure was not done",
                code="erasure_unsafe",
            )
    envelope: dict[str, Any] = {"specversion": "1.0", "id": id_, "source": ERASED_SOURCE, "type": type_}
    envelope["subject"] = subject
    if keep_size:
        envelope[RECEIVED_SIZE] = _received_size(raw, time_us)
    return _encode.encode({**envelope, "time": rfc3339(time_us), "data": kept})


def _received_size(raw: bytes, time_us: int) -> int:
    """The size ``raw`` counts for (0 for a raw that is not a JSON object: none is stored)."""
    try:
        return event_size(raw, time_us)
    except (msgspec.DecodeError, AttributeError, TypeError):
        return 0


def erased_void_raw(raw: bytes, id_: str) -> bytes:
    """The erased form of a partitioned log's void record (``domain.events.corrections``):
    the erased key, the actor kept, the reason replaced (free text that may name the person)."""
    try:
        body = _decode.decode(raw)
        actor = str(body.get("void", {}).get("actor", ""))
    except (msgspec.DecodeError, AttributeError):
        actor = ""
    return _encode.encode({"id": id_, "source": ERASED_SOURCE, "void": {"reason": ERASED_REASON, "actor": actor}})


def _event(ns: str, type_: str, subject: str, time_us: int, data: Any) -> Event:
    return Event(ns, ERASED_SOURCE, "", type_, subject, time_us, data if isinstance(data, dict) else None, b"", b"")


def _same(a: object, b: object) -> bool:
    if isinstance(a, Rejection) or isinstance(b, Rejection):
        return isinstance(a, Rejection) and isinstance(b, Rejection)
    return repr(a) == repr(b)


def names(raw: bytes, subject: str) -> bool:
    """Whether a dead letter belongs to the subject: its ``subject`` member is it, or (any body)
    it holds the subject as a JSON string anywhere."""
    quoted = msgspec.json.encode(subject)
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return quoted in raw or subject.encode() in raw
    if isinstance(body, dict) and body.get("subject") == subject:
        return True
    return quoted in raw
