"""``meterline rebuild`` in scale mode, as real processes on the local stack: the rollups (all
levels), UNIQUE_COUNT values, APPROX_UNIQUE_COUNT sketches, TIME_WEIGHTED_SUM states and group
values recomputed from ClickHouse's raw events equal the workers' (`--check`, also with a meter
created later still backfilling); a difference planted in each stored table is found and named
(meter, subject, window), and `rebuild` replaces the tables while the workers keep applying
events that arrive meanwhile: afterwards every event is counted exactly once and `--check`
finds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from scale_site import Site, site
from stack.launch import Stack
from test_scale_zombie import NS, PAUSED_WORKER, Producer, stopped, wait_until

from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.rebuild import unfinished
from meterline.adapters.clickhouse.schema import GAUGES, ROLLUPS, SKETCHES, UNIQUES, create
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.meters import PgMeters
from meterline.bootstrap import rebuild_scale
from meterline.domain.errors import Conflict
from meterline.domain.meters.model import Aggregation, MeterSpec

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

EXTRA = """
[aggregation]
chunk = 150
[ingest]
late_arrival_window = "P3650D"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }

[[meters]]
slug = "prompts"
event_type = "prompt"
aggregation = "COUNT"

[[meters]]
slug = "users"
event_type = "prompt"
aggregation = "UNIQUE_COUNT"
value_property = "$.user"

[[meters]]
slug = "level"
event_type = "prompt"
aggregation = "TIME_WEIGHTED_SUM"
value_property = "$.tokens"

[[meters]]
slug = "visitors"
event_type = "prompt"
aggregation = "APPROX_UNIQUE_COUNT"
value_property = "$.user"
"""
HOUR = 1_769_940_000  # 2026-02-01T10:00:00Z: the hour of the events of the 1st


@pytest.fixture
def two_partitions(scale_stack: Stack, tmp_path: Path) -> Iterator[Site]:
    with site(scale_stack, tmp_path / "site", partitions=2, extra=EXTRA) as s:
        yield s


def rebuild(s: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "rebuild", "--config", str(s.config_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
    )


def test_rebuild_checks_and_replaces_the_rollups_beside_running_workers(two_partitions: Site) -> None:
    s = two_partitions
    config = s.config
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    create(conn, config.clickhouse.dedupe_window, None)  # the workers create them too
    producer = Producer(s)
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, lambda: 0)
    workers = [s.worker(), s.worker()]

    def applied() -> int:
        rows = conn.rows("SELECT sum(done) FROM usage_progress FINAL WHERE stream NOT LIKE 'backfill:%'")
        return int(rows[0][0] or 0)

    def totals() -> tuple[int, Decimal]:
        count, total = meters.get(NS, "prompts").key, meters.get(NS, "tokens").key
        sql = "SELECT sum(count), sum(total) FROM usage_rollups WHERE meter = {m:UInt64} AND level = 60"
        return int(conn.rows(sql, {"m": count})[0][0]), Decimal(conn.rows(sql, {"m": total})[0][1])

    try:
        producer.append(300)
        wait_until(lambda: applied() == 300, "the first events", s)
        meters.create(NS, MeterSpec("late", "prompt", Aggregation.SUM, value_property="$.tokens"))
        producer.append(100)  # the new meter backfills the first 300 (perhaps still when checked)
        wait_until(lambda: applied() == 400, "the next events", s)

        checked = rebuild(s, "--check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "identical" in checked.stdout

        tokens, users, visitors, level = (meters.get(NS, s).key for s in ("tokens", "users", "visitors", "level"))
        planted = [tokens, 3600, "c1", HOUR, '["gpt"]', 1, Decimal("5.5"), Decimal(0), Decimal(0), (0, 0, Decimal(0))]
        conn.insert("usage_rollups", ROLLUPS, [planted], "planted:rollups")
        conn.insert("usage_uniques", UNIQUES, [(users, 60, "c2", HOUR, "[]", "intruder")], "planted:uniques")
        conn.insert("usage_sketches", SKETCHES, [(visitors, 900, "c3", HOUR, "[]", ([7], [53]))], "planted:sketch")
        at = (HOUR + 30) * 1_000_000
        gauge = (level, 60, "c4", HOUR, "[]", 1, Decimal(0), (at, 1), (at, 1, Decimal(5)))
        conn.insert("usage_gauges", GAUGES, [gauge], "planted:gauge")
        checked = rebuild(s, "--check")
        assert checked.returncode == 1, checked.stdout + checked.stderr
        out = checked.stdout
        assert "rollups: 1, uniques: 1, sketches: 1, gauges: 1, dims: 0" in out
        assert (
            "meter default/visitors subject 'c3' 15-minute window 2026-02-01T10:00:00.000Z group []: sketch differs"
            in out
        )
        assert "meter default/tokens subject 'c1' 60-minute window 2026-02-01T10:00:00.000Z" in out
        assert "meter default/users subject 'c2' 1-minute window 2026-02-01T10:00:00.000Z" in out
        assert "value 'intruder' only stored" in out
        assert "meter default/level subject 'c4' 1-minute window 2026-02-01T10:00:00.000Z group []: gauge state" in out

        stop = threading.Event()

        def more() -> None:  # events keep arriving and the workers keep applying them
            while not stop.is_set() and producer.sent < 1000:
                producer.append(50)

        feeding = threading.Thread(target=more)
        feeding.start()
        try:
            repaired = rebuild(s)
        finally:
            stop.set()
            feeding.join(timeout=120)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert "replaced" in repaired.stdout
        wait_until(lambda: applied() == producer.sent, "every event after the rebuild", s)
        total = producer.sent
        assert totals() == (total, sum((Decimal(f"{i}.{i % 7}") for i in range(total)), Decimal(0)))
        checked = rebuild(s, "--check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "identical" in checked.stdout
        s.stop()
        assert [w.returncode for w in workers] == [0, 0], s.log_tail("workers.log")
    finally:
        producer.close()
        pg.close()
        conn.close()


def test_rebuild_refuses_while_a_stopped_worker_holds_a_range_and_checks_once_it_finishes(
    two_partitions: Site, tmp_path: Path
) -> None:
    """A worker stopped (SIGSTOP) after its fence check, before its inserts, leaves a recorded
    range that nobody else can finish while it is the only worker: a rebuild cannot know what of
    it landed, so it refuses and names the range. Resumed, the worker finishes it, and the
    rebuild then finds the rollups identical."""
    s = two_partitions
    config = s.config
    marks = tmp_path / "marks"
    marks.mkdir()
    producer = Producer(s)
    conn = Connection(config.clickhouse.url, config.clickhouse.database)
    create(conn, config.clickhouse.dedupe_window, None)
    with (s.dir / "workers.log").open("ab") as out:
        zombie = subprocess.Popen(
            [sys.executable, str(PAUSED_WORKER), str(s.config_path), "before-insert", str(marks)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
        )
    s.processes.append(zombie)
    try:
        producer.append(100)
        wait_until(lambda: (marks / "paused").exists() and stopped(zombie.pid), "the worker to stop mid-batch", s)
        with pytest.raises(Conflict, match=r"ranges stay unfinished \(t\w+:\d \(0, \d+\]"):
            rebuild_scale(config, check=True, settle=(0.5, 0.5))
        zombie.send_signal(signal.SIGCONT)
        wait_until(lambda: not unfinished(conn), "the resumed worker to finish its range", s)
        wait_until(
            lambda: (
                conn.rows("SELECT sum(done) FROM usage_progress FINAL WHERE stream NOT LIKE 'backfill:%'")[0][0] == 100
            ),
            "every event",
            s,
        )
        report = rebuild_scale(config, check=True)
        assert report.identical, report.details
        assert report.events == 100
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
        producer.close()
        conn.close()
