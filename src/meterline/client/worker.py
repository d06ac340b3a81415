"""Delivery: read a batch from the store, POST it until it is delivered or given up, ack it.

One batch is in flight at a time, so the store's order is the order meterline receives.
A batch is retried unchanged (same event ids: meterline reports repeats as duplicates and
counts each event once); it is acknowledged in the store only after meterline answered 2xx
or the batch was given up, so a crash in between sends it again, never loses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from meterline.client.options import ClientOptions
from meterline.client.spool import Batch
from meterline.client.stats import Counters
from meterline.client.stores import Store
from meterline.client.transport import Delivery, backoff, deliver

log = logging.getLogger("meterline.client")


class Deliverer:
    """Sends batches of one store; ``stop`` (an Event) ends waits between retries at once."""

    def __init__(
        self, store: Store, http: httpx.Client, options: ClientOptions, counters: Counters, stop: threading.Event
    ) -> None:
        self.store, self.http, self.options, self.counters, self.stop = store, http, options, counters, stop
        self.spooled = options.spool_dir is not None
        self.on_ack: Callable[[int], None] = lambda n: None
        self.keep_when_exhausted = False
        """Out of attempts: leave the batch in the store and stop (replay) instead of dropping it."""

    def send(self, batch: Batch) -> bool:
        """Deliver ``batch`` or give it up; False when ``stop`` interrupted it (not acknowledged)."""
        body = b"[" + b",".join(batch.payloads) + b"]"
        n, attempt = len(batch.payloads), 0
        while True:
            result = deliver(self.http, body, n, hold_on_auth=self.spooled)
            if result.kind == "done":
                self._delivered(batch, result)
                return True
            if result.kind == "refused":
                log.error("meterline refused a batch of %d events (%s); dropped", n, result.detail)
                return self._give_up(batch, "refused")
            attempt += 1
            if self.options.max_attempts is not None and attempt >= self.options.max_attempts:
                if self.keep_when_exhausted:
                    return False
                log.error("meterline client gave up on a batch of %d events after %d tries", n, attempt)
                return self._give_up(batch, "attempts_exhausted")
            with self.counters.lock:
                self.counters.retries += 1
            log.warning("meterline batch of %d events not delivered (%s); retrying", n, result.detail or result.status)
            if not self._pause(self._wait(attempt, result)):
                return False

    def _wait(self, attempt: int, result: Delivery) -> float:
        ours = backoff(attempt - 1, self.options.backoff_base, self.options.backoff_max)
        return max(ours, min(result.retry_after, self.options.max_retry_after))

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (syncing the spool on its interval meanwhile); False when stopped."""
        deadline = time.monotonic() + seconds
        step = self.options.spool_fsync_interval if self.options.spool_fsync == "interval" else seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.wait(min(left, step)):
                return False
            self.store.sync()
        return not self.stop.is_set()

    def _delivered(self, batch: Batch, result: Delivery) -> None:
        self.store.ack(batch)
        rejected = sum(result.rejected.values())
        with self.counters.lock:
            self.counters.accepted += result.accepted
            self.counters.duplicates += result.duplicates
            self.counters.dropped["rejected"] += rejected
            for reason, k in result.rejected.items():
                self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + k
        if rejected:
            log.warning("meterline rejected %d events: %s", rejected, dict(result.rejected))
        self.on_ack(len(batch.payloads))

    def _give_up(self, batch: Batch, reason: str) -> bool:
        self.store.ack(batch)
        with self.counters.lock:
            self.counters.failed_batches += 1
        self.counters.drop(reason, len(batch.payloads))
        self.on_ack(len(batch.payloads))
        return True
