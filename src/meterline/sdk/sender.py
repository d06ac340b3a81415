"""A background sender: a bounded queue drained by one thread into CloudEvents batch POSTs.

Guarantees, in order:
1. ``submit`` never blocks and never raises: a full queue drops the *newest* event, counts it
   in ``dropped`` and logs a warning (at most one every 5 s). Memory stays bounded.
2. A batch is at most ``max_batch`` events and waits at most ``max_delay`` after its first.
3. A batch is retried unchanged (same event ids, so meterline reports repeats as duplicates
   and counts each event once) on connection errors, 5xx and 429, with exponential backoff
   and jitter; on any other 4xx, or after ``max_attempts``, it is counted in ``failed_batches``.
4. ``close(timeout)`` sends what is queued, waiting at most ``timeout``.

The thread starts on the first ``submit`` and again after a fork (pre-fork WSGI servers).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from meterline.sdk.config import SenderOptions

log = logging.getLogger("meterline.sdk")
BATCH = "application/cloudevents-batch+json"
_encode = msgspec.json.Encoder(decimal_format="number").encode
Event = dict[str, Any]


@dataclass(frozen=True)
class SenderStats:
    queued: int
    """Events accepted into the queue."""
    sent: int
    """Events meterline acknowledged (2xx)."""
    dropped: int
    """Events dropped because the queue was full."""
    failed_batches: int
    """Batches given up on (4xx other than 429, or out of attempts)."""
    retries: int
    """POSTs repeated after a retryable failure."""


class EventSender:
    def __init__(self, url: str, api_key: str, options: SenderOptions | None = None) -> None:
        self._options = options or SenderOptions()
        self._url, self._api_key = url, api_key
        self._queue: queue.Queue[Event] = queue.Queue(self._options.max_queue)
        self._lock = threading.Condition()
        self._counts = dict.fromkeys(("queued", "sent", "dropped", "failed_batches", "retries"), 0)
        self._pending = 0
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._last_drop_log = 0.0

    @property
    def stats(self) -> SenderStats:
        with self._lock:
            return SenderStats(**self._counts)

    def submit(self, event: Event) -> bool:
        """Queue one event; False when it was dropped."""
        if self._closing.is_set():
            return self._dropped()
        self._ensure_thread()
        with self._lock:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                return self._dropped()
            self._counts["queued"] += 1
            self._pending += 1
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was sent or given up on; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = None) -> SenderStats:
        """Send what is queued (waiting at most ``timeout``, default ``close_timeout``), then stop."""
        timeout = self._options.close_timeout if timeout is None else timeout
        self._closing.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)
            if thread.is_alive():
                self._abort.set()
                log.warning("meterline sender closed with %d events not delivered", self._pending)
        return self.stats

    def _dropped(self) -> bool:
        with self._lock:
            self._counts["dropped"] += 1
            dropped = self._counts["dropped"]
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            self._last_drop_log = now
            log.warning(
                "meterline event queue full (%d): dropped newest event; %d dropped so far",
                self._options.max_queue,
                dropped,
            )
        return False

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="meterline-sender", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": BATCH}
        with httpx.Client(base_url=self._url, headers=headers, timeout=self._options.request_timeout) as http:
            while not self._abort.is_set() and (batch := self._next_batch()) is not None:
                delivered = self._deliver(http, batch)
                with self._lock:
                    if delivered:
                        self._counts["sent"] += len(batch)
                    else:
                        self._counts["failed_batches"] += 1
                    self._pending -= len(batch)
                    self._lock.notify_all()

    def _next_batch(self) -> list[Event] | None:
        """Block for the first event, then gather more until full or ``max_delay`` passed."""
        while True:
            try:
                first = self._queue.get(timeout=0.05)
                break
            except queue.Empty:
                if self._closing.is_set():
                    return None
        batch = [first]
        deadline = time.monotonic() + self._options.max_delay
        while len(batch) < self._options.max_batch:
            wait = 0.0 if self._closing.is_set() else deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _deliver(self, http: httpx.Client, batch: list[Event]) -> bool:
        body = _encode(batch)
        for attempt in range(self._options.max_attempts):
            if attempt:
                with self._lock:
                    self._counts["retries"] += 1
            retry_after = self._post(http, body)
            if retry_after is None:
                return True
            if retry_after < 0 or attempt + 1 == self._options.max_attempts:
                break
            if self._abort.wait(min(self._options.backoff_max, max(retry_after, self._backoff(attempt)))):
                break
        log.error("meterline sender gave up on a batch of %d events", len(batch))
        return False

    def _post(self, http: httpx.Client, body: bytes) -> float | None:
        """None: delivered. -1: not retryable. Otherwise retryable, after at least that many seconds."""
        try:
            response = http.post("/api/v1/events", content=body)
        except httpx.HTTPError as exc:
            log.warning("meterline unreachable while sending events: %s", type(exc).__name__)
            return 0.0
        if response.is_success:
            return None
        log.warning("meterline answered %d to an event batch", response.status_code)
        if response.status_code == 429 or response.status_code >= 500:
            return _retry_after(response)
        return -1.0

    def _backoff(self, attempt: int) -> float:
        cap: float = min(self._options.backoff_max, self._options.backoff_base * 2**attempt)
        return cap / 2 + random.uniform(0, cap / 2)  # equal jitter: spread, never much shorter than planned


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else 0.0
