"""The corrections' audit trail against the ledger, for ``verify``.

A void or amend is a ledger entry (chained like any) plus a row of ``corrections`` saying which
original it corrects, why and by whom. That row lives beside the chain, so ``verify`` checks it
against what the chain covers: its entry exists (or was pruned), its original is an earlier,
uncorrected entry of the same key and namespace, and every void entry (whose chained body
records its original, reason and actor) has its row, with the same original, reason and actor.
An amend's entry is the new CloudEvent: its reason and actor are in the row only, and the chain
does not cover them (``docs/integrity.md``). An erased void's body and reason were rewritten by
the erasure (``adapters.sqlite.erasure``); its original is still checked.
"""

from __future__ import annotations

import sqlite3

import msgspec

from meterline.domain.erasure import ERASED_REASON
from meterline.domain.integrity.chain import Break


class _Void(msgspec.Struct):
    original: int | None = None
    reason: str | None = None
    actor: str | None = None


class _Body(msgspec.Struct):
    void: _Void | None = None
    specversion: str | None = None


_decode = msgspec.json.Decoder(_Body)

_ROWS = """
SELECT c.seq, c.original, c.namespace, c.action, c.reason, c.actor,
       e.seq, e.namespace, e.source, e.id, e.raw, x.seq IS NOT NULL,
       o.seq, o.namespace, o.source, o.id, oc.seq IS NOT NULL, p.seq IS NOT NULL, op.seq IS NOT NULL
FROM corrections c
LEFT JOIN events e ON e.seq = c.seq
LEFT JOIN ledger_erased x ON x.seq = c.seq
LEFT JOIN ledger_pruned p ON p.seq = c.seq
LEFT JOIN events o ON o.seq = c.original
LEFT JOIN corrections oc ON oc.seq = c.original
LEFT JOIN ledger_pruned op ON op.seq = c.original
ORDER BY c.seq
"""

_VOIDS = """
SELECT e.seq, e.namespace, e.source, e.id FROM events e
WHERE CAST(e.raw AS TEXT) LIKE '{"void":%' AND NOT EXISTS (SELECT 1 FROM corrections c WHERE c.seq = e.seq)
ORDER BY e.seq LIMIT 1
"""


def first_audit_break(conn: sqlite3.Connection) -> Break | None:
    """The first correction whose record disagrees with the ledger (by entry), or None."""
    found = [b for b in (_first_record_break(conn), _first_unrecorded_void(conn)) if b is not None]
    return min(found, key=lambda b: b.seq) if found else None


def _first_record_break(conn: sqlite3.Connection) -> Break | None:
    for row in conn.execute(_ROWS):
        problem = _record_problem(row)
        if problem is not None:
            seq = int(row[0])
            return Break(seq, "audit", f"the correction record of entry {seq} {problem}")
    return None


def _record_problem(row: tuple[object, ...]) -> str | None:
    seq, original, ns, action, reason, actor = row[:6]
    entry, e_ns, e_src, e_id, raw, erased = row[6:12]
    orig, o_ns, o_src, o_id, orig_corrected, pruned, orig_pruned = row[12:19]
    if entry is None:
        return None if pruned else "has no ledger entry: the record was added or its entry removed"
    label = f"(event {e_id!r} from source {e_src!r} in namespace {e_ns!r})"
    if ns != e_ns or action not in ("void", "amend"):
        return f"{label} does not match the entry: its namespace or action changed"
    if not isinstance(original, int) or not isinstance(seq, int) or original >= seq or orig_corrected:
        return f"{label} names entry {original} as its original, which is not an earlier uncorrected entry"
    if orig is None:
        if orig_pruned:
            return None
        return f"{label} names entry {original} as its original, which is not in the ledger"
    if (o_ns, o_src, o_id) != (e_ns, e_src, e_id) and not erased:  # an erasure gives each entry a new id
        return f"{label} names entry {original} as its original, an entry of another event"
    body = _body(raw)
    is_void = body is not None and body.void is not None and body.specversion is None
    if is_void != (action == "void"):
        return f"{label} says {action!s}, but the entry is {'a void' if is_void else 'an amend'}"
    if is_void and body is not None and body.void is not None and not erased:
        if (body.void.original, body.void.reason, body.void.actor) != (original, reason, actor):
            return f"{label} differs from the void entry's original, reason or actor"
    if erased and reason != ERASED_REASON:
        return f"{label} has a reason, but its event was erased"
    return None


def _first_unrecorded_void(conn: sqlite3.Connection) -> Break | None:
    row = conn.execute(_VOIDS).fetchone()
    if row is None:
        return None
    seq, ns, src, id_ = row
    return Break(
        int(seq),
        "audit",
        f"entry {seq} (event {id_!r} from source {src!r} in namespace {ns!r}) is a void without its correction"
        " record: the record was removed",
    )


def _body(raw: object) -> _Body | None:
    data = raw if isinstance(raw, bytes) else str(raw or "").encode()
    try:
        return _decode.decode(data)
    except msgspec.DecodeError:
        return None
