"""The erasure deadline in scale mode: an erased subject's records stay in the Kafka topic (its
records are immutable) until the topic's retention deletes them, so that retention must end
within ``erasure.max_delay`` (docs/erasure.md, "The Kafka topic").

Each API node reads the topic's retention at start (``check``, which logs what it found) and
again at each erasure (``kept_ms``, recorded in the audit record as when the subject's records
have left the topic); ``problem`` is the latest finding, a ``/readyz`` warning (``METER-007``):
a topic that keeps records forever, longer than the setting, or whose retention the broker did
not report. A node stays ready: erasure works, and the operator is told what it cannot promise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from meterline.domain.errors import OpsCode
from meterline.domain.log_retention import LogRetention, deadline_problem

log = logging.getLogger("meterline.erasure")


class ErasureDeadline:
    def __init__(self, topic: str, read: Callable[[], LogRetention], max_delay_ms: int) -> None:
        """``read``: the topic's retention from its broker (never raises: unknown instead)."""
        self._topic = topic
        self._read = read
        self._max_delay_ms = max_delay_ms
        self._problem: str | None = None

    def check(self) -> str | None:
        """Read the retention now, log the finding (a warning, or how long records are kept),
        keep it for ``problem``; the finding."""
        self._refresh(always=True)
        return self._problem

    def kept_ms(self) -> int | None:
        """How long the topic keeps a record now (ms; -1 forever; None unknown), read afresh
        (a finding that changed is logged)."""
        return self._refresh(always=False).kept_ms()

    def problem(self) -> str | None:
        """The latest finding (None: records leave the topic within ``erasure.max_delay``)."""
        return self._problem

    def _refresh(self, always: bool) -> LogRetention:
        retention = self._read()
        problem = deadline_problem(self._topic, retention, self._max_delay_ms)
        if always or problem != self._problem:
            if problem is not None:
                code = OpsCode.ERASURE_DEADLINE.value
                log.warning("%s %s", code, problem, extra={"operationalCode": code})
            else:
                log.info(
                    "Kafka topic %r keeps records at most %s ms (retention.ms + segment.ms): within erasure.max_delay",
                    self._topic,
                    retention.kept_ms(),
                    extra={"logKeptMs": retention.kept_ms()},
                )
        self._problem = problem
        return retention
