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

Errors (stable codes, see ``meterline.domain.errors``):

    InvalidInput invalid_erasure     400  no subject or reason, a reason too long or naming the subject
    NotFound     subject_not_found   404  nothing in the namespace refers to the subject
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meterline.domain.errors import InvalidInput, NotFound
from meterline.domain.meters.paths import Path

MAX_REASON = 1000
MAX_SUBJECT = 1000
ERASED_SOURCE = ""
"""The source of an erased key: CloudEvents require a non-empty source, so no event sent
later can have an erased entry's key by accident."""
PSEUDONYM_PREFIX = "erased-"


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
    """The last ledger position the erasure covered: later entries of the subject are a new life."""


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
