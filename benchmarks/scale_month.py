"""Month-total meter queries at 10M events in ClickHouse (scale mode, the local stack).

    ./run bench scale_month [--events 10000000] [--subjects 1000] [--rounds 30]

Starts its own stack (docs/scale.md) on free 127.0.0.1 ports and stops it at the end, then:

1. **the worker's rows, checked**: the first ``--sample`` events of the month go through the sink
   worker's own code: a ``services.sink.SinkWorker`` with the real ClickHouse sink store
   (``adapters/clickhouse/sink.py``) and the meters of the PostgreSQL catalog, fed by an
   in-memory partition log instead of Kafka (4 partitions, a customer's events in one
   partition, in time order, 20,000 entries per poll as ``[aggregation] chunk``; written
   without a dedupe claim, so no ``confirm`` round trip). Everything from the batch on is what a
   worker does: the meters' fold, the recorded range, the raw ``events`` rows, the rollup states
   and group values under their tokens, the position. The same events are then written by SQL
   (below) into another database, and the two are compared table by table (raw rows, rollup
   states merged per key, group values and subjects): the run stops unless they are identical;
2. **the month by SQL**: ``--events`` events written into the node's database by ``INSERT ...
   SELECT`` statements that make the same rows (the raw event JSON, the COUNT and SUM meters'
   states at the 1/15/60-minute levels folded per batch of 5,000 entries of a partition, as a
   worker inserts them before ClickHouse merges them, group values and subjects), then each
   partition's position as a worker records it. The Python path does about 1,000 events/s on
   this machine, too slow for 10M in the time at hand; the SQL path writes the same rows;
3. **queries** the month through a ``meterline serve`` node over HTTP (``consistency=eventual``,
   the whole month as one window), ``--rounds`` times each: COUNT and SUM totals of all customers,
   the SUM grouped by model, one customer's total and by model, and every customer's total
   (``groupBy=subject``); p50 / p99 of the round trip, each answer checked against the seed.
   Then the same after ``OPTIMIZE TABLE usage_rollups FINAL`` (the rollups merged, as background
   merges leave a month that is no longer written).

Events: ``--subjects`` customers, 4 models, evenly through February 2026 (UTC). Bounded: the seed
stops at ``--events``; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import code_version, percentile  # noqa: E402
from scale_site import Site, site  # noqa: E402
from stack import launch  # noqa: E402

from meterline.adapters.clickhouse.client import Connection  # noqa: E402
from meterline.adapters.clickhouse.progress import Progress, ProgressTable  # noqa: E402
from meterline.adapters.clickhouse.schema import create  # noqa: E402
from meterline.adapters.clickhouse.sink import ClickHouseSink, backfill_stream  # noqa: E402
from meterline.adapters.postgres.database import PgDatabase  # noqa: E402
from meterline.adapters.postgres.fence import PgFence  # noqa: E402
from meterline.adapters.postgres.meters import PgMeters  # noqa: E402
from meterline.bootstrap import ensure_scale_meters  # noqa: E402
from meterline.config import load_config  # noqa: E402
from meterline.domain.clock import SystemClock  # noqa: E402
from meterline.domain.meters.fold import LedgerEntry  # noqa: E402
from meterline.ports.dedupe import EventKey  # noqa: E402
from meterline.ports.sink import LogEntry  # noqa: E402
from meterline.services.sink import SinkWorker  # noqa: E402

EXTRA = """
[aggregation]
chunk = 20000
[billing]
scheduler_enabled = false
[ingest]
late_arrival_window = "P3650D"

[[meters]]
slug = "prompts"
event_type = "prompt"
aggregation = "COUNT"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }
"""
MONTH_US = (1_769_904_000_000_000, 1_772_323_200_000_000)  # February 2026, UTC
MONTH = {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
PARTITIONS = 4
CHUNK = 20_000


def subject_of(i: int, subjects: int) -> int:
    return (i * 2_654_435_761) % 4_294_967_291 % subjects  # spread, deterministic


def event(i: int, events: int, subjects: int) -> tuple[str, int, bytes, int, str]:
    """The ``i``-th event of the month (deterministic): subject, time, raw, tokens, model."""
    time_us = MONTH_US[0] + (MONTH_US[1] - MONTH_US[0]) * i // events
    subject, tokens, model = f"c{subject_of(i, subjects)}", i * 31 % 999 + 1, f"m{i // 7 % 4}"
    second = time_us // 1_000_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{time_us % 1_000_000:06d}Z"
    data = {"tokens": tokens, "model": model}
    raw = msgspec.json.encode(
        {"specversion": "1.0", "id": f"e{i}", "source": "seed", "type": "prompt", "subject": subject, "time": stamp,
         "data": data}
    )  # fmt: skip
    return subject, time_us, raw, tokens, model


class SeedLog:
    """``ports.sink.PartitionLog`` over generated events: the partitions ``mine``, each in
    time order, ``CHUNK`` entries per poll (what Kafka would hand a worker from a backlog)."""

    def __init__(self, topic: str, mine: Sequence[int], events: int, subjects: int, upto: int) -> None:
        self._streams = {p: f"{topic}:{p}" for p in mine}
        self._gen = self._generate(events, subjects, upto)
        self.done = False

    def _generate(self, events: int, subjects: int, upto: int) -> Iterator[tuple[int, LedgerEntry, str]]:
        seqs = dict.fromkeys(self._streams, 0)
        for i in range(upto):
            p = subject_of(i, subjects) % PARTITIONS
            if p in seqs:
                subject, time_us, raw, _, _ = event(i, events, subjects)
                seqs[p] += 1
                yield p, LedgerEntry(seqs[p], "default", "seed", "prompt", subject, time_us, raw, time_us), f"e{i}"

    def poll(self, max_entries: int, timeout: float) -> dict[str, list[LogEntry]]:
        out: dict[str, list[LogEntry]] = {}
        for _ in range(max_entries):
            item = next(self._gen, None)
            if item is None:
                self.done = True
                break
            p, entry, id_ = item
            out.setdefault(self._streams[p], []).append(LogEntry(entry, id_, ""))
        return out

    def assigned(self) -> set[str]:
        return set(self._streams.values())

    def commit(self, stream: str, done: int) -> None:
        pass

    def close(self) -> None:
        pass


class NoClaims:
    """The dedupe store of entries written without a claim (never asked: they have no token)."""

    def claim(self, keys: Sequence[EventKey]) -> object:
        raise AssertionError("not used")

    def confirm(self, token: str, keys: Sequence[EventKey]) -> list[bool]:
        raise AssertionError("entries without a token are not confirmed")

    def release(self, token: str, keys: Sequence[EventKey]) -> None:
        raise AssertionError("not used")

    def prune(self, before_us: int, limit: int) -> int:
        return 0


def seed(config_path: Path, mine: Sequence[int], events: int, subjects: int, database: str = "", upto: int = 0) -> None:
    """One seeding process: the partitions ``mine`` through a SinkWorker (into ``database``
    instead of the config's when given; only the first ``upto`` events of the month when given)."""
    config = load_config(config_path)
    pg = PgDatabase(config.postgres.dsn)
    meters = PgMeters(pg, SystemClock().now_us)
    ensure_scale_meters(config, meters)
    ch = config.clickhouse
    conn = Connection(ch.url, database or ch.database)
    fence = PgFence(pg, config.postgres.dsn)
    store = ClickHouseSink(conn, meters.live, fence, dedupe_window=ch.dedupe_window)
    log = SeedLog(config.kafka.topic, mine, events, subjects, upto or events)
    worker = SinkWorker(log, store, meters.live, NoClaims(), fence, cap=config.ingest.max_group_cardinality,  # type: ignore[arg-type]
                        max_entries=CHUNK, meters_every=3600)  # fmt: skip
    while not log.done:
        worker.step()
    worker.step()  # what the last poll left
    conn.close()
    pg.close()


# -- the same rows written by SQL, for sizes the Python path cannot seed in the time at hand ----


def _base(events: int, subjects: int, lo: int, hi: int, offsets: Sequence[int]) -> str:
    """The events ``lo <= i < hi`` of the month as :func:`event` makes them, with their
    partition ``p`` and seq (``offsets``: the entries each partition holds before ``lo``)."""
    return f"""
        SELECT number AS i, (number * 2654435761) % 4294967291 % {subjects} AS s, s % {PARTITIONS} AS p,
            concat('c', toString(s)) AS subject,
            toInt64({MONTH_US[0]} + intDiv(toUInt128({MONTH_US[1] - MONTH_US[0]}) * number, {events})) AS time_us,
            number * 31 % 999 + 1 AS tokens, concat('m', toString(intDiv(number, 7) % 4)) AS model,
            [{", ".join(map(str, offsets))}][p + 1] + row_number() OVER (PARTITION BY p ORDER BY number) AS seq
        FROM numbers({lo}, {hi - lo})"""


def seed_sql(
    conn: Connection, topic: str, keys: dict[str, int], events: int, subjects: int, lo: int, hi: int, chunk: int
) -> dict[int, tuple[int, int]]:
    """Write the events ``lo <= i < hi`` into the tables the sink writes, with the rows it
    writes: raw events, rollup states per batch of 5,000 entries of a partition (the states a
    worker holding the 4 partitions inserts per 20,000-entry poll, before ClickHouse merges
    them), group values and subjects. Returns per partition (entries, newest receipt time)."""
    offsets = [0] * PARTITIONS
    newest = [0] * PARTITIONS
    for a in range(lo, hi, chunk):
        b = min(a + chunk, hi)
        conn.command("DROP TABLE IF EXISTS seed_chunk")
        conn.command(f"CREATE TABLE seed_chunk ENGINE = Memory AS {_base(events, subjects, a, b, offsets)}")
        base = "SELECT * FROM seed_chunk"
        raw = (
            'concat(\'{"specversion":"1.0","id":"e\', toString(i), \'","source":"seed","type":"prompt",'
            '"subject":"\', subject, \'","time":"\', formatDateTime(toDateTime(intDiv(time_us, 1000000), \'UTC\'),'
            " '%Y-%m-%dT%H:%i:%S'), '.', leftPad(toString(time_us % 1000000), 6, '0'), 'Z\",\"data\":{\"tokens\":',"
            " toString(tokens), ',\"model\":\"', model, '\"}}')"
        )
        token = f"SETTINGS insert_deduplication_token = 'seed:{a}-{b}"
        conn.command(
            "INSERT INTO events (namespace, source, type, subject, time_us, received_us, raw, stream, seq)"
            f" SELECT 'default', 'seed', 'prompt', subject, time_us, time_us, {raw}, concat('{topic}:', toString(p)),"
            f" seq FROM ({base}) {token}:events'"
        )
        levels = "arrayJoin([60, 900, 3600])"
        batch = "intDiv(seq - 1, 5000)"
        zero = "toDecimal256(0, 38)"
        conn.command(
            "INSERT INTO usage_rollups (meter, level, subject, bucket, group_key, count, total, low, high, latest)"
            f" SELECT {keys['prompts']}, level, subject, bucket, '[]', count(), {zero}, {zero}, {zero},"
            f" tuple(toInt64(0), toUInt64(0), {zero}) FROM (SELECT *, {levels} AS level,"
            f" intDiv(time_us, 1000000) - intDiv(time_us, 1000000) % level AS bucket, {batch} AS batch FROM ({base}))"
            f" GROUP BY level, subject, bucket, p, batch {token}:rollups-count'"
        )
        conn.command(
            "INSERT INTO usage_rollups (meter, level, subject, bucket, group_key, count, total, low, high, latest)"
            f" SELECT {keys['tokens']}, level, subject, bucket, concat('[\"', model, '\"]'), count(), sum(v), min(v),"
            " max(v), max(tuple(time_us, toUInt64(seq), v)) FROM (SELECT *, toDecimal256(tokens, 38) AS v,"
            f" {levels} AS level, intDiv(time_us, 1000000) - intDiv(time_us, 1000000) % level AS bucket,"
            f" {batch} AS batch FROM ({base})) GROUP BY level, subject, bucket, model, p, batch {token}:rollups-sum'"
        )
        conn.command(
            "INSERT INTO usage_dims (meter, dim, value, is_subject) SELECT DISTINCT d.1, d.2, d.3, d.4"
            f" FROM (SELECT subject, model FROM ({base})) ARRAY JOIN [({keys['prompts']}, '', subject, toUInt8(1)),"
            f" ({keys['tokens']}, '', subject, toUInt8(1)), ({keys['tokens']}, 'model', model, toUInt8(0))] AS d"
            f" {token}:dims'"
        )
        for p, n, t in conn.rows(f"SELECT p, count(), max(time_us) FROM ({base}) GROUP BY p"):
            offsets[p] += n
            newest[p] = max(newest[p], t)
        conn.command("DROP TABLE seed_chunk")
    return {p: (offsets[p], newest[p]) for p in range(PARTITIONS)}


def finish_progress(conn: Connection, topic: str, keys: dict[str, int], done: dict[int, tuple[int, int]]) -> None:
    """The positions a worker records after the last batch (and its finished backfill streams)."""
    table = ProgressTable(conn)
    for p, (n, newest) in done.items():
        stream = f"{topic}:{p}"
        for key in keys.values():
            table.write(Progress(backfill_stream(key, stream), 0, 0))
        table.write(Progress(stream, n, 0, 0, (), 0, newest))


def differences(conn: Connection, a: str, b: str) -> dict[str, int]:
    """Rows of the tables the month query reads that one database has and the other lacks
    (rollup states merged per key, as every read merges them)."""
    reads = {
        "events": "SELECT namespace, source, type, subject, time_us, received_us, raw, stream, seq FROM {db}.events",
        "usage_rollups": "SELECT meter, level, subject, bucket, group_key, sum(count), sum(total), min(low),"
        " max(high), max(latest) FROM {db}.usage_rollups GROUP BY meter, level, subject, bucket, group_key",
        "usage_dims": "SELECT DISTINCT meter, dim, value, is_subject FROM {db}.usage_dims",
    }
    out = {}
    for table, sql in reads.items():
        x, y = sql.format(db=f"`{a}`"), sql.format(db=f"`{b}`")
        out[table] = int(
            conn.rows(f"SELECT (SELECT count() FROM ({x} EXCEPT {y})) + (SELECT count() FROM ({y} EXCEPT {x}))")[0][0]
        )
        out[f"{table} rows"] = int(conn.rows(f"SELECT count() FROM ({x})")[0][0])
    return out


def expected(events: int, subjects: int, one: int) -> tuple[Decimal, dict[str, Decimal], Decimal]:
    total, by_model, mine = Decimal(0), dict.fromkeys((f"m{i}" for i in range(4)), Decimal(0)), Decimal(0)
    for i in range(events):
        tokens, model = i * 31 % 999 + 1, f"m{i // 7 % 4}"
        total += tokens
        by_model[model] += tokens
        if subject_of(i, subjects) == one:
            mine += tokens
    return total, by_model, mine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--sample", type=int, default=40_000, help="events seeded both ways and compared")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="events per SQL seeding statement")
    args = parser.parse_args()
    print(f"code {code_version()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        stack = launch.up(Path(tmp) / "engines")
        try:
            with site(stack, Path(tmp) / "site", partitions=PARTITIONS, extra=EXTRA) as s:
                run(s, args)
        finally:
            launch.down(Path(tmp) / "engines")


def run(s: Site, args: argparse.Namespace) -> None:
    port = launch.free_port()
    s.node(port)  # creates the config's meters in the catalog (and the site's tables)
    url = f"http://127.0.0.1:{port}"
    key = s.key("default")
    config = s.config
    ch, topic = config.clickhouse, config.kafka.topic
    pg = PgDatabase(config.postgres.dsn)
    keys = {m.slug: m.key for m in PgMeters(pg, SystemClock().now_us).live()}
    pg.close()
    conn = Connection(ch.url, ch.database)

    # 1. the first --sample events of the month through the worker's code, and through SQL
    worker_db, sql_db = f"{ch.database}_worker", f"{ch.database}_sql"
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    seed(s.config_path, range(PARTITIONS), args.events, args.subjects, database=worker_db, upto=args.sample)
    took = time.perf_counter() - started
    print(f"worker path: {args.sample:,} events in {took:.1f} s ({args.sample / took:,.0f} events/s in one process,"
          f" load average {load0:.1f})", flush=True)  # fmt: skip
    other = Connection(ch.url, sql_db)
    create(other, ch.dedupe_window, None)
    seed_sql(other, topic, keys, args.events, args.subjects, 0, args.sample, args.chunk)
    other.close()
    diff = differences(conn, worker_db, sql_db)
    same = all(v == 0 for k, v in diff.items() if not k.endswith("rows"))
    print(f"SQL seed against the worker's rows for the same events: {'identical' if same else 'DIFFERENT'} {diff}",
          flush=True)  # fmt: skip
    for db in (worker_db, sql_db):
        conn.command(f"DROP DATABASE IF EXISTS `{db}`")
    if not same:
        raise SystemExit("the SQL seed does not write what the worker writes")

    # 2. the whole month by SQL into the node's database
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    done = seed_sql(conn, topic, keys, args.events, args.subjects, 0, args.events, args.chunk)
    finish_progress(conn, topic, keys, done)
    took = time.perf_counter() - started
    raw = int(conn.rows("SELECT count() FROM events")[0][0])
    rollups = conn.rows("SELECT level, count() FROM usage_rollups GROUP BY level ORDER BY level")
    parts = conn.rows(
        "SELECT table, count(), sum(rows) FROM system.parts WHERE database = currentDatabase() AND active"
        " GROUP BY table ORDER BY table"
    )
    print(f"seeded {raw:,} events by SQL in {took:.0f} s (load average {load0:.1f} -> {os.getloadavg()[0]:.1f});"
          f" rollup rows per level as inserted: {dict(rollups)}; active parts (table, parts, rows): {parts}",
          flush=True)  # fmt: skip
    conn.close()

    # 3. month queries through the API node
    one = 7
    total, by_model, mine = expected(args.events, args.subjects, one)
    headers = {"Authorization": f"Bearer {key}"}
    cases: list[tuple[str, str, dict[str, str], Decimal]] = [
        ("COUNT, all customers", "prompts", {}, Decimal(args.events)),
        ("SUM, all customers", "tokens", {}, total),
        ("SUM, all customers, groupBy model", "tokens", {"groupBy": "model"}, total),
        ("SUM, one customer", "tokens", {"subject": f"c{one}"}, mine),
        ("SUM, one customer, groupBy model", "tokens", {"subject": f"c{one}", "groupBy": "model"}, mine),
        ("SUM, groupBy subject (every customer)", "tokens", {"groupBy": "subject"}, total),
    ]
    queries(url, headers, cases, by_model, args.rounds, "rollups as the workers inserted them")
    conn = Connection(ch.url, ch.database)
    started = time.perf_counter()
    conn.command("OPTIMIZE TABLE usage_rollups FINAL")
    rows = int(conn.rows("SELECT count() FROM usage_rollups")[0][0])
    conn.close()
    print(f"OPTIMIZE TABLE usage_rollups FINAL: {time.perf_counter() - started:.0f} s, {rows:,} rows left", flush=True)
    queries(url, headers, cases, by_model, args.rounds, "rollups merged")


def queries(
    url: str,
    headers: dict[str, str],
    cases: list[tuple[str, str, dict[str, str], Decimal]],
    by_model: dict[str, Decimal],
    rounds: int,
    label: str,
) -> None:
    load0 = os.getloadavg()[0]
    print(f"month queries, {label}:")
    with httpx.Client(timeout=120, headers=headers) as client:
        for name, meter, extra, want in cases:
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                r = client.get(
                    f"{url}/api/v1/meters/{meter}/query", params={**MONTH, **extra, "consistency": "eventual"}
                )
                times.append(time.perf_counter() - t)
                r.raise_for_status()
            rows = r.json()["data"]
            got = sum((Decimal(str(row["value"])) for row in rows), Decimal(0))
            if extra.get("groupBy") == "model":
                models = {row["groupBy"]["model"]: Decimal(str(row["value"])) for row in rows}
                ok = got == want and (models == by_model or "subject" in extra)
            else:
                ok = got == want
            times.sort()
            print(f"  {name:<40} {len(rows):>5} row(s)  p50 {percentile(times, 50) * 1000:7.1f} ms"
                  f"  p99 {percentile(times, 99) * 1000:7.1f} ms  {'exact' if ok else f'WRONG: {got} != {want}'}",
                  flush=True)  # fmt: skip
    print(f"  load average during these queries {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
