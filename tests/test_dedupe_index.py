"""The dedupe index on real files: keys are found in memory, in sealed and merged runs and after a
restart; colliding hashes never drop or merge events (every hit is confirmed by the ledger row);
a kill -9 at any step of a seal or a merge leaves an index that finds every committed key; runs
expire whole with the dedupe window; a data directory of an earlier version (the ``dedupe`` key
table) opens with its keys honoured."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest
from conftest import Api

from meterline.adapters.sqlite.backend import EmbeddedBackend
from meterline.adapters.sqlite.dedupe_index import DedupeIndex, Hasher
from meterline.adapters.sqlite.ingest import IngestSettings
from meterline.adapters.sqlite.schema import connect, create_schema
from meterline.domain.clock import FixedClock
from meterline.domain.events.decode import Limits, decode_events, split_body
from meterline.domain.events.model import Event
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.meters.query import MeterQuery
from meterline.services.aggregation import Aggregator

T0 = 1_772_366_400_000_000
DIGEST = b"d" * 16
LEDGER_INSERT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)


def tiny(namespace: str, source: str, id_: str) -> int:
    """Three hash values for every key: nearly every lookup meets other keys' entries."""
    return zlib.crc32(id_.encode()) % 3


def ledger(path: Path) -> sqlite3.Connection:
    conn = connect(path, fsync="normal")
    create_schema(conn)
    return conn


def open_index(conn: sqlite3.Connection, directory: Path, hasher: Hasher | None = None, fanout: int = 2) -> DedupeIndex:
    idx = DedupeIndex(directory, seal_keys=8, fanout=fanout, build_chunk=16, hasher=hasher)
    conn.execute("BEGIN IMMEDIATE")
    idx.open(conn)
    conn.execute("COMMIT")
    idx.wait()  # merges started by the open
    return idx


def append(conn: sqlite3.Connection, idx: DedupeIndex, ids: Iterable[str], received: int = T0) -> None:
    """What ingest does for accepted events: ledger rows, then their keys, then the commit."""
    conn.execute("BEGIN IMMEDIATE")
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    rows = [(seq + n + 1, "default", "s", id_, "t", "acme", T0, received, DIGEST, b"{}") for n, id_ in enumerate(ids)]
    conn.executemany(LEDGER_INSERT, rows)
    idx.add_many([(r[1], r[2], r[3], r[0], DIGEST, received) for r in rows])
    conn.execute("COMMIT")
    idx.committed(rows[-1][0])


def ev(id_: str, digest: bytes = DIGEST) -> Event:
    return Event("default", "s", id_, "t", "acme", T0, None, b"{}", digest)


def seen(conn: sqlite3.Connection, idx: DedupeIndex, ids: Iterable[str], oldest: int = -1) -> set[str]:
    return {id_ for _, id_ in idx.lookup(conn, [ev(i) for i in ids], oldest)}


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def listed(idx: DedupeIndex) -> set[str]:
    return {f"{r.name}{s}" for r in idx.runs() for s in (".h", ".s")} | {"manifest.json", "LOCK"}


@pytest.mark.parametrize("hasher", [None, tiny], ids=["keyed-hash", "colliding-hash"])
def test_keys_are_found_in_memory_in_sealed_and_merged_runs_and_after_a_restart(
    tmp_path: Path, hasher: Hasher | None
) -> None:
    conn = ledger(tmp_path / "db")
    idx = open_index(conn, tmp_path / "index", hasher)
    ids = [f"e{n}" for n in range(100)]
    for start in range(0, 100, 10):
        append(conn, idx, ids[start : start + 10])
        idx.wait()
        assert seen(conn, idx, ids) == set(ids[: start + 10])
    assert idx.levels() and max(idx.levels()) >= 1, "runs were sealed and merged"
    assert files(tmp_path / "index") == listed(idx)
    assert seen(conn, idx, ["new", "e100", "e1x"]) == set()
    idx.close()
    idx = open_index(conn, tmp_path / "index", hasher)
    assert seen(conn, idx, [*ids, "new"]) == set(ids)
    held, _ = idx.held()
    assert sorted(set(held)) == list(range(1, 101))


def test_a_colliding_key_is_a_new_event_and_the_first_payload_decides_the_conflict(tmp_path: Path) -> None:
    conn = ledger(tmp_path / "db")
    idx = open_index(conn, tmp_path / "index", lambda ns, src, id_: 42)  # one hash for every key
    append(conn, idx, ["a", "b"])
    assert seen(conn, idx, ["a", "b", "c"]) == {"a", "b"}
    append(conn, idx, ["c"] + [f"x{n}" for n in range(10)])  # sealed: all in one run, one hash
    idx.wait()
    assert idx.runs()
    found = idx.lookup(conn, [ev("c", digest=b"other"), ev("a"), ev("zz")], -1)
    assert found == {("s", "c"): DIGEST, ("s", "a"): DIGEST}  # the stored digest: a conflict for "c"


def test_the_window_decides_and_expired_runs_are_deleted_whole(tmp_path: Path) -> None:
    conn = ledger(tmp_path / "db")
    idx = open_index(conn, tmp_path / "index", fanout=4)  # no merge of the two runs
    old, recent = [f"o{n}" for n in range(10)], [f"r{n}" for n in range(10)]
    append(conn, idx, old, received=T0)
    idx.wait()
    append(conn, idx, recent, received=T0 + 100)
    idx.wait()
    assert seen(conn, idx, old + recent, oldest=T0 + 50) == set(recent)
    assert idx.forget([], T0 + 50) == 10  # the run of the old keys, received before the floor
    assert seen(conn, idx, old + recent) == set(recent)
    assert files(tmp_path / "index") == listed(idx)


def test_an_index_left_by_another_database_is_rebuilt(tmp_path: Path) -> None:
    conn = ledger(tmp_path / "db")
    idx = open_index(conn, tmp_path / "index")
    append(conn, idx, [f"a{n}" for n in range(20)])
    idx.close()
    conn.close()
    conn = ledger(tmp_path / "db2")  # another ledger (its own hash key) beside the same index
    append(conn, open_index(conn, tmp_path / "other"), ["b1"])
    idx = open_index(conn, tmp_path / "index")
    assert seen(conn, idx, ["a1", "b1"]) == {"b1"}


def test_a_second_process_only_reads_the_runs_and_a_damaged_run_is_rebuilt(tmp_path: Path) -> None:
    conn = ledger(tmp_path / "db")
    owner = open_index(conn, tmp_path / "index")
    ids = [f"e{n}" for n in range(60)]
    append(conn, owner, ids)
    owner.wait()
    before = files(tmp_path / "index")
    reader = open_index(conn, tmp_path / "index")  # the lock is held: it changes nothing on disk
    append(conn, reader, [f"r{n}" for n in range(30)])
    assert seen(conn, reader, [*ids, "r1", "new"]) == {*ids, "r1"}
    assert files(tmp_path / "index") == before
    reader.close()
    owner.close()
    (tmp_path / "index" / f"{owner.runs()[0].name}.s").write_bytes(b"short")
    idx = open_index(conn, tmp_path / "index")  # the manifest names a damaged run: built again
    assert seen(conn, idx, [*ids, "r29", "new"]) == {*ids, "r29"}
    assert files(tmp_path / "index") == listed(idx)


OLD_TABLE = """CREATE TABLE dedupe (
    namespace TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL,
    seq INTEGER NOT NULL, digest BLOB NOT NULL, received_us INTEGER NOT NULL,
    PRIMARY KEY (namespace, source, id)
) WITHOUT ROWID"""


def test_a_data_directory_with_the_old_key_table_opens_with_its_keys_honoured(tmp_path: Path) -> None:
    conn = ledger(tmp_path / "meterline.db")
    conn.execute(OLD_TABLE)
    rows = [(n + 1, "default", "s", f"k{n}", "t", "acme", T0, T0, DIGEST, b"{}") for n in range(40)]
    conn.executemany(LEDGER_INSERT, rows)
    conn.executemany("INSERT INTO dedupe VALUES (?,?,?,?,?,?)", [(r[1], r[2], r[3], r[0], DIGEST, T0) for r in rows])
    conn.execute(
        "INSERT INTO quarantine (namespace, source, event_id, type, subject, time_us, received_us, digest, raw)"
        " VALUES ('default', 's', 'held', 't', 'ghost', ?, ?, ?, '{}')",
        (T0, T0, DIGEST),
    )
    conn.execute("INSERT INTO dedupe VALUES ('default', 's', 'held', -1, ?, ?)", (DIGEST, T0))
    conn.close()
    index = DedupeIndex(tmp_path / "index", seal_keys=8, build_chunk=16)
    b = EmbeddedBackend(tmp_path, IngestSettings(None, 100), FixedClock(T0), fsync="normal", dedupe=index)
    reader = b.db.reader()
    assert seen(reader, index, [f"k{n}" for n in range(41)] + ["held"]) == {f"k{n}" for n in range(40)} | {"held"}
    assert index.runs(), "a long ledger is indexed into runs at the first open"
    assert reader.execute("SELECT count(*) FROM sqlite_master WHERE name = 'dedupe'").fetchone()[0] == 0
    b.close()


CRASHING = """
import os, signal, sys
from pathlib import Path
from meterline.adapters.sqlite.dedupe_index import DedupeIndex
from meterline.adapters.sqlite.schema import connect, create_schema

LEDGER_INSERT = (
    "INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw)"
    " VALUES (?,?,?,?,?,?,?,?,?,?)"
)

db, directory, step, nth = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
calls = {}

def crash_point(name):
    calls[name] = calls.get(name, 0) + 1
    if name == step and calls[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)

conn = connect(db, fsync="normal")
create_schema(conn)
idx = DedupeIndex(directory, seal_keys=8, fanout=2, build_chunk=16, crash_point=crash_point)
conn.execute("BEGIN IMMEDIATE")
idx.open(conn)
conn.execute("COMMIT")
for b in range(12):
    conn.execute("BEGIN IMMEDIATE")
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    rows = [(seq + n + 1, "default", "s", f"b{b}-{n}", "t", "acme", 0, 0, b"d", b"{}") for n in range(10)]
    conn.executemany(LEDGER_INSERT, rows)
    idx.add_many([(r[1], r[2], r[3], r[0], b"d", 0) for r in rows])
    conn.execute("COMMIT")
    idx.committed(rows[-1][0])
    idx.wait()
print(calls)
"""


@pytest.mark.parametrize(
    ("step", "nth"),
    [
        ("manifest-written", 1),  # indexing the seeded ledger at open
        ("run-written", 3),
        ("manifest-committed", 4),
        ("run-written", 6),  # a seal, or a merge
        ("manifest-written", 8),
        ("manifest-committed", 10),
        ("manifest-written", 13),
    ],
)
def test_a_kill_during_a_seal_or_a_merge_leaves_an_index_that_finds_every_key(
    tmp_path: Path, step: str, nth: int
) -> None:
    conn = ledger(tmp_path / "db")
    seeded = [f"seed{n}" for n in range(40)]
    rows = [(n + 1, "default", "s", id_, "t", "acme", T0, T0, DIGEST, b"{}") for n, id_ in enumerate(seeded)]
    conn.executemany(LEDGER_INSERT, rows)
    args = [str(tmp_path / "db"), str(tmp_path / "index"), step, str(nth)]
    done = subprocess.run([sys.executable, "-c", CRASHING, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, f"the process was not killed at {step} #{nth}: {done.stdout}{done.stderr}"
    committed = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY seq")]
    idx = open_index(conn, tmp_path / "index")
    assert files(tmp_path / "index") == listed(idx)  # what the manifest does not list is gone
    assert seen(conn, idx, [*committed, "b99-1", "new"]) == set(committed)
    append(conn, idx, [f"after{n}" for n in range(20)])  # and it keeps working after the restart
    idx.close()
    idx = open_index(conn, tmp_path / "index")
    assert seen(conn, idx, [*committed, "after7"]) == {*committed, "after7"}


def test_the_crash_script_passes_every_injected_point_when_nothing_kills_it(tmp_path: Path) -> None:
    """The points above are reached: counts of every step in a run that is not killed."""
    ledger(tmp_path / "db").executemany(
        LEDGER_INSERT,
        [(n + 1, "default", "s", f"seed{n}", "t", "acme", T0, T0, DIGEST, b"{}") for n in range(40)],
    )
    args = [str(tmp_path / "db"), str(tmp_path / "index"), "none", "0"]
    done = subprocess.run([sys.executable, "-c", CRASHING, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = eval(done.stdout)  # a dict literal printed by the script
    assert counts["run-written"] >= 6 and counts["manifest-written"] >= 13 and counts["manifest-committed"] >= 10


def test_ingest_with_colliding_hashes_counts_every_event_once_across_seals_and_restarts(tmp_path: Path) -> None:
    clock = FixedClock(T0)

    def backend() -> EmbeddedBackend:
        index = DedupeIndex(tmp_path / "index", seal_keys=4, fanout=2, hasher=tiny)
        return EmbeddedBackend(tmp_path, IngestSettings(None, 100), clock, fsync="normal", dedupe=index)

    def send(b: EmbeddedBackend, *ids: str, v: int = 1) -> list[tuple[str, bool]]:
        body = msgspec.json.encode(
            [
                {"specversion": "1.0", "id": i, "source": "s", "type": "t", "subject": "acme", "data": {"v": v}}
                for i in ids
            ]
        )
        found = decode_events(split_body(body, "batch", 100), "default", clock.now_us(), Limits(100, 10**9, None))
        return [(o.status.value, o.conflict) for o in b.ledger.append("default", found).result(10)]

    b = backend()
    b.meters.create("default", MeterSpec(slug="n", event_type="t", aggregation=Aggregation.SUM, value_property="$.v"))
    ids = [f"e{n}" for n in range(30)]
    for start in range(0, 30, 5):
        assert send(b, *ids[start : start + 5], ids[start]) == [("accepted", False)] * 5 + [("duplicate", False)]
    b.dedupe.wait()
    assert b.dedupe.runs()
    assert send(b, *ids) == [("duplicate", False)] * 30
    b.close()
    b = backend()
    assert send(b, "e3", "new", v=2) == [("duplicate", True), ("accepted", False)]
    Aggregator(b.ledger, b.usage, cap=100).drain()  # rollups are the aggregator's: bring them up to date
    rows = b.meters.query(b.meters.get("default", "n"), MeterQuery(start=0, end=T0 // 1_000_000 + 60))
    assert sum(int(r.value) for r in rows) == 32
    b.close()


def test_a_released_event_that_a_meter_rejects_frees_its_key(api: Api) -> None:
    api.create_meter(slug="tokens", eventType="llm", aggregation="SUM", valueProperty="$.tokens")
    api.client.put("/api/v1/settings", json={"unknownSubjects": "quarantine"}, headers=api.headers())

    def post(id_: str, tokens: object) -> str:
        event = {"specversion": "1.0", "id": id_, "source": "s", "type": "llm", "subject": "newco"}
        r = api.post_events([{**event, "data": {"tokens": tokens}}], Prefer="return=representation")
        return str(r.json()["events"][0]["status"])

    assert [post("bad", "many"), post("good", 5), post("bad", "many")] == [
        "quarantined",
        "quarantined",
        "duplicate",
    ]
    c = api.client.post("/api/v1/customers", json={"key": "newco"}, headers=api.headers())
    assert c.json()["released"] == {"accepted": 1, "rejected": 1}
    assert [post("good", 5), post("bad", 7), post("bad", 7)] == ["duplicate", "accepted", "duplicate"]
    assert api.query("tokens").json()["data"][0]["value"] == 12
