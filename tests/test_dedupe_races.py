"""The shared dedupe store under attack: many nodes (threads with their own pools, and separate
processes) claiming the same keys at once, conflicting payloads, failed writes that release, and
a claimant killed with SIGKILL between claim and confirm. Each key must be *accepted* (claimed
and confirmed under one token) exactly once, and a retry must never be dropped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from contract.dedupe_kit import LEASE_US, key, pg_dsn_store
from postgres_server import fresh_schema, server

from meterline.adapters.postgres.dedupe import PgDedupe
from meterline.domain.clock import FixedClock, SystemClock
from meterline.ports.dedupe import EventKey, Verdict

KEYS = 300


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_schema(server()) as dsn:
        pg_dsn_store(dsn, SystemClock().now_us)._db.close()  # migrate once, before the nodes race
        yield dsn


def _run_node(store: PgDedupe, keys: list[EventKey], seed: int, accepted: list[tuple[str, str]]) -> None:
    """A client of one API node: sends every key until it is answered accepted or duplicate;
    a third of its writes fail (release), and it retries them."""
    rng = random.Random(seed)
    todo = keys[:]
    rng.shuffle(todo)
    while todo:
        batch, todo = todo[:40], todo[40:]
        claims = store.claim(batch)
        mine = claims.claimed(batch)
        failed = [k for k in mine if rng.random() < 0.33]
        store.release(claims.token, failed)
        ok = store.confirm(claims.token, [k for k in mine if k not in failed])
        accepted.extend(
            (k.id, claims.token) for k, held in zip([k for k in mine if k not in failed], ok, strict=True) if held
        )
        retry = failed + [k for k, v in zip(batch, claims.verdicts, strict=True) if v is Verdict.BUSY]
        todo.extend(retry)
        if retry:
            time.sleep(0.005)  # a client's back-off before it retries


def test_many_nodes_accept_each_key_exactly_once(dsn: str) -> None:
    keys = [key(f"e{i}") for i in range(KEYS)]
    nodes = [pg_dsn_store(dsn, SystemClock().now_us) for _ in range(8)]
    accepted: list[tuple[str, str]] = []
    threads = [threading.Thread(target=_run_node, args=(n, keys, i, accepted)) for i, n in enumerate(nodes)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts = Counter(id_ for id_, _ in accepted)
        assert set(counts) == {k.id for k in keys}  # nothing dropped
        assert set(counts.values()) == {1}  # nothing accepted twice
        assert set(nodes[0].claim(keys).verdicts) == {Verdict.DUPLICATE}
    finally:
        for n in nodes:
            n._db.close()


def test_conflicting_payloads_racing_for_one_key_keep_the_winners(dsn: str) -> None:
    ids = [f"k{i}" for i in range(50)]
    nodes = [pg_dsn_store(dsn, SystemClock().now_us) for _ in range(6)]
    winners: dict[str, bytes] = {}
    start = threading.Barrier(len(nodes))

    def node(i: int) -> None:
        batch = [key(id_, f"payload-{i}".encode()) for id_ in ids]
        start.wait()
        claims = nodes[i].claim(batch)
        mine = claims.claimed(batch)
        for k, held in zip(mine, nodes[i].confirm(claims.token, mine), strict=True):
            assert held
            assert k.id not in winners
            winners[k.id] = k.digest

    threads = [threading.Thread(target=node, args=(i,)) for i in range(len(nodes))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(winners) == sorted(ids)
        for i in range(len(nodes)):
            verdicts = nodes[0].claim([key(id_, f"payload-{i}".encode()) for id_ in ids]).verdicts
            expected = [
                Verdict.DUPLICATE if winners[id_] == f"payload-{i}".encode() else Verdict.CONFLICT for id_ in ids
            ]
            assert verdicts == expected
    finally:
        for n in nodes:
            n._db.close()


NODE = textwrap.dedent(
    """
    import json, sys, time
    from meterline.adapters.postgres.database import PgDatabase
    from meterline.adapters.postgres.dedupe import PgDedupe
    from meterline.adapters.postgres.erasure import PgErasureCatalog
    from meterline.domain.clock import SystemClock
    from meterline.ports.dedupe import EventKey, Verdict
    dsn, first, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    db = PgDatabase(dsn, max_size=1)
    now = SystemClock().now_us
    store = PgDedupe(db, now, lease_us=int(sys.argv[5]), secret=PgErasureCatalog(db, now).secret)
    keys = [EventKey("default", "src", f"e{i}", b"d1") for i in range(first, first + count)]
    if mode == "die":
        claims = store.claim(keys)
        print(json.dumps({"token": claims.token, "claimed": [k.id for k in claims.claimed(keys)]}), flush=True)
        sys.stdin.readline()  # killed here, between claim and confirm
    accepted = []
    while keys:
        claims = store.claim(keys)
        mine = claims.claimed(keys)
        accepted += [k.id for k, ok in zip(mine, store.confirm(claims.token, mine)) if ok]
        keys = [k for k, v in zip(keys, claims.verdicts) if v is Verdict.BUSY]
        if keys:
            time.sleep(0.02)  # a client's back-off before it retries what was busy
    print(json.dumps(accepted), flush=True)
    """
)


def _node(dsn: str, first: int, count: int, mode: str, lease_us: int = LEASE_US) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", NODE, dsn, str(first), str(count), mode, str(lease_us)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def test_separate_processes_accept_each_key_once(dsn: str) -> None:
    procs = [_node(dsn, first, 200, "run") for first in (0, 50, 100, 150)]  # overlapping ranges
    accepted: Counter[str] = Counter()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        accepted.update(json.loads(out))
    assert accepted == Counter({f"e{i}": 1 for i in range(350)})


def test_a_claimant_killed_between_claim_and_confirm_never_drops_a_retry(dsn: str) -> None:
    dying = _node(dsn, 0, 100, "die")
    assert dying.stdout is not None
    claimed = json.loads(dying.stdout.readline())
    assert len(claimed["claimed"]) == 100
    os.kill(dying.pid, signal.SIGKILL)
    dying.wait(timeout=30)
    assert dying.returncode == -signal.SIGKILL
    keys = [key(f"e{i}") for i in range(100)]
    clock = FixedClock(SystemClock().now_us())
    retry = pg_dsn_store(dsn, clock.now_us)
    sink = pg_dsn_store(dsn, clock.now_us)
    try:
        # its lease is live: a retry is told to come back, never that the key is a duplicate
        assert set(retry.claim(keys).verdicts) == {Verdict.BUSY}
        # it had written the first 30 before it died: the sink reads them and confirms its token
        assert sink.confirm(claimed["token"], keys[:30]) == [True] * 30
        clock.advance(LEASE_US / 1e6 + 1)
        claims = retry.claim(keys)
        assert claims.verdicts == [Verdict.DUPLICATE] * 30 + [Verdict.CLAIMED] * 70
        assert retry.confirm(claims.token, keys[30:]) == [True] * 70
        # a copy of the other 70 written by the dead claimant is skipped by the sink
        assert sink.confirm(claimed["token"], keys[30:]) == [False] * 70
    finally:
        retry._db.close()
        sink._db.close()


def test_a_killed_claimant_is_taken_over_by_a_live_node_once_its_lease_lapses(dsn: str) -> None:
    lease_us = 300_000
    dying = _node(dsn, 0, 50, "die", lease_us)
    assert dying.stdout is not None
    json.loads(dying.stdout.readline())
    os.kill(dying.pid, signal.SIGKILL)
    dying.wait(timeout=30)
    survivor = _node(dsn, 0, 50, "run", lease_us)  # retries BUSY until the lease lapses, then claims
    out, _ = survivor.communicate(timeout=120)
    assert survivor.returncode == 0
    assert sorted(json.loads(out)) == sorted(f"e{i}" for i in range(50))


def test_a_sink_confirming_while_the_node_confirms_the_same_token_sees_every_key_held(dsn: str) -> None:
    """The node's confirm and a sink worker's confirm of the same claim at the same instant: the
    sink's waits for the node's row locks and must then answer True for every key (the node
    confirmed them under this very token). A single-statement confirm answered False there
    (its snapshot predates the node's commit) and the sink skipped acknowledged events."""
    import psycopg

    node, sink = pg_dsn_store(dsn, SystemClock().now_us), pg_dsn_store(dsn, SystemClock().now_us)
    keys = [key(f"r{i}") for i in range(25)]
    token = node.claim(keys).token
    answers: list[list[bool]] = []
    try:
        with psycopg.connect(dsn) as conn:  # the node's confirm, its transaction held open
            conn.execute(
                "UPDATE dedupe_keys SET confirmed = true WHERE token = %s AND NOT confirmed", (uuid.UUID(token),)
            )
            sinking = threading.Thread(target=lambda: answers.append(sink.confirm(token, keys)))
            sinking.start()
            with psycopg.connect(dsn, autocommit=True) as watch:  # until the sink waits for the row locks
                waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                while not watch.execute(waiting + " AND query LIKE '%%dedupe_keys%%'").fetchone()[0]:  # type: ignore[index]
                    assert sinking.is_alive(), "the sink's confirm returned without waiting"
                    time.sleep(0.01)
            conn.commit()
        sinking.join(timeout=60)
        assert answers == [[True] * len(keys)]
    finally:
        node._db.close()
        sink._db.close()
