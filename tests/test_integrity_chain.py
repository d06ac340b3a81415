"""The ledger's hash chain: ``meterline verify`` passes on an untouched store and names the
first entry whose content, place or presence was changed by hand in the SQLite file (with the
sqlite3 shell on the real file); exported heads, signed or not, prove a prefix unchanged even
after the whole chain in the file was recomputed."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import build_api

from meterline.adapters.sqlite.database import DB_FILE
from meterline.domain.integrity.chain import GENESIS, ChainFormat, link

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

EVENTS = 12


def _event(n: int) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"ev-{n}",
        "source": "chain-test",
        "type": "call",
        "subject": f"cust-{n % 3}",
        "time": "2026-03-01T11:00:00Z",
        "data": {"v": n + 1},
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a SUM meter and EVENTS events in three requests, closed (copied per test)."""
    root = tmp_path_factory.mktemp("chain")
    gen = build_api(root)
    api = next(gen)
    assert api.create_meter(slug="calls", eventType="call", aggregation="SUM", valueProperty="$.v").status_code == 201
    for start, end in ((0, 5), (5, 9), (9, EVENTS)):
        assert api.post_events([_event(n) for n in range(start, end)]).status_code == 204
    # the rollups hold every event before the store is closed (the aggregator runs behind the
    # ack: closed earlier, the rollup rows a test edits might not exist yet)
    done = api.query("calls", {"consistency": "strong"})
    assert done.status_code == 200 and done.json()["data"][0]["value"] == EVENTS * (EVENTS + 1) // 2, done.text
    for _ in gen:
        pass
    return api.data_dir


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(pristine, target)
    return target


def verify(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "verify", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def sql(data_dir: Path, statement: str) -> None:
    """Edit the real file by hand, as someone with shell access would (the edit must change a row)."""
    done = subprocess.run(
        ["sqlite3", str(data_dir / DB_FILE), f"{statement}; SELECT changes();"],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert int(done.stdout.split()[-1]) > 0, f"the edit changed no row: {statement}"


def test_an_untouched_ledger_verifies(store: Path) -> None:
    done = verify(store)
    assert done.returncode == 0, done.stderr
    assert f"{EVENTS} entries walked" in done.stdout
    assert "rollups: identical" in done.stdout
    assert done.stdout.strip().endswith("verified")


def test_an_edited_payload_is_named(store: Path) -> None:
    sql(store, "UPDATE events SET raw = replace(raw, '\"v\":7', '\"v\":70') WHERE seq = 7")
    done = verify(store)
    assert done.returncode == 1
    assert "entry 7 (event 'ev-6' from source 'chain-test'" in done.stderr
    assert "content or its place" in done.stderr


def test_an_edited_column_is_named(store: Path) -> None:
    sql(store, "UPDATE events SET subject = 'someone-else' WHERE seq = 4")
    done = verify(store)
    assert done.returncode == 1 and "entry 4 (event 'ev-3'" in done.stderr


def test_a_deleted_entry_is_named(store: Path) -> None:
    sql(store, "DELETE FROM events WHERE seq = 5")
    done = verify(store)
    assert done.returncode == 1 and "entry 5 is missing" in done.stderr


def test_a_deleted_last_entry_is_named(store: Path) -> None:
    sql(store, f"DELETE FROM events WHERE seq = {EVENTS}")
    done = verify(store)
    assert done.returncode == 1
    assert f"entries {EVENTS} to {EVENTS} are missing" in done.stderr


def test_reordered_entries_are_named(store: Path) -> None:
    sql(
        store,
        "UPDATE events SET seq = -3 WHERE seq = 3; UPDATE events SET seq = 3 WHERE seq = 4;"
        " UPDATE events SET seq = 4 WHERE seq = -3",
    )
    done = verify(store)
    assert done.returncode == 1 and "entry 3 (event 'ev-3'" in done.stderr


@pytest.mark.parametrize("seq", [0, -7])
def test_an_entry_added_before_the_first_is_named(store: Path, seq: int) -> None:
    """A copy of entry 3 inserted at a position no append makes (0 or below), with its hash:
    the walk from entry 1 reads it too and names it."""
    sql(
        store,
        f"INSERT INTO events (seq, namespace, source, id, type, subject, time_us, received_us, digest, raw,"
        f" chain, correction) SELECT {seq}, namespace, source, 'extra', type, subject, time_us, received_us,"
        " digest, raw, chain, correction FROM events WHERE seq = 3",
    )
    done = verify(store, "--skip-rollups")
    assert done.returncode == 1, done.stdout
    assert f"entry {seq} (event 'extra' from source 'chain-test'" in done.stderr
    assert "before the ledger's first entry" in done.stderr


def test_a_pruned_marker_beside_its_entry_is_named(store: Path) -> None:
    sql(store, "INSERT INTO ledger_pruned SELECT seq, x'00', chain, 1 FROM events WHERE seq = 4")
    done = verify(store, "--skip-rollups")
    assert done.returncode == 1 and "entry 4 (" in done.stderr and "stored twice" in done.stderr


@pytest.mark.parametrize(
    "also",
    [
        "DELETE FROM meta WHERE key = 'chain_anchor'",
        "DELETE FROM meta WHERE key = 'chain_anchor'; UPDATE events SET chain = NULL",
        "DELETE FROM meta WHERE key = 'chain_anchor';"
        " INSERT INTO meta VALUES ('chain_migrating', '0:' || hex(zeroblob(32)))",
    ],
)
def test_removing_the_anchor_does_not_relink_an_edited_entry(store: Path, also: str) -> None:
    """The anchor (or a forged migration marker) removed with an edit: the open that ``verify``
    does must not link the entries afresh, which would make the edited one match."""
    sql(store, "UPDATE events SET raw = replace(raw, '\"v\":7', '\"v\":70') WHERE seq = 7; " + also)
    done = verify(store, "--skip-rollups")
    assert done.returncode == 1, done.stdout
    assert "entry 1 (event 'ev-0'" in done.stderr or "entry 7 (event 'ev-6'" in done.stderr, done.stderr


def test_an_edited_hash_is_named(store: Path) -> None:
    sql(store, "UPDATE events SET chain = zeroblob(32) WHERE seq = 9")
    done = verify(store)
    assert done.returncode == 1 and "entry 9 (event 'ev-8'" in done.stderr


def test_edited_rollups_fail_verify(store: Path) -> None:
    sql(store, "UPDATE rollups SET total = 27 WHERE level = 60 AND subject = 'cust-1'")
    done = verify(store)
    assert done.returncode == 1 and "rollups differ" in done.stderr
    assert verify(store, "--skip-rollups").returncode == 0


def _rechain(data_dir: Path) -> None:
    """What someone who edits the file and knows the rule would do: recompute every hash and
    the recorded head, so the store alone verifies again."""
    conn = sqlite3.connect(data_dir / DB_FILE)
    prev, seq = GENESIS, 0
    since = conn.execute("SELECT value FROM meta WHERE key = 'chain_format2_since'").fetchone()
    fmt = ChainFormat(None if since is None else int(since[0]))
    rows = conn.execute(
        "SELECT seq, namespace, source, id, type, subject, time_us, received_us, digest, raw, correction FROM events"
        " ORDER BY seq"
    ).fetchall()
    for row in rows:
        seq = row[0]
        raw = row[9] if isinstance(row[9], bytes) else row[9].encode()  # the edit made it TEXT
        prev = link(prev, seq, fmt.content(seq, *row[1:9], raw, row[10]))
        conn.execute("UPDATE events SET chain = ? WHERE seq = ?", (prev, seq))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'chain_head'", (f"{seq}:{prev.hex()}",))
    conn.commit()
    conn.close()


def test_an_exported_head_proves_the_prefix_after_the_file_was_rechained(store: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.json"
    assert verify(store, "--skip-rollups", "--export-head", str(head)).returncode == 0
    assert verify(store, "--skip-rollups", "--against", str(head)).returncode == 0
    sql(store, "UPDATE events SET raw = replace(raw, '\"v\":3', '\"v\":300') WHERE seq = 3")
    _rechain(store)
    assert verify(store, "--skip-rollups").returncode == 0  # the file alone cannot tell
    done = verify(store, "--skip-rollups", "--against", str(head))
    assert done.returncode == 1
    assert f"the chain at entry {EVENTS} differs from the exported head" in done.stderr


def test_a_signed_head(store: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def keypair(name: str) -> tuple[Path, Path]:
        key = Ed25519PrivateKey.generate()
        private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return private, public

    private, public = keypair("auditor")
    _, other = keypair("other")
    head = tmp_path / "head.json"
    assert verify(store, "--skip-rollups", "--export-head", str(head), "--sign-key", str(private)).returncode == 0
    done = verify(store, "--skip-rollups", "--against", str(head), "--public-key", str(public))
    assert done.returncode == 0 and "signed by key" in done.stdout
    wrong = verify(store, "--skip-rollups", "--against", str(head), "--public-key", str(other))
    assert wrong.returncode == 2 and "signed by another key" in wrong.stderr
    forged = tmp_path / "forged.json"
    forged.write_text(head.read_text().replace('"seq": 12', '"seq": 11'))
    bad = verify(store, "--skip-rollups", "--against", str(forged))
    assert bad.returncode == 2 and "signature does not verify" in bad.stderr


def test_a_head_file_that_is_not_one(store: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    done = verify(store, "--against", str(junk))
    assert done.returncode == 2 and "not a ledger head document" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_store_from_before_the_chain_gains_it(store: Path, tmp_path: Path) -> None:
    """Pre-existing entries are linked from the genesis hash at the first open, and the report
    says they are proven unchanged only since then."""
    sql(store, "UPDATE events SET chain = NULL; DELETE FROM meta WHERE key IN ('chain_head', 'chain_anchor')")
    done = verify(store)
    assert done.returncode == 0, done.stderr
    assert f"entries 1 to {EVENTS} were in the store before it had the chain" in done.stdout
    sql(store, "UPDATE events SET chain = NULL WHERE seq = 2")  # never re-linked once anchored
    again = verify(store)
    assert again.returncode == 1 and "entry 2 (event 'ev-1'" in again.stderr


@pytest.fixture(scope="module")
def corrected_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 4 events, then a void of ev-1 (entry 5) and an amend of ev-2 (entry 6)."""
    root = tmp_path_factory.mktemp("corrected")
    gen = build_api(root)
    api = next(gen)
    assert api.create_meter(slug="calls", eventType="call", aggregation="SUM", valueProperty="$.v").status_code == 201
    assert api.post_events([_event(n) for n in range(4)]).status_code == 204
    void = {"source": "chain-test", "reason": "test traffic"}
    assert api.client.post("/api/v1/events/ev-1/void", json=void, headers=api.headers()).status_code == 201
    amend = {"source": "chain-test", "reason": "wrong unit", "event": {**_event(2), "data": {"v": 30}}}
    assert api.client.post("/api/v1/events/ev-2/amend", json=amend, headers=api.headers()).status_code == 201
    done = api.query("calls", {"consistency": "strong"})
    assert done.status_code == 200 and done.json()["data"][0]["value"] == 1 + 30 + 4, done.text
    for _ in gen:
        pass
    return api.data_dir


@pytest.fixture
def corrected(corrected_pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(corrected_pristine, target)
    return target


def test_untouched_corrections_verify(corrected: Path) -> None:
    done = verify(corrected)
    assert done.returncode == 0, done.stderr
    assert "corrections: every record matches its ledger entry" in done.stdout


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        # the audit trail of a void: its reason or actor, its original, its kind
        ("UPDATE corrections SET reason = 'customer request' WHERE seq = 5", "differs from the void entry's"),
        ("UPDATE corrections SET actor = 'someone' WHERE seq = 5", "differs from the void entry's"),
        ("UPDATE corrections SET original = 4 WHERE seq = 5", "names entry 4 as its original, an entry of another"),
        ("UPDATE corrections SET action = 'amend' WHERE seq = 5", "says amend, but the entry is a void"),
        # an amend made to correct another event (the rollups would follow it)
        ("UPDATE corrections SET original = 1 WHERE seq = 6", "names entry 1 as its original, an entry of another"),
        # the audit trail of an amend: its entry carries its record (content format 2)
        ("UPDATE corrections SET reason = 'customer request' WHERE seq = 6", "differs from the amend entry's"),
        ("UPDATE corrections SET actor = 'someone' WHERE seq = 6", "differs from the amend entry's"),
        ("UPDATE corrections SET action = 'void' WHERE seq = 6", "says void, but the entry is an amend"),
    ],
)
def test_an_edited_correction_record_is_named(corrected: Path, edit: str, named: str) -> None:
    sql(corrected, edit)
    done = verify(corrected, "--skip-rollups")
    assert done.returncode == 1, done.stdout + done.stderr
    entry = "5 (event 'ev-1'" if "seq = 5" in edit else "6 (event 'ev-2'"
    assert f"the correction record of entry {entry} from source 'chain-test'" in done.stderr, done.stderr
    assert named in done.stderr, done.stderr


def test_a_removed_or_added_correction_record_is_named(corrected: Path) -> None:
    sql(corrected, "DELETE FROM corrections WHERE seq = 5")
    done = verify(corrected, "--skip-rollups")
    assert done.returncode == 1
    assert "entry 5 (event 'ev-1' from source 'chain-test' in namespace" in done.stderr
    assert "is a void without its correction record" in done.stderr
    # put back as it was (the void of entry 2, ev-1): verified again
    sql(corrected, "INSERT INTO corrections SELECT 5, 2, namespace, 'void', 'test traffic', actor FROM corrections")
    assert verify(corrected, "--skip-rollups").returncode == 0
    sql(corrected, "INSERT INTO corrections SELECT 40, 1, namespace, 'void', 'made up', actor FROM corrections LIMIT 1")
    done = verify(corrected, "--skip-rollups")
    assert done.returncode == 1
    assert "the correction record of entry 40 has no ledger entry" in done.stderr, done.stderr


def test_an_edited_amend_entry_record_breaks_the_chain(corrected: Path) -> None:
    """The record an amend's entry carries is covered by its hash: making it agree with an
    edited correction row is an edit of the entry."""
    sql(corrected, "UPDATE corrections SET reason = 'customer request' WHERE seq = 6")
    sql(corrected, "UPDATE events SET correction = replace(correction, 'wrong unit', 'customer request') WHERE seq = 6")
    done = verify(corrected, "--skip-rollups")
    assert done.returncode == 1
    assert "entry 6 (event 'ev-2' from source 'chain-test' in namespace 'default') does not match" in done.stderr


def test_a_removed_amend_record_is_named(corrected: Path) -> None:
    sql(corrected, "DELETE FROM corrections WHERE seq = 6")
    done = verify(corrected, "--skip-rollups")
    assert done.returncode == 1
    assert "entry 6 (event 'ev-2' from source 'chain-test' in namespace 'default') is an amend without its" in (
        done.stderr
    )


@pytest.mark.parametrize("marker", ["UPDATE meta SET value = '7'", "DELETE FROM meta"])
def test_moving_the_format_switch_breaks_the_chain(corrected: Path, marker: str) -> None:
    """A downgrade: the amend's reason edited, and the switch moved past it (or removed, which
    the next open records again after the last entry), so that format 1, which does not cover
    the reason, would check it. Every entry from the store's real switch on fails its link."""
    sql(corrected, "UPDATE corrections SET reason = 'customer request' WHERE seq = 6")
    sql(corrected, f"{marker} WHERE key = 'chain_format2_since'")
    done = verify(corrected, "--skip-rollups")
    assert done.returncode == 1
    assert "entry 1 (event 'ev-0' from source 'chain-test' in namespace 'default') does not match" in done.stderr


def _as_the_previous_version(data_dir: Path) -> None:
    """The store as a version without content format 2 wrote it: no switch position, no
    records beside the entries, every hash by format 1."""
    sql(data_dir, "UPDATE events SET correction = NULL WHERE correction IS NOT NULL")
    sql(data_dir, "DELETE FROM meta WHERE key = 'chain_format2_since'")
    _rechain(data_dir)


@pytest.fixture
def upgraded(corrected: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The corrected store written by the previous version (amend at entry 6), its head exported
    then, and opened by this version: an amend of ev-3 (entry 7) and one more event (entry 8)."""
    _as_the_previous_version(corrected)
    head = tmp_path / "head.json"
    assert verify(corrected, "--skip-rollups", "--export-head", str(head)).returncode == 0
    gen = build_api(tmp_path)
    api = next(gen)
    amend = {"source": "chain-test", "reason": "late fix", "event": {**_event(3), "data": {"v": 40}}}
    assert api.client.post("/api/v1/events/ev-3/amend", json=amend, headers=api.headers()).status_code == 201
    assert api.post_events([_event(20)]).status_code == 204
    done = api.query("calls", {"consistency": "strong"})
    assert done.status_code == 200 and done.json()["data"][0]["value"] == 1 + 30 + 40 + 21, done.text
    for _ in gen:
        pass
    yield corrected, head


def test_a_store_from_before_format_2_verifies_and_says_what_is_not_covered(upgraded: tuple[Path, Path]) -> None:
    store, head = upgraded
    done = verify(store, "--against", str(head))
    assert done.returncode == 0, done.stderr
    assert "matches the exported head at entry 6" in done.stdout
    assert "the reason and actor of 1 amend(s) before entry 7 are in their records only" in done.stdout
    # a head document of the previous version names the previous rule; its hash still holds
    old = head.read_text().replace("sha256-chain/2", "sha256-chain/1")
    head.write_text(old)
    assert verify(store, "--skip-rollups", "--against", str(head)).returncode == 0
    # the amend from before the switch: its reason is in its record only (not covered)
    sql(store, "UPDATE corrections SET reason = 'customer request' WHERE seq = 6")
    assert verify(store, "--skip-rollups").returncode == 0
    # the amend from after it: named
    sql(store, "UPDATE corrections SET reason = 'customer request' WHERE seq = 7")
    done = verify(store, "--skip-rollups")
    assert done.returncode == 1
    assert "the correction record of entry 7 (event 'ev-3' from source 'chain-test'" in done.stderr, done.stderr
    assert "differs from the amend entry's original, reason or actor" in done.stderr


@pytest.mark.parametrize(("value", "first"), [("9", 7), ("1", 1), ("DELETE", 7)])
def test_moving_the_switch_of_an_upgraded_store_breaks_the_chain(
    upgraded: tuple[Path, Path], value: str, first: int
) -> None:
    """Later (or removed: recorded again after the last entry): the format-2 entries before it
    fail; earlier: the format-1 entries after it fail."""
    store, _ = upgraded
    if value == "DELETE":
        sql(store, "DELETE FROM meta WHERE key = 'chain_format2_since'")
    else:
        sql(store, f"UPDATE meta SET value = '{value}' WHERE key = 'chain_format2_since'")
    done = verify(store, "--skip-rollups")
    assert done.returncode == 1
    assert f"entry {first} (event 'ev-" in done.stderr and "does not match the chain" in done.stderr, done.stderr
