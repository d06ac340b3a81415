"""Redis's persistence files rewritten after an erasure (``ports.erasure.RewritableFiles``).

An erasure deletes and replaces keys in Redis (the dedupe store's keys, the live usage counters
of the subject), but Redis's own files keep what they held: the AOF (its base and increments,
``appendonlydir/``) keeps every command written since its last rewrite, and the RDB snapshot
(``dump.rdb``) is the data as of the last save. Both are rewritten from the data now:

1. what is on: ``CONFIG GET appendonly`` and ``save`` (an empty ``save``: no snapshots). Where
   ``CONFIG`` is renamed or disabled (managed Redis), ``INFO persistence`` still tells whether
   the AOF is on (``aof_enabled``), and nothing tells whether snapshots are written: ``rdb`` is
   then ``unknown`` and no snapshot is asked for;
2. the AOF: ``BGREWRITEAOF``; a rewrite already running began before the erasure's writes (its
   base is a copy from then), so it is waited for and a new one asked for; then waited for until
   Redis's count of rewrites (``aof_rewrites``) grew and none runs or is scheduled, and its
   status read (``aof_last_bgrewrite_status``). Redis removes the old AOF files at the rewrite's
   end;
3. the snapshot: ``BGSAVE SCHEDULE`` (started once no other child runs), likewise waited for
   through ``rdb_saves`` and ``rdb_bgsave_in_progress``, its status from ``rdb_last_bgsave_status``.

Nothing here raises: each file's outcome is recorded (``rewritten``, ``saved``, ``off``,
``unknown``, ``failed``, ``unfinished`` when the wait ran out, with a ``detail``), and the
erasure finishes whatever it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

BUSY = ("already in progress", "another child", "can't bgsave right now")


class RedisFiles:
    def __init__(self, client: redis.Redis, pause: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self._r = client
        self._pause = pause
        self._clock = clock

    def rewrite_files(self, max_wait: float) -> dict[str, str]:
        """Each of Redis's persistence files rewritten from the data now, if on; what was done."""
        deadline = self._clock() + max_wait
        out: dict[str, str] = {}
        details: list[str] = []
        try:
            aof, rdb = self._configured(details)
            out["aof"] = self._aof(deadline, details) if aof else "off"
            if rdb is None:
                out["rdb"] = "unknown"
            else:
                out["rdb"] = self._rdb(deadline, details) if rdb else "off"
        except redis.RedisError as exc:
            out.setdefault("aof", "failed")
            out.setdefault("rdb", "failed")
            details.append(f"Redis failed: {type(exc).__name__}: {exc}")
        if details:
            out["detail"] = "; ".join(details)[:1000]
        return out

    def _configured(self, details: list[str]) -> tuple[bool, bool | None]:
        """Whether the AOF is on and whether snapshots are written (None: not known)."""
        try:
            appendonly: Any = self._r.config_get("appendonly")
            save: Any = self._r.config_get("save")
            return str(appendonly.get("appendonly", "no")).lower() == "yes", bool(str(save.get("save", "")).strip())
        except redis.ResponseError as exc:  # CONFIG renamed or disabled
            details.append(
                f"CONFIG GET is not available ({exc}): the AOF was judged from INFO persistence; whether snapshots"
                " (dump.rdb) are written is unknown and none was asked for"
            )
            return bool(int(self._info().get("aof_enabled", 0))), None

    def _aof(self, deadline: float, details: list[str]) -> str:
        done = self._run(
            "BGREWRITEAOF", ("BGREWRITEAOF",), "aof_rewrites", ("aof_rewrite_in_progress", "aof_rewrite_scheduled"),
            deadline, details,
        )  # fmt: skip
        if done != "done":
            return done
        status = self._info().get("aof_last_bgrewrite_status")
        if status != "ok":
            details.append(f"BGREWRITEAOF ended with status {status}")
            return "failed"
        return "rewritten"

    def _rdb(self, deadline: float, details: list[str]) -> str:
        done = self._run("BGSAVE", ("BGSAVE", "SCHEDULE"), "rdb_saves", ("rdb_bgsave_in_progress",), deadline, details)
        if done != "done":
            return done
        status = self._info().get("rdb_last_bgsave_status")
        if status != "ok":
            details.append(f"BGSAVE ended with status {status}")
            return "failed"
        return "saved"

    def _run(
        self, name: str, command: tuple[str, ...], counter: str, busy: tuple[str, ...], deadline: float,
        details: list[str],
    ) -> str:  # fmt: skip
        """Ask for ``command`` (again while one that began earlier runs), then wait until the
        ``counter`` of finished runs grew and none runs or waits: ``done``, ``unfinished`` or ``failed``."""
        first = self._info()
        counted = counter in first  # Redis before 7.0 has no such count: the wait ends when none runs
        before = int(first.get(counter, 0))
        while True:
            try:
                self._r.execute_command(*command)  # type: ignore[no-untyped-call]
                break
            except redis.ResponseError as exc:
                if not any(b in str(exc).lower() for b in BUSY):
                    details.append(f"{name} was refused: {exc}")
                    return "failed"
            if self._clock() >= deadline:
                details.append(f"{name} could not start within the wait (another one ran)")
                return "unfinished"
            time.sleep(self._pause)
        while True:
            info = self._info()
            grown = int(info.get(counter, 0)) > before or not counted
            if grown and not any(int(info.get(b, 0)) for b in busy):
                return "done"
            if self._clock() >= deadline:
                details.append(f"{name} was still running when the wait ended (Redis finishes it)")
                return "unfinished"
            time.sleep(self._pause)

    def _info(self) -> dict[str, Any]:
        info: Any = self._r.info("persistence")
        return dict(info)
