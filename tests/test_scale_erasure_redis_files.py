"""Erasure of a subject in scale mode leaves nothing of it in Redis's own files: a real
``redis-server`` of this module, started in a directory of its own with an AOF (``appendonly
yes``) and RDB snapshots (``save``) on, holds the dedupe store's keys (``[dedupe] backend =
"redis"``) and the live usage counters (``[redis] counters = true``). Before the erasure its AOF
and ``dump.rdb`` hold the subject (the counters' keys) and never an event id (the dedupe store
names keys by keyed hashes); after it (asked of a node, or finished by another node after the
one erasing died before rewriting the files) no byte of the subject is left, while a control
subject's stay, and the audit record says what was done."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Api, build_scale_api, free_port
from scale_site import Site, site
from stack.launch import Stack
from test_billing_api import ev, get, move_to, ok, post
from test_scale_erasure import SUBJECT, killed, unfinished

from meterline import bootstrap_scale

pytestmark = pytest.mark.heavy

RUN = uuid.uuid4().hex[:8]
CONTROL = f"control-{RUN}"
CONTROL_IDS = [f"evt-control-{RUN}-{i}" for i in range(2)]
MARCH = [("from", "2026-03-01T00:00:00Z"), ("to", "2026-04-01T00:00:00Z")]


@pytest.fixture(scope="module")
def persisted_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A redis-server of this module with an AOF and snapshots on: its URL and data directory."""
    root = tmp_path_factory.mktemp("persisted-redis", numbered=True)
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root),
            "--appendonly", "yes", "--save", "3600 1", "--appendfsync", "everysec"]  # fmt: skip
    with (root / "redis.log").open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "redis.log").read_text()) from None
            time.sleep(0.05)
    client.close()
    try:
        yield url, root
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def redis_site(
    scale_stack: Stack, persisted_redis: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A site of its own whose dedupe store and live usage counters are in ``persisted_redis``."""
    url, _ = persisted_redis
    extra = '\n[aggregation]\nmax_wait = 60.0\n[dedupe]\nbackend = "redis"\n'
    with site(scale_stack, tmp_path_factory.mktemp("redis-files-site", numbered=True), extra=extra) as s:
        text = s.config_path.read_text().replace(
            f'[redis]\nurl = "{scale_stack.redis}"', f'[redis]\nurl = "{url}"\ncounters = true'
        )
        assert "counters = true" in text
        s.config_path.write_text(text)
        s.worker()
        yield s


@pytest.fixture
def api(redis_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """An in-process API node of the site (it looks for unfinished erasures only when asked)."""
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 3600.0)
    gen = build_scale_api(redis_site, tmp_path / "api", billing={"scheduler_enabled": False})
    yield next(gen)
    gen.close()


def files_holding(root: Path, words: list[str]) -> dict[str, list[str]]:
    """Per word, the files of Redis's directory (AOF directory, snapshot) whose bytes hold it."""
    found: dict[str, list[str]] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name == "redis.log":
                continue
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except OSError:  # Redis removed it meanwhile (an old AOF file after a rewrite)
                continue
            for word in words:
                if word.encode() in data:
                    found.setdefault(word, []).append(str(path.relative_to(root)))
    return found


def seed(api: Api, persisted_redis: tuple[str, Path], subject: str, ids: list[str]) -> None:
    """Events of ``subject`` and of the control subject, applied and counted in Redis (dedupe
    keys and live counters), and in Redis's AOF and a fresh snapshot."""
    move_to(api, "2026-03-10T00:00:00Z")
    ok(api.create_meter(slug="calls", eventType="request", aggregation="SUM", valueProperty="$.calls"), 201)
    ok(post(api, "/api/v1/customers", {"key": f"acme-{subject}", "subjectKeys": [subject]}), 201)
    events = [ev(i, subject, f"2026-03-0{n + 1}T10:00:00Z", calls=n + 2) for n, i in enumerate(ids)]
    events += [ev(i, CONTROL, f"2026-03-0{n + 1}T11:00:00Z", calls=1) for n, i in enumerate(CONTROL_IDS)]
    r = api.post_events(events)
    assert r.status_code in (200, 202, 204), r.text
    assert [row["value"] for row in ok(api.query("calls", [*MARCH, ("subject", subject)]))["data"]] == [5]
    url, root = persisted_redis
    client = redis.Redis.from_url(url)
    try:  # the sink worker feeds the live counters after its ClickHouse write: wait for them
        deadline = time.monotonic() + 120
        while not any(subject.encode() in k for k in client.scan_iter(match="*lu:*", count=1000)):
            assert time.monotonic() < deadline, "the live counters never held the subject"
            time.sleep(0.1)
        client.save()  # a snapshot holding the subject (as `save` would make one in time)
    finally:
        client.close()
    before = files_holding(root, [subject, *ids, CONTROL, *CONTROL_IDS])
    assert set(before) == {subject, CONTROL}, before  # no event id: keyed hashes only
    assert any(f.startswith("appendonlydir") for f in before[subject]) and "dump.rdb" in before[subject], before


def left_of(root: Path, words: list[str]) -> dict[str, list[str]]:
    """What Redis's files still hold of ``words`` once Redis has removed the old AOF files it
    replaced (they go right after a rewrite: looked at again for a while)."""
    deadline = time.monotonic() + 30
    while (left := files_holding(root, words)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_an_erasure_rewrites_the_aof_and_the_snapshot(
    api: Api, redis_site: Site, persisted_redis: tuple[str, Path]
) -> None:
    subject = f"ana.person-{RUN}"
    ids = [f"evt-ana-{RUN}-{i}" for i in range(2)]
    seed(api, persisted_redis, subject, ids)
    record = ok(post(api, "/api/v1/erasures", {"subject": subject, "reason": "GDPR request #9"}), 201)
    _, root = persisted_redis
    assert left_of(root, [subject, *ids]) == {}
    assert record["redisFiles"] == {"aof": "rewritten", "rdb": "saved"}, record
    assert record["counts"]["dedupeKeys"] == 2 and record["counts"]["liveCounters"] >= 1, record
    kept = files_holding(root, [CONTROL, *CONTROL_IDS])
    assert set(kept) == {CONTROL}, kept  # the rewrite keeps what was not erased
    assert ok(get(api, "/api/v1/erasures"))["items"][0] == record


def test_an_erasure_finished_by_another_node_rewrites_the_files(
    api: Api, redis_site: Site, persisted_redis: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node erasing dies after every step but the files' rewrite: they still hold the
    subject; a node that finishes the erasure rewrites them."""
    subject = SUBJECT  # the one killed_erasure.py is asked to erase
    ids = [f"evt-zora-files-{RUN}-{i}" for i in range(2)]
    seed(api, persisted_redis, subject, ids)
    killed(redis_site, api.key, "before-files")
    assert len(unfinished(redis_site)) == 1
    _, root = persisted_redis
    assert set(files_holding(root, [subject, *ids])) == {subject}, "the files are left as they were"
    monkeypatch.setattr(bootstrap_scale, "ERASURE_RESUME_EVERY", 0.5)  # the node below looks at once
    for _ in build_scale_api(redis_site, tmp_path / "finishing"):
        deadline = time.monotonic() + 120
        while unfinished(redis_site) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert unfinished(redis_site) == []
    record = ok(get(api, "/api/v1/erasures"))["items"][0]
    assert record["redisFiles"] == {"aof": "rewritten", "rdb": "saved"}, record
    assert left_of(root, [subject, *ids]) == {}
    assert set(files_holding(root, [CONTROL, *CONTROL_IDS])) == {CONTROL}


def test_what_redis_does_not_let_us_see_is_recorded_not_failed(persisted_redis: tuple[str, Path]) -> None:
    """Where CONFIG is unavailable (renamed on managed Redis: here refused through an ACL user
    without it), the AOF is judged from INFO and rewritten; the snapshot is ``unknown``."""
    from meterline.adapters.redis.persistence import RedisFiles

    url, _ = persisted_redis
    admin = redis.Redis.from_url(url)
    user = f"noconfig-{RUN}"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"], commands=["-config"])
    try:
        limited = redis.Redis.from_url(url, username=user, password="pw")
        done: Any = RedisFiles(limited).rewrite_files(60.0)
        limited.close()
    finally:
        admin.acl_deluser(user)
        admin.close()
    assert done["aof"] == "rewritten" and done["rdb"] == "unknown", done
    assert "CONFIG GET is not available" in done["detail"], done
