"""Operational incidents in the log, by METER code, without flooding it.

A hostile client can cause thousands of refusals or authentication failures a second; the log
gets the first one at once and then at most one line per code every ``every`` seconds, which
says how many were left out in between (``suppressed``; details in ``context``). Every line
carries the code in the ``operationalCode`` field, so ``grep METER-002`` finds them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from meterline.domain.errors import OpsCode

log = logging.getLogger("meterline.ops")


class IncidentLog:
    def __init__(self, every: float = 10.0, now: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._now = now
        self._last: dict[OpsCode, float] = {}
        self._suppressed: dict[OpsCode, int] = {}
        self._lock = threading.Lock()

    def note(self, code: OpsCode, message: str, *args: object, level: int = logging.WARNING, **fields: object) -> None:
        """Log one incident of ``code``, or count it if a line for ``code`` was written recently."""
        now = self._now()
        with self._lock:
            last = self._last.get(code)
            if last is not None and now - last < self._every:
                self._suppressed[code] = self._suppressed.get(code, 0) + 1
                return
            self._last[code] = now
            suppressed = self._suppressed.pop(code, 0)
        log.log(
            level,
            f"{code.value} {message}",
            *args,
            extra={"operationalCode": code.value, "suppressed": suppressed, "context": fields},
        )
