"""How long the scale-mode log keeps a record, against the longest delay an erasure may take
(``erasure.max_delay``): pure rules, no broker (docs/erasure.md, "The Kafka topic").

Kafka records are immutable: an erased subject's records stay in the topic until retention
deletes them. Time-based retention deletes whole segments, and only once a segment's newest
record is older than ``retention.ms``; a segment takes records for up to ``segment.ms`` before
it is rolled. So a record written at time t is gone by t + ``segment.ms`` + ``retention.ms``
at the latest (plus the broker's retention check interval, ``log.retention.check.interval.ms``,
five minutes by default). Size-based retention (``retention.bytes``) only deletes sooner.
"""

from __future__ import annotations

from dataclasses import dataclass

SEGMENT_MS_DEFAULT = 604_800_000
"""Kafka's default ``segment.ms`` (7 days), assumed when the broker reports a retention but no
segment time."""
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class LogRetention:
    """A topic's effective retention configs as its broker reported them (None: not reported)."""

    retention_ms: int | None
    segment_ms: int | None = None
    unknown_because: str | None = None
    """Why nothing is known (the broker did not answer, or reported no ``retention.ms``)."""

    def kept_ms(self) -> int | None:
        """How long after a record's time it may still be in the topic at the latest: -1
        forever (``retention.ms`` -1), None unknown."""
        if self.retention_ms is None:
            return None
        if self.retention_ms < 0:
            return -1
        segment = SEGMENT_MS_DEFAULT if self.segment_ms is None or self.segment_ms < 0 else self.segment_ms
        return self.retention_ms + segment


def deadline_problem(topic: str, retention: LogRetention, max_delay_ms: int) -> str | None:
    """Why the topic may keep an erased subject's records longer than ``max_delay_ms``, or None
    when it cannot."""
    kept = retention.kept_ms()
    limit = f"erasure.max_delay ({_days(max_delay_ms)})"
    if kept is None:
        why = retention.unknown_because or "the broker reported no retention.ms"
        return (
            f"the retention of Kafka topic {topic!r} is unknown ({why}): erased subjects' records may stay in it"
            f" longer than {limit}"
        )
    if kept < 0:
        return (
            f"Kafka topic {topic!r} keeps records forever (retention.ms = -1): erased subjects' records are never"
            f" deleted; set retention.ms + segment.ms to at most {limit}"
        )
    if kept > max_delay_ms:
        segment = retention.segment_ms if retention.segment_ms is not None else SEGMENT_MS_DEFAULT
        return (
            f"Kafka topic {topic!r} keeps records up to {_days(kept)} (retention.ms {retention.retention_ms} +"
            f" segment.ms {segment}): longer than {limit}; lower retention.ms or segment.ms"
        )
    return None


def _days(ms: int) -> str:
    days = ms / DAY_MS
    return f"{days:g} days" if days >= 1 else f"{ms / 3_600_000:g} hours"
