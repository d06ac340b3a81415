"""The corrections' audit trail against the ledger, for ``verify``.

A void or amend is a ledger entry (chained like any) plus a row of ``corrections`` saying which
original it corrects, why and by whom. That row lives beside the chain, so ``verify`` checks it
against what the chain covers: its entry exists (or was pruned), its original is an earlier,
uncorrected entry of the same key and namespace, and every void entry (whose chained body
records its original, reason and actor) has its row, with the same original, reason and actor.

From the store's switch to content format 2 (``adapters.sqlite.chain.ensure_format``) every
correction entry also carries its record in ``events.correction``, which its chain hash covers:
the row must equal it (an edited amend reason or actor is named like a void's), and an entry
carrying one must have its row. An amend from before the switch is the new CloudEvent only:
its reason and actor are in the row alone and not covered (``docs/integrity.md``). An erased
correction's reason was rewritten by the erasure in both places (``adapters.sqlite.erasure``).
"""

from __future__ import annotations

import sqlite3

import msgspec

from meterline.domain.erasure import ERASED_REASON
from meterline.domain.integrity.chain import Break, ChainFormat, parse_correction_record


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
       o.seq, o.namespace, o.source, o.id, oc.seq IS NOT NULL, p.seq IS NOT NULL, op.seq IS NOT NULL,
       e.correction
FROM corrections c
LEFT JOIN events e ON e.seq = c.seq
LEFT JOIN ledger_erased x ON x.seq = c.seq
LEFT JOIN ledger_pruned p ON p.seq = c.seq
LEFT JOIN events o ON o.seq = c.original
LEFT JOIN corrections oc ON oc.seq = c.original
LEFT JOIN ledger_pruned op ON op.seq = c.original
ORDER BY c.seq
"""

_UNRECORDED = """
SELECT e.seq, e.namespace, e.source, e.id, e.correction FROM events e
WHERE (CAST(e.raw AS TEXT) LIKE '{"void":%' OR (e.correction IS NOT NULL AND e.seq >= ?))
  AND NOT EXISTS (SELECT 1 FROM corrections c WHERE c.seq = e.seq)
ORDER BY e.seq LIMIT 1
"""


def first_audit_break(conn: sqlite3.Connection, fmt: ChainFormat) -> Break | None:
    """The first correction whose record disagrees with the ledger (by entry), or None."""
    found = [b for b in (_first_record_break(conn, fmt), _first_unrecorded(conn, fmt)) if b is not None]
    return min(found, key=lambda b: b.seq) if found else None


def _first_record_break(conn: sqlite3.Connection, fmt: ChainFormat) -> Break | None:
    for row in conn.execute(_ROWS):
        problem = _record_problem(row)
        if problem is None and isinstance(row[0], int) and row[6] is not None and fmt.covers_corrections(row[0]):
            problem = _chained_problem(row)
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


def _chained_problem(row: tuple[object, ...]) -> str | None:
    """A format-2 entry's record against the one its chained content carries."""
    original, _, action, reason, actor = row[1:6]
    label = f"(event {row[9]!r} from source {row[8]!r} in namespace {row[7]!r})"
    stored = row[19]
    chained = parse_correction_record(stored if isinstance(stored, bytes) else str(stored or "").encode())
    if stored is None or chained is None:
        return f"{label} is for an entry that carries no correction: the record was added"
    if chained[0] != action:
        return f"{label} says {action!s}, but the entry is {'a void' if chained[0] == 'void' else 'an amend'}"
    if chained[1:] != (original, reason, actor):
        return f"{label} differs from the {action!s} entry's original, reason or actor"
    return None


def _first_unrecorded(conn: sqlite3.Connection, fmt: ChainFormat) -> Break | None:
    """The first void entry (by its body), or format-2 entry carrying a correction, without its row."""
    since = fmt.since if fmt.since is not None else 2**62  # none: no entry carries one
    row = conn.execute(_UNRECORDED, (since,)).fetchone()
    if row is None:
        return None
    seq, ns, src, id_, chained = row
    fields = None if chained is None else parse_correction_record(bytes(chained))
    kind = "an amend" if fields is not None and fields[0] == "amend" else "a void"
    return Break(
        int(seq),
        "audit",
        f"entry {seq} (event {id_!r} from source {src!r} in namespace {ns!r}) is {kind} without its correction"
        " record: the record was removed",
    )


def _body(raw: object) -> _Body | None:
    data = raw if isinstance(raw, bytes) else str(raw or "").encode()
    try:
        return _decode.decode(data)
    except msgspec.DecodeError:
        return None
