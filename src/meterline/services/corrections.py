"""Corrections of accepted events: void, amend, history (``domain.events.corrections``).

An amend is a whole CloudEvent, decoded and checked as ingest would (``id``, ``source`` and
``specversion`` may be left out: they are the original's), except that the late-arrival window
does not apply: correcting an event of a closed period is the point. The live meters' checks
run in the ledger's transaction (``amend_unreadable``). An amend that moves the event to a
subject no customer owns is refused (``amend_unknown_subject``) where the namespace's
unknown-subject policy is ``quarantine`` or ``reject``: ingest would not count such an event,
and a correction cannot be quarantined. Keeping the event's own subject is always allowed.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from meterline.domain.clock import Clock
from meterline.domain.customers.model import UnknownSubjects
from meterline.domain.errors import InvalidInput
from meterline.domain.events.corrections import Action, CorrectionRequest, History, check_request
from meterline.domain.events.decode import Limits, decode_one
from meterline.ports.corrections import Corrected, Corrections

_members = msgspec.json.Decoder(dict[str, msgspec.Raw])  # values kept verbatim: numbers stay exact


Owned = Callable[[str, str], bool]
"""Whether a live customer owns (namespace, subject): its key or one of its subject keys."""
Policy = Callable[[str], UnknownSubjects]
"""The namespace's unknown-subject policy (its setting, else the configured default)."""


class CorrectionService:
    def __init__(
        self,
        store: Corrections,
        clock: Clock,
        *,
        future_skew_us: int,
        policy: Policy = lambda namespace: UnknownSubjects.ACCEPT,
        owned: Owned = lambda namespace, subject: True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = Limits(1, future_skew_us, None)
        self._policy = policy
        self._owned = owned

    def void(self, namespace: str, source: str, event_id: str, *, reason: str, actor: str) -> Corrected:
        request = CorrectionRequest(namespace, source, event_id, Action.VOID, reason, actor)
        check_request(request)
        return self._store.correct(request)

    def amend(self, namespace: str, source: str, event_id: str, event: bytes, *, reason: str, actor: str) -> Corrected:
        """``event``: the amended CloudEvent, a JSON object."""
        try:
            members = _members.decode(event)
        except msgspec.DecodeError:
            raise InvalidInput("`event` must be a JSON object (a CloudEvent)", code="invalid_event") from None
        body = {"specversion": msgspec.Raw(b'"1.0"'), "id": event_id, "source": source, **members}
        candidate = decode_one(0, msgspec.Raw(msgspec.json.encode(body)), namespace, self._clock.now_us(), self._limits)
        if candidate.event is None:
            assert candidate.rejection is not None
            raise InvalidInput(
                f"The amended event is not valid: {candidate.rejection.message}",
                code="invalid_event",
                reason=candidate.rejection.reason.value,
            )
        request = CorrectionRequest(namespace, source, event_id, Action.AMEND, reason, actor, candidate.event)
        check_request(request)
        self._check_subject(namespace, source, event_id, candidate.event.subject)
        return self._store.correct(request)

    def _check_subject(self, namespace: str, source: str, event_id: str, subject: str) -> None:
        """Refuse moving the event to a subject ingest would not count (see the module)."""
        if self._policy(namespace) is UnknownSubjects.ACCEPT or self._owned(namespace, subject):
            return
        current = self._store.history(namespace, source, event_id).current
        if current is not None and current.subject == subject:
            return  # its own subject: correcting the quantity or time of an event already counted
        raise InvalidInput(
            f"subject {subject!r} belongs to no customer, and the namespace's unknown-subject policy is"
            f" {self._policy(namespace).value}: create the customer first",
            code="amend_unknown_subject",
        )

    def history(self, namespace: str, source: str, event_id: str) -> History:
        return self._store.history(namespace, source, event_id)
