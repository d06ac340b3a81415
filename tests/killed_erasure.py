"""An API node of scale mode (the real app, in this process) that asks for one erasure and
kills itself (SIGKILL) at one chosen instant of it, for the resumable-erasure tests; everything
else is the real erasure.

usage: python killed_erasure.py CONFIG KEY SUBJECT POINT
  KEY    an admin key of the namespace to erase in
  POINT  before-keys: the catalog's transaction done; the Redis dedupe store's keys not replaced
         after-keys: the catalog's transaction and the dedupe keys done, nothing in ClickHouse
         after-copy: the erased rows and the usage moved to the pseudonym inserted, the
                     customers still mapping the subject, nothing deleted
         mid-drop: the customers switched, the original raw rows and the subject's rollups
                   deleted, its other usage rows (uniques, sketches, gauges, dims) not yet
         before-files: every step done (the live counters moved), Redis's persistence files
                       not rewritten yet
         mid-tables: the erasure finished, the first of the PostgreSQL tables rewritten
                     (adapters.postgres.compaction), the others not yet
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.erasure import ClickHouseErasure
from meterline.adapters.postgres.compaction import PgRewriter
from meterline.adapters.redis.dedupe import RedisDedupe
from meterline.adapters.redis.persistence import RedisFiles
from meterline.api.app import create_app
from meterline.config import load_config

POINTS = ("before-keys", "after-keys", "after-copy", "mid-drop", "before-files", "mid-tables")


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    config_path, key, subject, point = sys.argv[1:5]
    if point not in POINTS:
        raise SystemExit(f"unknown point {point!r}")
    copy, command, erase_keys = ClickHouseErasure.copy, Connection.command, RedisDedupe.erase_keys

    def erasing_keys(self: RedisDedupe, *args: Any, **kwargs: Any) -> int:
        if point == "before-keys":
            die()
        return erase_keys(self, *args, **kwargs)

    def copying(self: ClickHouseErasure, *args: Any, **kwargs: Any) -> int:
        if point == "after-keys":
            die()
        copied = copy(self, *args, **kwargs)
        if point == "after-copy":
            die()
        return copied

    def commanding(self: Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
        done = command(self, sql, *args, **kwargs)
        if point == "mid-drop" and sql.startswith("ALTER TABLE usage_rollups DELETE"):
            die()
        return done

    def rewriting(self: RedisFiles, *args: Any, **kwargs: Any) -> dict[str, str]:
        if point == "before-files":
            die()
        return rewrite(self, *args, **kwargs)

    def rewriting_table(self: PgRewriter, *args: Any, **kwargs: Any) -> str:
        done = rewrite_table(self, *args, **kwargs)
        if point == "mid-tables":
            die()
        return done

    rewrite, rewrite_table = RedisFiles.rewrite_files, PgRewriter.rewrite
    PgRewriter.rewrite = rewriting_table  # type: ignore[method-assign]
    RedisFiles.rewrite_files = rewriting  # type: ignore[method-assign]
    ClickHouseErasure.copy = copying  # type: ignore[method-assign]
    Connection.command = commanding  # type: ignore[method-assign]
    RedisDedupe.erase_keys = erasing_keys  # type: ignore[method-assign]
    config = load_config(Path(config_path), {"auth": {"bootstrap_admin_key": False}})
    with TestClient(create_app(config)) as client:
        r = client.post(
            "/api/v1/erasures",
            json={"subject": subject, "reason": "GDPR"},
            headers={"Authorization": f"Bearer {key}"},
        )
    raise SystemExit(f"the erasure answered before the point {point}: {r.status_code} {r.text}")


if __name__ == "__main__":
    main()
