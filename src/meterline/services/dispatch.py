"""Delivering alerts: one background thread drains due deliveries from a :class:`DeliveryStore`.

A delivery is one (event, channel) pair; the store remembers its state:

    PENDING --2xx--> SUCCESS
       |  \\--error, attempts < max_attempts--> PENDING (next_attempt_us = now + backoff)
       \\-----error, attempts = max_attempts--> FAILED

Guarantees:

1. At least once. A webhook is POSTed first and recorded after; if the process dies in between,
   the delivery is still due and is sent again.
2. Receivers can deduplicate: ``webhook-id`` is the event id, the same on every attempt and resend.
   ``webhook-timestamp`` is the time of the attempt, and the signature covers the exact bytes sent.
3. Isolation: one delivery's failure (HTTP, timeout, bad payload, even a store error while recording
   it) is logged and never stops the others or the thread.
4. Webhooks reach public addresses only unless ``allow_private_targets`` (see
   :mod:`meterline.domain.notify.targets`): a refused target is a ``FAILED`` delivery at once, with
   nothing sent; redirects are never followed.
5. A disabled channel gets no attempt: the delivery is recorded ``FAILED`` with error
   ``channel disabled`` and its attempt count unchanged, so a resend after re-enabling works.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from meterline.domain.clock import Clock
from meterline.domain.notify import payloads, signing
from meterline.domain.notify.targets import TargetRefused, guarded_client
from meterline.ports.deliveries import PENDING, DeliveryStore, Due
from meterline.runtime.background import Loop, Monitor

SUCCESS, FAILED = "SUCCESS", "FAILED"
USER_AGENT = "meterline-webhooks/1"
ERROR_CHARS = 200
_READ_CAP = 1024  # bytes of a response body read for the error text; the rest is never downloaded

log = logging.getLogger(__name__)
alerts_log = logging.getLogger("meterline.alerts")


@dataclass(frozen=True)
class Outcome:
    """What one attempt produced."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False  # retrying cannot help (the payload itself is unusable)


def backoff(attempts: int, initial: float, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``initial * 2**(attempts-1)`` capped at
    ``maximum``, with equal jitter (a uniformly random point in the upper half), so the delay keeps
    growing but retries from many deliveries do not arrive together. ``rand`` returns ``[0, 1)``."""
    ceiling = min(maximum, initial * (1 << min(max(attempts - 1, 0), 62)))
    return ceiling / 2 + rand() * ceiling / 2


def clip(text: str, limit: int = ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Dispatcher:
    """Delivers due alerts through ``store``: call :meth:`start` for the thread, or :meth:`run_once`.

    ``timeout`` bounds each phase of an HTTP attempt (connect, write, read) in seconds.
    ``max_attempts`` attempts are made before a delivery is FAILED. ``backoff_initial`` and
    ``backoff_max`` (seconds) shape :func:`backoff`; ``rand`` is its jitter source. Webhooks go to
    public addresses only unless ``allow_private_targets``. ``client`` is used as given (and not
    closed) when passed, with no address checks of its own; otherwise the dispatcher owns one.
    """

    def __init__(
        self,
        store: DeliveryStore,
        clock: Clock,
        *,
        timeout: float,
        max_attempts: int,
        backoff_initial: float,
        backoff_max: float,
        client: httpx.Client | None = None,
        rand: Callable[[], float] = random.random,
        poll_interval: float = 0.5,
        batch_size: int = 100,
        allow_private_targets: bool = False,
        monitor: Monitor | None = None,
    ) -> None:
        if max_attempts < 1 or backoff_initial <= 0 or backoff_max < backoff_initial or timeout <= 0:
            raise ValueError("need max_attempts >= 1, timeout > 0 and 0 < backoff_initial <= backoff_max")
        self._store, self._clock, self._rand = store, clock, rand
        self._timeout, self._max_attempts = timeout, max_attempts
        self._backoff = (backoff_initial, backoff_max)
        self._poll, self._batch = poll_interval, batch_size
        self._owns_client = client is None
        self._client = client or guarded_client(timeout, allow_private_targets)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._monitor = monitor
        self._thread: Loop | None = None
        self._ran = False

    def start(self) -> None:
        """Start the delivery thread (once): a supervised loop that survives any error."""
        if self._thread is None:
            self._thread = Loop("dispatch", self.run_once, self._idle, self._monitor, error_pause=0.0)
            self._thread.start()

    def wake(self) -> None:
        """New work is due: deliver now instead of at the next poll."""
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, waiting at most one attempt's time for the delivery in flight."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
            thread.join(timeout=self._timeout * 4 + 1)  # connect + write + read + slack
            if thread.is_alive():
                log.warning("alert dispatcher did not stop in time; leaving it to exit with the process")
                return
        if self._owns_client:
            self._client.close()

    def run_once(self) -> int:
        """Attempt every delivery due now; return the number of attempts made and recorded.

        Not reentrant: while the thread runs, other code calls :meth:`wake`, never this."""
        now, made, seen = self._clock.now_us(), 0, set[tuple[str, str]]()
        while not self._stop.is_set():
            batch = self._store.due(now, self._batch)
            fresh = [d for d in batch if (d.event_id, d.channel.id) not in seen]
            for due in fresh:
                if self._stop.is_set():
                    break
                seen.add((due.event_id, due.channel.id))
                made += self._deliver_safely(due)
            if len(batch) < self._batch or not fresh:
                break
        return made

    def _idle(self) -> bool:
        """Wait for the next poll or wake-up (not before the first drain); False once closed."""
        if self._ran:
            self._wake.wait(self._poll)
        self._ran = True
        self._wake.clear()  # before draining: a wake() during the drain triggers another one
        return not self._stop.is_set()

    def _deliver_safely(self, due: Due) -> int:
        thread = self._thread
        if thread is not None:
            thread.beat()  # each delivery is bounded by the timeout: progress, not a stall
        try:
            return self._deliver(due)
        except Exception:
            log.exception("alert delivery %s to channel %s failed", due.event_id, due.channel.id)
            return 0

    def _deliver(self, due: Due) -> int:
        if due.channel.disabled:
            self._record(due, FAILED, due.attempts, None, Outcome(ok=False, error="channel disabled"), None)
            return 0
        started = time.monotonic()
        outcome = self._attempt(due)
        duration_ms = int((time.monotonic() - started) * 1000)
        attempts = due.attempts + 1
        if outcome.ok:
            self._record(due, SUCCESS, attempts, None, outcome, duration_ms)
        elif outcome.permanent or attempts >= self._max_attempts:
            self._record(due, FAILED, attempts, None, outcome, duration_ms)
        else:
            delay = backoff(attempts, *self._backoff, rand=self._rand)
            next_us = self._clock.now_us() + int(delay * 1_000_000)
            self._record(due, PENDING, attempts, next_us, outcome, duration_ms)
        return 1

    def _attempt(self, due: Due) -> Outcome:
        """Deliver once; a bug or an unexpected library error counts as a failed attempt, never a stuck one."""
        try:
            return self._log(due) if due.channel.type == "LOG" else self._post(due)
        except Exception as exc:
            log.exception("alert delivery %s to channel %s raised", due.event_id, due.channel.id)
            return Outcome(ok=False, error=f"internal error ({type(exc).__name__})")

    def _record(
        self, due: Due, state: str, attempts: int, next_us: int | None, outcome: Outcome, duration_ms: int | None
    ) -> None:
        self._store.record(
            due.event_id,
            due.channel.id,
            state=state,
            attempts=attempts,
            next_attempt_us=next_us,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=duration_ms,
        )

    def _log(self, due: Due) -> Outcome:
        alert = _decode(due.payload)
        alert_type = alert.get("type", "alert") if isinstance(alert, dict) else "alert"
        alerts_log.info(
            "%s %s",
            alert_type,
            due.event_id,
            extra={
                "event_id": due.event_id,
                "channel_id": due.channel.id,
                "namespace": due.channel.namespace,
                "alert": alert,
            },
        )
        return Outcome(ok=True)

    def _post(self, due: Due) -> Outcome:
        spec = due.channel.spec
        if spec.format == "slack":
            alert = _decode(due.payload)
            if not isinstance(alert, dict):
                return Outcome(ok=False, error="alert payload is not a JSON object", permanent=True)
            body = msgspec.json.encode(payloads.slack(alert))
        else:
            body = due.payload
        return self._send(spec.url or "", self._headers(due, body), body)

    def _headers(self, due: Due, body: bytes) -> dict[str, str]:
        spec = due.channel.spec
        timestamp = self._clock.now_us() // 1_000_000
        return {
            "user-agent": USER_AGENT,
            **(spec.custom_headers or {}),
            "content-type": "application/json",
            **signing.headers(spec.signing_secret or "", due.event_id, timestamp, body),
        }

    def _send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            with self._client.stream("POST", url, content=body, headers=headers, timeout=self._timeout) as response:
                if response.is_success:
                    return Outcome(ok=True, status_code=response.status_code)
                snippet = _head(response)
        except TargetRefused as exc:
            return Outcome(ok=False, error=clip(str(exc)), permanent=True)
        except httpx.TimeoutException:
            return Outcome(ok=False, error=f"timed out after {self._timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Outcome(ok=False, error=clip(f"{type(exc).__name__}: {exc}"))
        error = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {snippet}" if snippet else "")
        return Outcome(ok=False, status_code=response.status_code, error=clip(error))


def _head(response: httpx.Response) -> str:
    """The start of a response body as text, reading no more than ``_READ_CAP`` bytes."""
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= _READ_CAP:
            break
    return data[:_READ_CAP].decode("utf-8", errors="replace")


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", errors="replace")
