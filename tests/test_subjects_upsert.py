"""``POST /api/v1/subjects`` is one write: every subject is validated first and all commit in
one transaction, with one rebuild of the live counters' index. It was one commit and one full
index rebuild per subject (3,000 subjects held the writer for over 30 s), and a batch whose
second subject was invalid answered 400 after storing the first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Api, build_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from build_api(tmp_path_factory.mktemp("subjects"))


def commits(api: Api) -> float:
    text = api.client.get("/metrics").text
    return float(next(x for x in text.splitlines() if x.startswith("meterline_group_commits ")).split()[1])


def test_a_refused_batch_stores_nothing(api: Api) -> None:
    r = api.client.post("/api/v1/subjects", json=[{"key": "first_ok"}, {"key": "bad\n"}], headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_customer"), r.text
    assert api.client.get("/api/v1/subjects/first_ok", headers=api.headers()).status_code == 404


def test_a_batch_is_one_commit(api: Api) -> None:
    before = commits(api)
    body = [{"key": f"s{i}", "displayName": f"S {i}"} for i in range(1000)]
    r = api.client.post("/api/v1/subjects", json=body, headers=api.headers())
    assert r.status_code == 200, r.text
    assert [s["key"] for s in r.json()] == [f"s{i}" for i in range(1000)]
    assert commits(api) - before <= 2  # the upsert and the counters' index rebuild
    assert len(api.client.get("/api/v1/subjects", headers=api.headers()).json()) >= 1000


def test_more_than_a_thousand_subjects_are_refused(api: Api) -> None:
    body = [{"key": f"t{i}"} for i in range(1001)]
    r = api.client.post("/api/v1/subjects", json=body, headers=api.headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_subject"), r.text
    assert api.client.get("/api/v1/subjects/t0", headers=api.headers()).status_code == 404
