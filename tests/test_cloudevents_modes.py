"""The CNCF CloudEvents SDK sends structured, binary and batch requests; each event counts once.

Binary content mode (attributes in ``ce-*`` headers, the data as the body) goes through the
same decoding, validation, dedupe and per-event report as structured mode.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_json, to_structured
from cloudevents.http import CloudEvent
from conftest import T0_US, Api

T0 = datetime.fromtimestamp(T0_US / 1e6, UTC)
REPORT = {"Prefer": "return=representation"}


def event(id_: str, tokens: object = 5, **attrs: Any) -> CloudEvent:
    base = {"id": id_, "source": "sdk", "type": "prompt", "subject": "acme", "time": (T0 - timedelta(minutes=5))}
    base["time"] = base["time"].isoformat()
    return CloudEvent({**base, **attrs}, {"tokens": tokens})


@pytest.fixture
def metered(api: Api) -> Api:
    r = api.create_meter(slug="tokens", eventType="prompt", aggregation="SUM", valueProperty="$.tokens")
    assert r.status_code == 201, r.text
    return api


def send(api: Api, headers: dict[str, str], body: bytes, **extra: str) -> Any:
    return api.client.post("/api/v1/events", content=body, headers={**api.headers(**extra), **headers})


def total(api: Api) -> Any:
    rows = api.query("tokens").json()["data"]
    return sum(r["value"] for r in rows)


def test_structured_binary_and_batch_each_counted_once(metered: Api) -> None:
    structured = event("s1", 1)
    binary = event("b1", 10)
    batch = [event("k1", 100), event("k2", 1000)]
    for _ in range(2):  # the second round is all retries
        assert send(metered, *to_structured(structured)).status_code == 204
        assert send(metered, *to_binary(binary)).status_code == 204
        body = b"[" + b",".join(to_json(e) for e in batch) + b"]"
        assert send(metered, {"content-type": "application/cloudevents-batch+json"}, body).status_code == 204
    assert total(metered) == 1111


def test_binary_mode_report_and_duplicate(metered: Api) -> None:
    headers, body = to_binary(event("b2", 7))
    first = send(metered, headers, body, **REPORT).json()
    assert first["accepted"] == 1 and first["events"][0] == {
        "index": 0,
        "id": "b2",
        "source": "sdk",
        "status": "accepted",
    }
    again = send(metered, headers, body, **REPORT).json()
    assert again["duplicates"] == 1 and again["events"][0]["conflict"] is False
    headers, body = to_binary(event("b2", 8))
    assert send(metered, headers, body, **REPORT).json()["events"][0]["conflict"] is True
    assert total(metered) == 7


def test_binary_mode_with_json_content_type_reads_the_body_as_data(metered: Api) -> None:
    headers, body = to_binary(event("b3", "2.5", datacontenttype="application/json"))
    assert headers["content-type"] == "application/json"
    assert send(metered, headers, body).status_code == 204
    stored = metered.client.get("/api/v1/events", params={"from": "2026-01-01T00:00:00Z"}, headers=metered.headers())
    sent = stored.json()[0]["event"]
    assert sent["id"] == "b3" and sent["data"] == {"tokens": "2.5"} and sent["datacontenttype"] == "application/json"
    assert total(metered) == 2.5


def test_binary_mode_attributes_are_percent_decoded(metered: Api) -> None:
    headers, body = to_binary(event("b4", 1))
    headers["ce-subject"] = "acme%20%C3%BC"
    report = send(metered, headers, body, **REPORT).json()
    assert report["accepted"] == 1
    rows = metered.query("tokens", {"groupBy": "subject"}).json()["data"]
    assert [r["subject"] for r in rows] == ["acme ü"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ce-id": None}, "missing_field"),
        ({"ce-specversion": "0.3"}, "unsupported_specversion"),
        ({"ce-time": "yesterday"}, "invalid_time"),
        ({"content-type": "text/plain"}, "invalid_data"),
    ],
)
def test_binary_mode_rejections_are_per_event(metered: Api, change: dict[str, str | None], reason: str) -> None:
    headers, body = to_binary(event("bad", 1))
    for name, value in change.items():
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    r = send(metered, headers, body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "events_rejected"
    assert r.json()["rejected"][0]["reason"] == reason
    letters = metered.client.get("/api/v1/dead-letters", headers=metered.headers()).json()
    assert letters, "a rejected binary-mode event is kept as a dead letter"


def test_binary_mode_body_that_is_not_json_is_rejected_not_refused(metered: Api) -> None:
    headers, _ = to_binary(event("b5", 1))
    r = send(metered, {**headers, "content-type": "application/json"}, b"{not json")
    assert r.status_code == 400 and r.json()["rejected"][0]["reason"] == "invalid_data"


def test_without_ce_headers_and_content_type_still_415(metered: Api) -> None:
    r = send(metered, {}, b'{"tokens": 1}')
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
