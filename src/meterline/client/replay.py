"""Send a spool left behind by a producer that is gone: the usage replay after an outage.

Every slot of the directory that no live process owns is opened (taking its lock, so a
producer starting meanwhile takes another slot), sent batch by batch from its cursor and
acknowledged after each 2xx, exactly as the producer would have. Events keep their ids, so
events meterline already has come back as duplicates and nothing is counted twice; a replay
interrupted at any point can simply be run again. Torn records are reported, never sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meterline.client.options import ClientOptions
from meterline.client.spool import Spool, SpoolLocked, TornRecord
from meterline.client.stats import ClientStats, Counters
from meterline.client.stores import slots
from meterline.client.transport import http_client
from meterline.client.worker import Deliverer


@dataclass
class ReplayReport:
    stats: ClientStats | None = None
    slots: int = 0
    busy: list[Path] = field(default_factory=list)
    """Slots a live process owns (skipped: that process sends them itself)."""
    torn: list[TornRecord] = field(default_factory=list)


def spools_in(directory: Path) -> list[Path]:
    """The spools of a producer directory (its slots), or the directory itself if it is one spool."""
    found = slots(directory)
    if not found and (directory / "lock").exists():
        return [directory]
    return found


def pending_in(directory: Path) -> int:
    """Events waiting in the spools of ``directory`` that no live process owns (opens and closes each)."""
    total = 0
    for path in spools_in(directory):
        try:
            spool = Spool(path)
        except SpoolLocked:
            continue
        total += spool.pending
        spool.close()
    return total


def replay(
    directory: Path,
    url: str,
    api_key: str | None,
    options: ClientOptions | None = None,
    progress: Callable[[int], None] = lambda n: None,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Send every event waiting in the unowned spools of ``directory``; ``progress(n)`` after each batch."""
    options = options or ClientOptions(spool_dir=directory, max_attempts=10)
    report = ReplayReport()
    counters = Counters()
    stop = stop or threading.Event()
    pending_total = 0
    with http_client(url.rstrip("/"), api_key, options.request_timeout, options.tls) as http:
        for path in spools_in(directory):
            try:
                spool = Spool(path, segment_bytes=options.spool_segment_bytes, max_bytes=options.spool_max_bytes)
            except SpoolLocked:
                report.busy.append(path)
                continue
            report.slots += 1
            try:
                deliverer = Deliverer(spool, http, options, counters, stop)
                deliverer.on_ack = progress
                deliverer.keep_when_exhausted = True
                while spool.pending and not stop.is_set():
                    batch = spool.read(options.max_batch, options.max_batch_bytes)
                    if not batch.payloads or not deliverer.send(batch):
                        break
                pending_total += spool.pending
                report.torn += spool.torn
            finally:
                spool.close()
    report.stats = counters.snapshot(pending_total, True, len(report.torn))
    return report
