"""The erasure chain (``domain.integrity.erasures``): erased entries are as tamper-evident as the
rest of the ledger. On a real SQLite file edited by hand with the sqlite3 module, ``meterline
verify --skip-rollups`` names an erased entry changed together with its recorded erased digest,
either of them changed alone, a link deleted, erasures reordered; a head exported between two
erasures still verifies after the second and catches an edit of the first's entries even when
the whole erasure chain in the file was recomputed; a store whose erasure predates the chain is
linked once at its first open, and removing that marker does not re-link it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_api
from test_billing_api import ok, post

from meterline.adapters.sqlite.chain import ENTRY_ROWS, entry_content, read_format
from meterline.adapters.sqlite.database import DB_FILE
from meterline.domain.integrity.chain import GENESIS
from meterline.domain.integrity.erasures import erasure_link

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

HEAD = "head-after-erasure-1.json"


def _event(n: int, subject: str) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"ev-{subject}-{n}",
        "source": "erasure-chain-test",
        "type": "call",
        "subject": subject,
        "time": f"2026-03-01T1{n}:00:00Z",
        "data": {"v": 10 + n},
    }


def verify(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "verify", "--data-dir", str(data_dir), "--skip-rollups", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Events of alice, bob and carol; alice erased (erasure 1), a head exported, bob erased
    (erasure 2); closed. The head file lies beside the data directory."""
    root = tmp_path_factory.mktemp("erasure-chain")
    gen = build_api(root)
    api = next(gen)
    assert api.create_meter(slug="calls", eventType="call", aggregation="SUM", valueProperty="$.v").status_code == 201
    events = [_event(n, who) for who in ("alice", "bob", "carol") for n in range(3)]
    assert api.post_events(events).status_code == 204
    done = api.query("calls", {"consistency": "strong"})
    assert done.status_code == 200, done.text
    ok(post(api, "/api/v1/erasures", {"subject": "alice", "reason": "GDPR"}), 201)
    exported = verify(api.data_dir, "--export-head", str(root / HEAD))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    ok(post(api, "/api/v1/erasures", {"subject": "bob", "reason": "GDPR"}), 201)
    for _ in gen:
        pass
    return api.data_dir


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(pristine, target)
    shutil.copy(pristine.parent / HEAD, tmp_path / HEAD)
    return target


def db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / DB_FILE, isolation_level=None)


def erased_of(conn: sqlite3.Connection, erasure: int) -> list[int]:
    return [s for (s,) in conn.execute("SELECT seq FROM ledger_erased WHERE erasure = ? ORDER BY seq", (erasure,))]


def raise_quantity(conn: sqlite3.Connection, seq: int) -> bytes:
    """Change an erased entry's quantity; returns the content digest of the edited row."""
    raw = conn.execute("SELECT raw FROM events WHERE seq = ?", (seq,)).fetchone()[0]
    value = json.loads(raw)["data"]["v"]
    edited = raw.replace(f'"v":{value}'.encode(), f'"v":{value + 900}'.encode())
    assert edited != raw
    conn.execute("UPDATE events SET raw = ? WHERE seq = ?", (edited, seq))
    row = conn.execute(ENTRY_ROWS, (seq - 1, 1)).fetchone()
    return entry_content(row, read_format(conn))


def recompute_erasure_chain(conn: sqlite3.Connection) -> None:
    """What someone who knows the rule could do: every link and the head recomputed."""
    prev = GENESIS
    for pos, erasure in conn.execute("SELECT pos, erasure FROM erasure_chain ORDER BY pos").fetchall():
        entries = conn.execute("SELECT seq, content FROM ledger_erased WHERE link = ?", (pos,)).fetchall()
        prev = erasure_link(prev, pos, erasure, entries)
        conn.execute("UPDATE erasure_chain SET hash = ? WHERE pos = ?", (prev, pos))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'erasure_head'", (f"{pos}:{prev.hex()}",))


def test_an_untouched_store_verifies_and_each_erasure_is_a_link(store: Path) -> None:
    done = verify(store)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "erasure chain: link 2," in done.stdout
    conn = db(store)
    assert [e for (e,) in conn.execute("SELECT erasure FROM erasure_chain ORDER BY pos")] == [1, 2]
    assert conn.execute("SELECT count(*) FROM ledger_erased WHERE link IS NULL").fetchone()[0] == 0


def test_an_erased_entry_edited_with_its_recorded_digest_is_named(store: Path) -> None:
    conn = db(store)
    seq = erased_of(conn, 1)[1]
    content = raise_quantity(conn, seq)
    conn.execute("UPDATE ledger_erased SET content = ? WHERE seq = ?", (content, seq))
    done = verify(store)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "erasure 1 (erasure-chain link 1" in done.stderr and str(seq) in done.stderr, done.stderr


def test_the_recorded_digest_alone_or_the_erased_row_alone_is_named(store: Path) -> None:
    conn = db(store)
    first, second = erased_of(conn, 2)[:2]
    recorded = conn.execute("SELECT content FROM ledger_erased WHERE seq = ?", (first,)).fetchone()[0]
    conn.execute("UPDATE ledger_erased SET content = zeroblob(32) WHERE seq = ?", (first,))
    done = verify(store)
    assert done.returncode == 1 and f"entry {first} (erased event" in done.stderr, done.stdout + done.stderr
    conn.execute("UPDATE ledger_erased SET content = ? WHERE seq = ?", (recorded, first))
    assert verify(store).returncode == 0
    raise_quantity(conn, second)
    done = verify(store)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"entry {second} (erased event" in done.stderr and "changed after" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("DELETE FROM erasure_chain WHERE pos = 1", "belongs to no link of the erasure chain"),
        ("DELETE FROM erasure_chain WHERE pos = 2", "belongs to no link of the erasure chain"),
        ("DELETE FROM meta WHERE key = 'erasure_head'", "no recorded erasure head"),
        ("UPDATE ledger_erased SET link = NULL WHERE erasure = 2", "belongs to no link of the erasure chain"),
        ("UPDATE erasure_chain SET hash = zeroblob(32) WHERE pos = 2", "erasure 2 (erasure-chain link 2"),
        ("UPDATE erasure_chain SET erasure = 3 - erasure", "erasure 2 (erasure-chain link 1"),  # reordered
        ("UPDATE ledger_erased SET link = 3 - link", "erasure 1 (erasure-chain link 1"),  # entries swapped
    ],
)
def test_a_deleted_or_reordered_link_is_named(store: Path, edit: str, named: str) -> None:
    db(store).execute(edit)
    done = verify(store)
    assert done.returncode == 1, done.stdout + done.stderr
    assert named in done.stderr, done.stderr


def test_a_head_exported_between_erasures_holds_and_proves_the_first_erasure(store: Path, tmp_path: Path) -> None:
    head = json.loads((tmp_path / HEAD).read_text())
    assert head["erasures"] == 1 and len(head["erasuresHash"]) == 64
    done = verify(store, "--against", str(tmp_path / HEAD))
    assert done.returncode == 0, done.stdout + done.stderr  # erasure 2 came later
    assert "matches the exported head" in done.stdout
    assert "erasure-chain links 2 to 2 (erasures 2) were made after the exported head" in done.stdout, done.stdout
    conn = db(store)
    seq = erased_of(conn, 1)[0]
    conn.execute("UPDATE ledger_erased SET content = ? WHERE seq = ?", (raise_quantity(conn, seq), seq))
    recompute_erasure_chain(conn)
    assert verify(store).returncode == 0  # the file alone cannot tell: the whole erasure chain was recomputed
    done = verify(store, "--against", str(tmp_path / HEAD))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "erasure chain at link 1 differs from the exported head" in done.stderr, done.stderr


def test_a_head_exported_before_the_erasure_chain_is_still_accepted(store: Path, tmp_path: Path) -> None:
    head = json.loads((tmp_path / HEAD).read_text())
    old = {k: v for k, v in head.items() if k not in ("erasures", "erasuresHash")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    done = verify(store, "--against", str(tmp_path / "old.json"))
    assert done.returncode == 0, done.stdout + done.stderr


def as_before_the_erasure_chain(data_dir: Path) -> None:
    """The store as a version without the erasure chain left it (no table, column or meta)."""
    conn = db(data_dir)
    conn.executescript(
        "DROP TABLE erasure_chain;"
        "DELETE FROM meta WHERE key IN ('erasure_head', 'erasure_anchor');"
        "CREATE TABLE old_erased AS SELECT seq, erasure, kept, content, key_hash FROM ledger_erased;"
        "DROP TABLE ledger_erased;"
        "CREATE TABLE ledger_erased (seq INTEGER PRIMARY KEY, erasure INTEGER NOT NULL, kept BLOB NOT NULL,"
        " content BLOB NOT NULL, key_hash INTEGER NOT NULL);"
        "INSERT INTO ledger_erased SELECT * FROM old_erased; DROP TABLE old_erased;"
    )
    conn.close()


def test_an_old_store_is_linked_once_and_then_guarded(store: Path) -> None:
    as_before_the_erasure_chain(store)
    done = verify(store)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "erasure-chain links 1 to 2 are of erasures made before" in done.stdout, done.stdout
    conn = db(store)
    seq = erased_of(conn, 2)[0]
    conn.execute("UPDATE ledger_erased SET content = ? WHERE seq = ?", (raise_quantity(conn, seq), seq))
    conn.execute("DELETE FROM meta WHERE key = 'erasure_anchor'")  # never re-links what it holds
    done = verify(store)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "erasure 2 (erasure-chain link 2" in done.stderr, done.stderr
    assert conn.execute("SELECT value FROM meta WHERE key = 'erasure_anchor'").fetchone() is None
