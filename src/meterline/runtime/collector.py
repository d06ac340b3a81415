"""The cyclic garbage collector's settings for a long-running server process.

Every ingested event makes container objects (decoded JSON, the event, its readings) that
reference counting frees, but each allocation still counts towards CPython's generation-0
threshold (700 by default): under load a collection ran every few events, re-scanning the
survivors each time. Measured in-process (``benchmarks/aggregation.py``, 1000-event appends
and the aggregator behind them, taking turns): about 28 % of the CPU per event went to it.

Cycles are still collected, after 100,000 container allocations instead of 700; what startup
created (modules, the app, its configuration) is moved out of the collector's reach first,
since it lives as long as the process.
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 50, 100)


def tune_for_throughput() -> None:
    """Apply once, after start-up and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
