"""The erasure deadline in scale mode (``erasure.max_delay``): an API node reads its Kafka
topic's retention from the broker (``DescribeConfigs``) at start and at each erasure, logs it,
shows a topic that keeps records forever, longer than the setting or for an unknown time as a
``/readyz`` warning (``METER-007``, still ready), and the erasure's audit record says when the
subject's records have left the topic (``logPurgedBy``).

The stack's Kafka-protocol broker (Tansu) answers ``DescribeConfigs`` with the configs a topic
was created with, and nothing else (no defaults): each case creates its topic with the configs
it needs; a topic meterline creates itself has none there, so its retention is unknown."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import Api, build_scale_api, free_port
from scale_site import Site
from test_billing_api import get, ok, post

from meterline.adapters.kafka.retention import topic_retention

DAY_MS = 86_400_000


def created_topic(site: Site, configs: dict[str, str] | None) -> str:
    """A new topic of the site's broker, created with ``configs`` (None: meterline creates it)."""
    name = f"deadline-{uuid.uuid4().hex[:10]}"
    if configs is not None:
        admin = AdminClient({"bootstrap.servers": site.config.kafka.bootstrap_servers})
        admin.create_topics([NewTopic(name, site.config.kafka.partitions, 1, config=configs)])[name].result(30)
    return name


@pytest.fixture
def node_of(scale_site: Site, tmp_path: Path) -> Iterator[object]:
    """Builds an in-process API node of the site over a topic and ``erasure.max_delay`` of the test."""
    made: list[Iterator[Api]] = []

    def build(topic: str, max_delay: str = "P30D") -> Api:
        gen = build_scale_api(
            scale_site, tmp_path / topic, kafka={"topic": topic}, erasure={"max_delay": max_delay},
            billing={"scheduler_enabled": False},
        )  # fmt: skip
        made.append(gen)
        return next(gen)

    yield build
    for gen in made:
        gen.close()


CASES = [
    # topic configs, erasure.max_delay, the warning's words (None: no warning), kept ms ("never", None)
    ({"retention.ms": "86400000", "segment.ms": "3600000"}, "P30D", None, 25 * 3_600_000),
    ({"retention.ms": "86400000", "segment.ms": "3600000"}, "PT24H", "longer than erasure.max_delay", 25 * 3_600_000),
    ({"retention.ms": str(40 * DAY_MS)}, "P30D", "keeps records up to 47 days", 47 * DAY_MS),  # segment.ms: 7 days
    ({"retention.ms": "-1", "segment.ms": "3600000"}, "P30D", "keeps records forever", "never"),
    (None, "P30D", "reported no retention.ms", None),
]


@pytest.mark.parametrize(("configs", "max_delay", "warning", "kept"), CASES)
def test_the_topics_retention_is_checked_at_start_and_stated_by_each_erasure(
    node_of: object,
    scale_site: Site,
    caplog: pytest.LogCaptureFixture,
    configs: dict[str, str] | None,
    max_delay: str,
    warning: str | None,
    kept: int | str | None,
) -> None:
    topic = created_topic(scale_site, configs)
    with caplog.at_level(logging.INFO, logger="meterline.erasure"):
        api = node_of(topic, max_delay)  # type: ignore[operator]
    started = [r for r in caplog.records if r.name == "meterline.erasure" and topic in r.getMessage()]
    assert len(started) == 1, [r.getMessage() for r in caplog.records]
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text  # a warning, never unready
    found = [w for w in ready.json()["warnings"] if w["check"] == "erasure_deadline"]
    if warning is None:
        assert found == [] and started[0].levelno == logging.INFO, found
        assert "within erasure.max_delay" in started[0].getMessage()
    else:
        assert [w["operationalCode"] for w in found] == ["METER-007"], ready.json()
        assert warning in found[0]["detail"] and topic in found[0]["detail"], found
        assert started[0].levelno == logging.WARNING and warning in started[0].getMessage()
    ok(post(api, "/api/v1/customers", {"key": "acme", "subjectKeys": ["user-4471"]}), 201)
    record = ok(post(api, "/api/v1/erasures", {"subject": "user-4471", "reason": "GDPR request #3"}), 201)
    erased = datetime.fromisoformat(record["erasedAt"])
    if isinstance(kept, int):
        assert datetime.fromisoformat(record["logPurgedBy"]) == erased + timedelta(milliseconds=kept), record
    else:
        assert record["logPurgedBy"] == kept, record
    assert ok(get(api, "/api/v1/erasures"))["items"] == [record]
    assert "redisFiles" not in record  # this site keeps nothing in Redis


def test_a_broker_that_does_not_answer_gives_an_unknown_retention() -> None:
    found = topic_retention(f"127.0.0.1:{free_port()}", "events", timeout=1.0)
    assert found.kept_ms() is None and found.unknown_because and "DescribeConfigs failed" in found.unknown_because
