"""A topic's effective retention, as its broker reports it (``DescribeConfigs``): what the
erasure deadline is checked against (``domain.log_retention``, docs/erasure.md).

Kafka reports every topic config, the defaults included. A broker that reports none (the
Kafka-protocol broker of the test stack, Tansu, reports only those set when the topic was
created) or does not answer gives an unknown retention, never an error: the deadline check
warns, it does not stop a node.
"""

from __future__ import annotations

from typing import Any

from meterline.domain.log_retention import LogRetention
from meterline.runtime.extras import import_extra


def topic_retention(bootstrap: str, topic: str, timeout: float = 10.0) -> LogRetention:
    """``retention.ms`` and ``segment.ms`` of ``topic`` (each None when not reported)."""
    admin_mod = import_extra("confluent_kafka.admin", "scale")
    admin = admin_mod.AdminClient({"bootstrap.servers": bootstrap})
    resource = admin_mod.ConfigResource("topic", topic)
    try:
        configs: dict[str, Any] = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
    except Exception as exc:  # not supported, timed out, no such topic: the check says it is unknown
        return LogRetention(None, None, f"DescribeConfigs failed: {type(exc).__name__}: {exc}"[:300])
    retention, segment = _ms(configs.get("retention.ms")), _ms(configs.get("segment.ms"))
    if retention is None:
        return LogRetention(None, segment, "the broker reported no retention.ms for the topic")
    return LogRetention(retention, segment)


def _ms(entry: Any) -> int | None:
    value = getattr(entry, "value", None)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
