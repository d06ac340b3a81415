"""What ``meterline rebuild`` found: the stored rollups against a rebuild from the ledger (embedded
mode) or from ClickHouse's raw events (scale mode)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    """Events folded (the ledger's entries, or the raw events)."""
    differences: dict[str, int]
    """Differing rows per table."""
    replaced: bool
    """Whether the rebuilt rows replaced the stored ones (never when only checking)."""
    details: tuple[str, ...] = ()
    """Each differing meter, subject, window and group, stored and rebuilt (scale mode; the
    embedded rebuild counts differing rows per table only)."""

    @property
    def identical(self) -> bool:
        return not any(self.differences.values())
