"""The billing scheduler: a background loop that runs due billing periods every interval.

It waits one interval before its first run, so a restart does not race a run started by hand.
A failed run is logged (with its traceback, counted in /metrics) and retried at the next tick;
since runs are idempotent, a tick that overlaps a run from the API or the CLI only finds nothing
left to do.
"""

from __future__ import annotations

import logging

from meterline.domain.billing.records import RunReport
from meterline.runtime.background import Monitor, Ticker
from meterline.services.billing_runs import BillingRuns

log = logging.getLogger("meterline.billing")


class BillingScheduler:
    def __init__(self, runs: BillingRuns, *, enabled: bool, interval_s: float, monitor: Monitor | None) -> None:
        self._runs = runs
        self._enabled = enabled
        # a supervised loop: a failed run is logged with its traceback, counted, and retried
        self._ticker = Ticker("billing", self._run, lambda: interval_s, monitor, error_pause=0.0)
        self.last: RunReport | None = None

    def start(self) -> None:
        if self._enabled:
            self._ticker.start()

    def close(self) -> None:
        self._ticker.close(timeout=30)

    def _run(self) -> None:
        self.last = self._runs.run()
        if self.last.created or self.last.failed:
            created, failed = len(self.last.created), len(self.last.failed)
            log.info(
                "billing run: %d invoices created, %d windows failed",
                created,
                failed,
                extra={"invoices_created": created, "windows_failed": failed},
            )
