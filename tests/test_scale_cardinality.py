"""The cardinality cap of scale mode holds across API nodes and restarts: group values new to a
node are claimed in the shared registry in PostgreSQL (``ports.group_values``), so no node, nor
a restarted one, admits more values than the cap, and every event a node accepted is counted."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import msgspec
from conftest import T0_US
from scale_site import Site
from starlette.testclient import TestClient

from meterline.api.app import create_app
from meterline.config import load_config
from meterline.domain.clock import FixedClock

CAP = 3
WHEN = "2026-03-01T12:00:00Z"


def node(site: Site, stack: ExitStack) -> TestClient:
    """An API node of the site (in process), its cap ``CAP``."""
    config = load_config(
        site.config_path, {"auth": {"bootstrap_admin_key": False}, "ingest": {"max_group_cardinality": CAP}}
    )
    return stack.enter_context(TestClient(create_app(config, FixedClock(T0_US))))


def send(client: TestClient, key: str, region: str, n: int) -> str:
    """One event; its outcome (accepted, or the rejection's reason)."""
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "t",
        "type": "call",
        "subject": "acme",
        "time": WHEN,
        "data": {"region": region, "n": n},
    }
    r = client.post(
        "/api/v1/events",
        content=msgspec.json.encode([event]),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/cloudevents-batch+json",
            "Prefer": "return=representation",
        },
    )
    outcome: dict[str, Any] = r.json()["events"][0]
    return str(outcome["status"] if outcome["status"] != "rejected" else outcome["reason"])


def test_the_cap_holds_across_nodes_and_a_restart(scale_site: Site) -> None:
    key = scale_site.key(f"n{uuid.uuid4().hex[:10]}")
    auth = {"Authorization": f"Bearer {key}"}
    with ExitStack() as stack:
        a, b = node(scale_site, stack), node(scale_site, stack)
        spec = {"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"}
        assert (
            a.post("/api/v1/meters", json={**spec, "groupBy": {"region": "$.region"}}, headers=auth).status_code == 201
        )
        sent: dict[str, int] = {}

        def expect(client: TestClient, region: str, n: int, outcome: str) -> None:
            assert send(client, key, region, n) == outcome, region
            if outcome == "accepted":
                sent[region] = sent.get(region, 0) + n

        expect(a, "eu", 1, "accepted")
        expect(a, "us", 2, "accepted")
        expect(b, "ap", 4, "accepted")  # the third value, admitted through the other node
        expect(b, "sa", 8, "group_cardinality_exceeded")  # a fourth, through a node that saw only one
        expect(a, "sa", 8, "group_cardinality_exceeded")
        expect(b, "eu", 16, "accepted")  # admitted before through the other node
        with ExitStack() as restart:
            c = node(scale_site, restart)  # a node started afresh knows no value of its own
            expect(c, "af", 32, "group_cardinality_exceeded")
            expect(c, "us", 64, "accepted")

        # read through a node that wrote only part of it: poll until the workers applied it all
        deadline, got = time.monotonic() + 60, {}
        want = {region: Decimal(v) for region, v in sent.items()}
        while got != want and time.monotonic() < deadline:
            r = a.get(
                "/api/v1/meters/calls/query",
                params={"groupBy": "region", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
                headers=auth,
            )
            assert r.status_code == 200, r.text
            got = {row["groupBy"]["region"]: Decimal(str(row["value"])) for row in r.json()["data"]}
            time.sleep(0.1)
        assert got == want  # every accepted event counted, no value beyond the cap
