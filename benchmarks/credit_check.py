"""The cost the credit engine adds to one entitlement check, in-process.

    .venv/bin/python benchmarks/credit_check.py [--calls 20000]

Times (perf_counter_ns, call by call) what ``LiveCounters.value`` computes from a live
counter's usage for a metered entitlement with 3 grants, in three cases:

- ``sum``: the former rule, the sum of the grants active now against the period's usage
  (``grant_total`` + ``metered_value``), for comparison;
- ``engine, no event``: the credit engine when no grant starts, expires, is voided or recurs
  inside the current period (one segment; the period-start state comes from the cache);
- ``engine, N events``: with N grant expiries inside the current period (N + 1 segments; the
  earlier segments' usage is read through ``rollups``, here a constant-time stand-in, so the
  figure is the engine's own cost, without the usage store's).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from decimal import Decimal

from _common import machine, percentile

from meterline.domain.clock import from_us, to_us
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, Grant, GrantInput, UsagePeriodInput
from meterline.domain.entitlements.value import grant_total, metered_value
from meterline.domain.periods import recurrence
from meterline.services.entitlement_balances import Burndown, StartCache

MINUTE = 60_000_000
START = to_us(datetime(2026, 3, 1, tzinfo=UTC))
NOW = START + 9 * 24 * 60 * MINUTE


def entitlement() -> Entitlement:
    spec = EntitlementInput("metered", "f", usage_period=UsagePeriodInput("MONTH"), issue_after_reset=Decimal(100))
    return Entitlement("e", "ns", "c", "c", "f", "f", spec, START, START, START)


def grants(events: int) -> list[Grant]:
    out = []
    for i in range(3):
        expires = START + (i + 1) * 24 * 60 * MINUTE if i < events else START + 400 * 24 * 60 * MINUTE
        spec = GrantInput(Decimal(50), from_us(START), {"duration": "DAY", "count": 30})
        out.append(Grant(f"g{i}", "e", spec, START, expires, START))
    return out


def timed(fn, calls: int) -> list[int]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    ent, usage = entitlement(), Decimal("123.5")
    rec = recurrence("MONTH", from_us(START), "UTC")
    period = rec.period_at_us(NOW)
    cases = {}
    gs = grants(0)
    cases["sum (former rule)"] = lambda: metered_value(
        ent, usage, grant_total(gs, period, NOW), period, NOW, project=False
    )
    for n in (0, 1, 3):
        bd = Burndown(ent, grants(n), rec, StartCache())

        def call(bd: Burndown = bd) -> object:
            return bd.value(NOW, lambda a, b: Decimal(1), live_usage=usage, project=False, period=period)

        cases[f"engine, {n} event(s) in the period"] = call
    print(machine())
    print(f"{'case':40} {'p50 µs':>8} {'p99 µs':>8}")
    for name, fn in cases.items():
        timed(fn, 500)  # warm up
        ns = sorted(timed(fn, args.calls))
        print(f"{name:40} {percentile(ns, 50) / 1000:8.1f} {percentile(ns, 99) / 1000:8.1f}")


if __name__ == "__main__":
    main()
