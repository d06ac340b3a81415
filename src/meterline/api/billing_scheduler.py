"""The server's billing scheduler: a thread that runs due billing periods every interval.

It waits one interval before its first run, so a restart does not race a run started by hand.
A failed run is logged (with its traceback, counted in /metrics) and retried at the next tick;
since runs are idempotent, a tick that overlaps a run from the API or the CLI only finds nothing
left to do.
"""

from __future__ import annotations

import logging

from meterline.adapters.sqlite.billing import SqliteBilling
from meterline.adapters.sqlite.billing_model import Settings
from meterline.adapters.sqlite.billing_run import BillingRuns, RunReport
from meterline.config import BillingConfig
from meterline.runtime.background import Ticker

log = logging.getLogger("meterline.billing")


def settings_from(config: BillingConfig) -> Settings:
    """The billing-run settings of a ``[billing]`` config section."""
    return Settings(
        prefix=config.invoice_prefix,
        digits=config.invoice_digits,
        grace_us=int(config.grace_period.total_seconds() * 1_000_000),
        lookback_us=int(config.adjustment_lookback.total_seconds() * 1_000_000),
    )


class BillingScheduler:
    def __init__(self, billing: SqliteBilling, config: BillingConfig) -> None:
        self._runs = BillingRuns(billing)
        self._config = config
        # a supervised loop: a failed run is logged with its traceback, counted, and retried
        self._ticker = Ticker(
            "billing",
            self._run,
            lambda: self._config.scheduler_interval.total_seconds(),
            billing.db.monitor,
            error_pause=0.0,
        )
        self.last: RunReport | None = None

    def start(self) -> None:
        if self._config.scheduler_enabled:
            self._ticker.start()

    def close(self) -> None:
        self._ticker.close(timeout=30)

    def _run(self) -> None:
        self.last = self._runs.run(settings_from(self._config))
        if self.last.created or self.last.failed:
            created, failed = len(self.last.created), len(self.last.failed)
            log.info(
                "billing run: %d invoices created, %d windows failed",
                created,
                failed,
                extra={"invoices_created": created, "windows_failed": failed},
            )
