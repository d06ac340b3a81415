"""The middleware's usage-event sender: the client SDK (``meterline.client.Client``) underneath.

Guarantees, in order (the client's, see docs/client.md):
1. ``submit`` never blocks on the network and never raises. Without a spool, a full queue
   drops the *newest* event and counts it in ``dropped``; with ``SenderOptions.spool_dir``
   every event is written to the on-disk spool first and survives a restart or a crash.
2. A batch is at most ``max_batch`` events and waits at most ``max_delay`` after its first.
3. A batch is retried unchanged (same event ids, so meterline reports repeats as duplicates
   and counts each event once) on connection errors, 5xx and 429, with exponential backoff
   and jitter, never sooner than ``Retry-After``; on any other 4xx, or (without a spool) after
   ``max_attempts``, it is counted in ``failed_batches``. With a spool, batches are retried
   until delivered.
4. ``close(timeout)`` sends what is queued, waiting at most ``timeout``.

The client's thread starts on the first ``submit`` and again after a fork (pre-fork WSGI servers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meterline.client import Client, ClientOptions, ClientStats, TLSOptions
from meterline.sdk.config import SenderOptions

Event = dict[str, Any]


@dataclass(frozen=True)
class SenderStats:
    queued: int
    """Events accepted into the queue (or the spool)."""
    sent: int
    """Events meterline acknowledged (2xx)."""
    dropped: int
    """Events given up on: the queue or spool was full, the sender was closed, the batch was
    refused or out of attempts, or meterline rejected the event (``client.stats`` says which)."""
    failed_batches: int
    """Batches given up on (4xx other than 429, or out of attempts)."""
    retries: int
    """POSTs repeated after a retryable failure."""


class EventSender:
    def __init__(
        self, url: str, api_key: str | None, options: SenderOptions | None = None, tls: TLSOptions | None = None
    ) -> None:
        self._options = options or SenderOptions()
        self.client = Client(url, api_key, client_options(self._options, tls or TLSOptions()))
        """The client underneath: its ``stats`` break ``dropped`` down by reason."""

    @property
    def stats(self) -> SenderStats:
        return _stats(self.client.stats)

    def submit(self, event: Event) -> bool:
        """Queue one event; False when it was dropped."""
        return self.client.submit(event)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was sent or given up on; False on timeout."""
        return self.client.flush(timeout)

    def close(self, timeout: float | None = None) -> SenderStats:
        """Send what is queued (waiting at most ``timeout``, default ``close_timeout``), then stop."""
        return _stats(self.client.close(self._options.close_timeout if timeout is None else timeout))


def client_options(o: SenderOptions, tls: TLSOptions) -> ClientOptions:
    return ClientOptions(
        spool_dir=o.spool_dir,
        spool_fsync=o.spool_fsync,
        max_queue=o.max_queue,
        max_batch=o.max_batch,
        max_delay=o.max_delay,
        max_attempts=None if o.spool_dir is not None else o.max_attempts,
        backoff_base=o.backoff_base,
        backoff_max=o.backoff_max,
        request_timeout=o.request_timeout,
        close_timeout=o.close_timeout,
        tls=tls,
    )


def _stats(s: ClientStats) -> SenderStats:
    return SenderStats(s.recorded, s.sent, s.dropped, s.failed_batches, s.retries)
