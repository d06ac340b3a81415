"""Corrections where the ledger is a partitioned log (scale mode): ``ports.corrections.Corrections``
over the raw events the sink workers stored, the log and the journal of corrections.

A correction never rewrites the original: it is a new log entry that supersedes one version
of the key. ``correct``:

1. finds the key's newest original where the workers stored it (``StoredOriginals``; after
   the read's freshness wait, so an event acknowledged through this node is found):
   none is ``event_not_found``;
2. holding the key in the journal (``CorrectionJournal.append``: one correction of a key at a
   time over every node), reads the original's acknowledged corrections: when a version of
   the key, or the amend's new version, lies in an hour whose raw events retention may have
   removed (``KeptHours.horizon_us``), ``event_pruned``, as embedded mode answers (such an hour
   can no longer be answered from its raw events); when the last is a void, ``event_voided``;
   otherwise the version that counts now is the one to supersede;
3. keeps the raw events of the hours of the version it takes out and of the one it puts in
   (``KeptHours.keep``: they outlive the retention, since a corrected hour is answered from
   them), then checks the horizon again: the copy ended before any of them could expire;
4. writes the entry — an amend's event, or a void record with the voided version's type,
   subject and time — to the original's own partition (``CorrectionWriter``), so it follows
   the original there and one worker applies both, in order; waits for ``acks=all``;
5. stores the journal row (reason, actor, the versions it takes out and puts in) in the same
   transaction that held the key, and answers.

A key found nowhere in the raw store is ``event_pruned`` when the shared dedupe store has it
confirmed since before the horizon and it never went to the quarantine (``_removed``): its raw
row is one retention removed; otherwise ``event_not_found``.

The sink workers apply the entry like any other, exactly once (``adapters.clickhouse``:
the corrected hours are answered from the raw events). History of a key whose original
retention removed (or would have removed: its time and receipt are past the horizon) is
``event_pruned`` (404), as embedded mode answers for a pruned ledger entry. History, the
corrections list and billing's citations read the journal. A seq here is a place in the original's partition
(offset + 1): the original's, and each correction's (what an invoice line cites).
"""

from __future__ import annotations

from meterline.domain.clock import Clock
from meterline.domain.errors import NotFound
from meterline.domain.events.corrections import (
    Action,
    CorrectionRequest,
    History,
    Version,
    event_not_found,
    event_pruned,
    event_voided,
    void_record,
)
from meterline.domain.events.model import Event
from meterline.domain.integrity.chain import correction_record
from meterline.ports.correction_log import (
    CorrectionJournal,
    CorrectionWriter,
    Journaled,
    KeptHours,
    StoredOriginal,
    StoredOriginals,
)
from meterline.ports.corrections import Corrected, CorrectionRecord
from meterline.ports.dedupe import DedupeStore
from meterline.ports.quarantine import HeldKeys
from meterline.runtime import freshness

HOUR_US = 3_600_000_000


class LogCorrections:
    def __init__(
        self,
        originals: StoredOriginals,
        journal: CorrectionJournal,
        writer: CorrectionWriter,
        kept: KeptHours,
        clock: Clock,
        keys: DedupeStore,
        held: HeldKeys,
    ) -> None:
        """``keys`` and ``held``: the shared dedupe store and the quarantine, which tell a key
        whose raw row retention removed from one never accepted (``_removed``)."""
        self._originals = originals
        self._journal = journal
        self._writer = writer
        self._kept = kept
        self._clock = clock
        self._keys = keys
        self._held = held

    def correct(self, request: CorrectionRequest) -> Corrected:
        ns, source, id_ = request.namespace, request.source, request.event_id
        original = self._original(ns, source, id_, correcting=True)

        def write(chain: list[Journaled]) -> Journaled:
            return self._write(request, original, chain)

        done = self._journal.append(ns, source, id_, original.stream, original.seq, write)
        partition = int(original.stream.rpartition(":")[2])
        record = freshness.current()
        if record is not None:
            record.log_positions = {partition: done.seq}
        return Corrected(done.seq, original.seq, request.action, done.seq, {partition: done.seq})

    def history(self, namespace: str, source: str, event_id: str) -> History:
        original = self._original(namespace, source, event_id)
        horizon = self._kept.horizon_us()
        if horizon is not None and max(original.time_us, original.received_us) <= horizon:
            raise NotFound(
                f"Event {event_id!r} from source {source!r} was removed by retention (its totals stand)",
                code="event_pruned",
            )
        chain = self._journal.chain(namespace, source, event_id, original.stream, original.seq)
        first = Version(
            original.seq, None, original.received_us, original.type, original.subject, original.time_us, original.raw
        )
        versions = [first]
        for j in chain:
            versions.append(
                Version(j.seq, j.action, j.received_us, j.type, j.subject, j.time_us, j.raw, j.reason, j.actor)
            )
        return History(namespace, source, event_id, tuple(versions))

    def since(self, namespace: str, received_from_us: int, limit: int) -> list[CorrectionRecord]:
        return [
            CorrectionRecord(
                j.seq,
                j.original,
                j.namespace,
                j.action,
                j.reason,
                j.actor,
                j.received_us,
                (j.was_subject, j.subject),
                (j.was_time_us, j.time_us),
                (j.was_type, j.type),
            )
            for j in self._journal.since(namespace, received_from_us, limit)
        ]

    def _original(self, namespace: str, source: str, event_id: str, *, correcting: bool = False) -> StoredOriginal:
        original = self._originals.original(namespace, source, event_id)
        if original is not None:
            return original
        horizon = self._kept.horizon_us()
        if horizon is None:
            raise event_not_found(source, event_id)
        if self._removed(namespace, source, event_id, horizon):
            if correcting:
                raise event_pruned(source, event_id)
            raise NotFound(
                f"Event {event_id!r} from source {source!r} was removed by retention (its totals stand)",
                code="event_pruned",
            )
        raise NotFound(  # e.g. its key left a finite dedupe window before the TTL removed its raw row
            f"No accepted event with id {event_id!r} from source {source!r}: none was accepted, or"
            " retention removed it (retention.raw_events) and it can no longer be corrected (its totals stand)",
            code="event_not_found",
        )

    def _removed(self, namespace: str, source: str, event_id: str, horizon: int) -> bool:
        """Whether the key's accepted event is one whose raw row retention removed: its claim was
        confirmed (after its log write was durable) at or before the horizon, so it was received
        then too, and a raw row past the horizon by both its time and its receipt is one the TTL
        may remove; the key never went to the quarantine (a held or dead-lettered event is
        confirmed too, without a raw row). Not in ``events`` nor ``kept_events`` (the caller
        looked), so the TTL removed it. The one other way an accepted event lacks its raw row is
        a sink worker ``raw_events`` behind (docs/scale.md, "With raw retention")."""
        at = self._keys.confirmed_at(namespace, source, event_id)
        return at is not None and at <= horizon and not self._held.went_to_quarantine(namespace, source, event_id)

    def _not_pruned(self, req: CorrectionRequest, versions: list[tuple[str, int]]) -> None:
        """``event_pruned`` when a version lies in an hour that starts at or before the horizon."""
        horizon = self._kept.horizon_us()
        if horizon is not None and any(time_us // HOUR_US * HOUR_US <= horizon for _, time_us in versions):
            raise event_pruned(req.source, req.event_id)

    def _write(self, req: CorrectionRequest, original: StoredOriginal, chain: list[Journaled]) -> Journaled:
        """Steps 2 to 4 of the module doc, holding the key."""
        versions = [(original.subject, original.time_us), *((j.subject, j.time_us) for j in chain)]
        versions += [(j.was_subject, j.was_time_us) for j in chain]
        if req.action is Action.AMEND:
            assert req.event is not None
            versions.append((req.event.subject, req.event.time_us))
        self._not_pruned(req, versions)
        if chain and chain[-1].action is Action.VOID:
            raise event_voided(req.event_id)
        last = chain[-1] if chain else None
        target, type_, subject, time_us = (
            (original.seq, original.type, original.subject, original.time_us)
            if last is None
            else (last.seq, last.type, last.subject, last.time_us)
        )
        if req.action is Action.AMEND:
            assert req.event is not None
            event = req.event
        else:
            raw = void_record(req.event_id, req.source, req.reason, req.actor)
            event = Event(req.namespace, req.source, req.event_id, type_, subject, time_us, None, raw, b"")
        self._kept.keep(req.namespace, [(subject, time_us), (event.subject, event.time_us)])
        self._not_pruned(req, versions)  # the copy ended before any of the hours' raw events could expire
        now = self._clock.now_us()
        # the audit record the partition's chain covers (the journal row below must match it)
        record = correction_record(req.action.value, original.seq, req.reason, req.actor)
        amend = req.action is Action.AMEND
        seq = self._writer.write_correction(original.stream, event, now, target, amend=amend, record=record)
        return Journaled(
            req.namespace, req.source, req.event_id, original.stream, original.seq, seq, target, req.action,
            req.reason, req.actor, now, event.type, event.subject, event.time_us,
            event.raw if req.action is Action.AMEND else None, type_, subject, time_us,
        )  # fmt: skip
