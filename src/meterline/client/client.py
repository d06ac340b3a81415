"""``Client`` (threads) and ``AsyncClient`` (asyncio): record usage events, never waiting on the network.

    client = Client("https://meter.example:8888", api_key, ClientOptions(spool_dir="/var/spool/app"))
    client.record("prompt", subject="acme", data={"tokens": 1200})
    client.close()        # or use it as a context manager; an exit hook closes it too

``record`` builds a CloudEvent with a new ULID id (so every resend is recognised by
meterline), encodes it, and keeps it: appended to the spool (one ``write()``; with
``spool_fsync="always"`` also an fsync) or to the bounded memory queue. It raises only for
data that cannot be encoded as JSON; an event it cannot keep is dropped and counted, and
``record`` returns None. A background thread (started on first use, and again in a forked
child) sends batches and retries them; ``stats`` tells what was sent, is pending, was dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time as _time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
from ulid import ULID

from meterline.client.options import ClientConfigError, ClientOptions
from meterline.client.stats import ClientStats, Counters
from meterline.client.stores import MemoryQueue, Store, open_spool
from meterline.client.transport import http_client
from meterline.client.worker import Deliverer

log = logging.getLogger("meterline.client")
_encode = msgspec.json.Encoder(decimal_format="number").encode


def _rfc3339(when: datetime | None) -> str:
    when = when or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("event times must carry a time zone")
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Client:
    """A thread-safe producer of usage events for one meterline server."""

    def __init__(self, url: str, api_key: str | None = None, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        problems = self.options.validate()
        if not url.startswith(("http://", "https://")):
            problems.append(f"url {url!r} must start with http:// or https://")
        if problems:
            raise ClientConfigError(problems)
        self.url, self._api_key = url.rstrip("/"), api_key
        self._counters = Counters()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._closed = False
        self._flushing = 0
        self._store: Store | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._idle = False
        ref = weakref.ref(self)
        atexit.register(lambda: (c := ref()) is not None and c.close())

    # -- recording ---------------------------------------------------------------------------

    def record(
        self,
        type: str,
        subject: str,
        data: Mapping[str, Any] | None = None,
        *,
        time: datetime | None = None,
        id: str | None = None,
        source: str | None = None,
    ) -> str | None:
        """Keep one usage event for sending; its id, or None when it was dropped (see ``stats``)."""
        event_id = id or str(ULID())
        event = {
            "specversion": "1.0",
            "id": event_id,
            "source": source or self.options.source,
            "type": type,
            "subject": subject,
            "time": _rfc3339(time),
            "data": data if data is not None else {},
        }
        return event_id if self.submit(event) else None

    def submit(self, event: Mapping[str, Any]) -> bool:
        """Keep a ready CloudEvent (a dict with ``id`` and ``source``); False when dropped."""
        payload = _encode(event)
        if self._closed:
            self._counters.drop("closed")
            return False
        store = self._ensure_started()
        why = store.append(payload)
        if why is not None:
            self._counters.drop(why)
            if why != "queue_full" or self._counters.dropped["queue_full"] % 1000 == 1:
                log.warning("meterline event dropped: %s", why)
            return False
        if self.options.spool_fsync == "always" and self.options.spool_dir is not None:
            store.sync()
        with self._counters.lock:
            self._counters.recorded += 1
        if self._idle:
            with self._cond:
                self._cond.notify()
        return True

    # -- flushing, closing, stats ------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        store = self._store
        pending = store.pending if store is not None else 0
        torn = len(store.torn) if store is not None else 0
        return self._counters.snapshot(pending, self.options.spool_dir is not None, torn)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything waiting now, without waiting for batches to fill; False if ``timeout`` passed first.
        With a spool this also starts sending what an earlier process left, before any ``record``."""
        if self.options.spool_dir is not None and not self._closed:
            self._ensure_started()
        store = self._store
        if store is None or self._thread is None:
            return True
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: store.pending == 0, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> ClientStats:
        """Send what is waiting (at most ``timeout``, default ``close_timeout``), then stop. With a
        spool, what could not be sent stays there; without, it is counted as ``closed_unsent``."""
        if self._closed:
            return self.stats
        timeout = self.options.close_timeout if timeout is None else timeout
        self.flush(timeout)
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(max(0.5, min(timeout, 5.0)))
        if isinstance(self._store, MemoryQueue) and (left := self._store.drain()):
            self._counters.drop("closed_unsent", left)
            log.warning("meterline client closed with %d events not delivered", left)
        return self.stats

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background thread ---------------------------------------------------------------

    def _ensure_started(self) -> Store:
        store = self._store
        if store is not None and self._pid == os.getpid():
            return store
        with self._cond:
            if self._store is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._store = self._open_store()
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._store,), name="meterline-client")
                self._thread.daemon = True
                self._thread.start()
            return self._store

    def _open_store(self) -> Store:
        o = self.options
        if o.spool_dir is None:
            return MemoryQueue(o.max_queue)
        return open_spool(Path(o.spool_dir), o.spool_segment_bytes, o.spool_max_bytes)

    def _run(self, store: Store) -> None:
        o = self.options
        with http_client(self.url, self._api_key, o.request_timeout, o.tls) as http:
            deliverer = Deliverer(store, http, o, self._counters, self._stop)
            deliverer.on_ack = self._acked
            try:
                while (batch := self._next_batch(store)) is not None:
                    if not deliverer.send(batch):
                        break
            except Exception:
                log.exception("meterline client's sender failed; events stay pending")
            finally:
                store.close()

    def _acked(self, n: int) -> None:
        with self._cond:
            self._cond.notify_all()

    def _next_batch(self, store: Store) -> Any:
        """Wait for the first event, then up to ``max_delay`` for a full batch; None when stopping."""
        o = self.options
        tick = o.spool_fsync_interval if o.spool_fsync == "interval" else None
        with self._cond:
            while store.pending == 0:
                if self._stop.is_set():
                    return None
                self._idle = True
                self._cond.wait(tick)
                self._idle = False
                store.sync()
            deadline = _now() + o.max_delay
            while store.pending < o.max_batch and not self._flushing and not self._stop.is_set():
                left = deadline - _now()
                if left <= 0:
                    break
                self._idle = True
                self._cond.wait(left)
                self._idle = False
        if self._stop.is_set() and not self._flushing:
            return None
        store.sync()
        return store.read(o.max_batch, o.max_batch_bytes)


def _now() -> float:
    return _time.monotonic()


class AsyncClient:
    """The asyncio face of :class:`Client`: ``await record(...)`` keeps the event (a local write,
    moved to a thread when every record is fsynced) and never waits on the network."""

    def __init__(self, url: str, api_key: str | None = None, options: ClientOptions | None = None) -> None:
        self.sync = Client(url, api_key, options)

    async def record(
        self,
        type: str,
        subject: str,
        data: Mapping[str, Any] | None = None,
        *,
        time: datetime | None = None,
        id: str | None = None,
        source: str | None = None,
    ) -> str | None:
        if self.sync.options.spool_fsync == "always" and self.sync.options.spool_dir is not None:
            return await asyncio.to_thread(self.sync.record, type, subject, data, time=time, id=id, source=source)
        return self.sync.record(type, subject, data, time=time, id=id, source=source)

    @property
    def stats(self) -> ClientStats:
        return self.sync.stats

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.sync.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> ClientStats:
        return await asyncio.to_thread(self.sync.close, timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
