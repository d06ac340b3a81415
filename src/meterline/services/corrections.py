"""Corrections of accepted events: void, amend, history (``domain.events.corrections``).

An amend is a whole CloudEvent, decoded and checked as ingest would (``id``, ``source`` and
``specversion`` may be left out: they are the original's), except that the late-arrival window
does not apply: correcting an event of a closed period is the point. The live meters' checks
run in the ledger's transaction (``amend_unreadable``).
"""

from __future__ import annotations

import msgspec

from meterline.domain.clock import Clock
from meterline.domain.errors import InvalidInput
from meterline.domain.events.corrections import Action, CorrectionRequest, History, check_request
from meterline.domain.events.decode import Limits, decode_one
from meterline.ports.corrections import Corrected, Corrections

_members = msgspec.json.Decoder(dict[str, msgspec.Raw])  # values kept verbatim: numbers stay exact


class CorrectionService:
    def __init__(self, store: Corrections, clock: Clock, *, future_skew_us: int) -> None:
        self._store = store
        self._clock = clock
        self._limits = Limits(1, future_skew_us, None)

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
        return self._store.correct(request)

    def history(self, namespace: str, source: str, event_id: str) -> History:
        return self._store.history(namespace, source, event_id)
