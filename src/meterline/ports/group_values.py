"""The group values each meter admitted, shared by every API node of scale mode.

The cardinality cap (``ingest.max_group_cardinality``: distinct values per meter ``groupBy``
dimension) is a property of the meter, not of one process: API nodes that each admitted up to
the cap on their own would accept more values than the cap, and the sink workers, which fold
under the same cap, would then leave accepted events uncounted. So a node asks the registry
about every value it has not seen before (``claim``); what the registry refuses is rejected at
ack time (``group_cardinality_exceeded``), and what it admits stays admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

GroupValue = tuple[int, str, str]
"""(meter key, dimension, value)."""


class GroupValueRegistry(Protocol):
    def claim(self, values: Sequence[GroupValue], cap: int) -> set[GroupValue]:
        """Of ``values``, those their meter admits: admitted before, or admitted now, in the
        order given, while their dimension holds fewer than ``cap`` values. Atomic per call."""
        ...
