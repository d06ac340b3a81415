"""The OpenMeter SDK's ``meters.list_subjects`` and ``meters.list_group_by_values`` against a real
``meterline serve`` process: every request below is built by the SDK (``openmeter==1.0.0b236``)
except ``search``, which that SDK does not send.

Time layout: ``T`` is a whole hour at least three hours ago; the meter sums ``tokens`` of
``prompt`` events grouped by ``model``.

    subject     time        model        namespace
    s-alpha     T - 2 days  old-model    default   (outside the default 24 hours of group values)
    s-alpha     T + 10m     gpt-4        default
    s-delta     T + 15m     (none)       default
    s-beta      T + 70m     gpt-3        default
    s-gamma     T + 130m    claude       default
    s-other     T + 10m     gpt-4        default   (another event type: not in the meter)
    s-foreign   T + 10m     gpt-5        other     (the same meter slug in another namespace)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Server, make_key, start_server
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from openmeter import Client
from openmeter.models import MeterCreate
from test_openmeter_sdk import SLUG, create_meter, ev, make_client

M = timedelta(minutes=1)


@dataclass
class World:
    server: Server
    client: Client
    foreign: Client
    t: datetime
    meter_id: str


def event(subject: str, t: datetime, model: str | None, type_: str = "prompt") -> dict[str, Any]:
    e = ev(f"{uuid.uuid4()}", subject, t, 1, model or "", type_)
    if model is None:
        del e["data"]["model"]
    return e


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("meter-values") / "data"
    foreign_key = make_key(data_dir, ["admin"], namespace="other")
    server = start_server(data_dir)
    client, foreign = make_client(server), make_client(server, foreign_key)
    t = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    try:
        status, meter = create_meter(client)
        assert status == 201 and create_meter(foreign)[0] == 201
        unique = MeterCreate(
            slug="sdk_models",
            name="models",
            aggregation="UNIQUE_COUNT",
            event_type="prompt",
            value_property="$.tokens",
            group_by={"model": "$.model"},
        )
        client.meters.create(unique)
        events = [
            event("s-alpha", t - timedelta(days=2), "old-model"),
            event("s-alpha", t + 10 * M, "gpt-4"),
            event("s-delta", t + 15 * M, None),
            event("s-beta", t + 70 * M, "gpt-3"),
            event("s-gamma", t + 130 * M, "claude"),
            event("s-other", t + 10 * M, "gpt-4", type_="other"),
        ]
        client.events.ingest_events(events)
        foreign.events.ingest_events([event("s-foreign", t + 10 * M, "gpt-5")])
        yield World(server, client, foreign, t, meter.id)
    finally:
        client.close()
        foreign.close()
        server.stop()


def code(error: HttpResponseError) -> str:
    assert error.response is not None
    return str(error.response.json()["code"])


def test_list_subjects(world: World) -> None:
    w, t = world, world.t
    everyone = ["s-alpha", "s-beta", "s-delta", "s-gamma"]
    assert w.client.meters.list_subjects(SLUG) == everyone
    assert w.client.meters.list_subjects(w.meter_id) == everyone  # by id as well as slug
    assert w.client.meters.list_subjects(SLUG, from_parameter=t + 60 * M, to=t + 120 * M) == ["s-beta"]
    assert w.client.meters.list_subjects(SLUG, from_parameter=t + 60 * M) == ["s-beta", "s-gamma"]
    assert w.client.meters.list_subjects(SLUG, to=t + 60 * M) == ["s-alpha", "s-delta"]
    # from is inclusive and to exclusive, at one-minute resolution
    assert w.client.meters.list_subjects(SLUG, from_parameter=t + 11 * M, to=t + 70 * M) == ["s-delta"]
    at_beta = t + 70 * M + timedelta(seconds=1)
    assert w.client.meters.list_subjects(SLUG, from_parameter=t + 11 * M, to=at_beta) == ["s-beta", "s-delta"]
    assert w.client.meters.list_subjects(SLUG, from_parameter=t + 3 * 60 * M) == []
    # UNIQUE_COUNT meters keep their own rollups
    assert w.client.meters.list_subjects("sdk_models", from_parameter=t) == everyone


def test_list_group_by_values(world: World) -> None:
    w, t = world, world.t
    # the default range is the last 24 hours: the two-day-old model is not in it
    assert w.client.meters.list_group_by_values(SLUG, "model") == ["claude", "gpt-3", "gpt-4"]
    older = t - timedelta(days=3)
    assert w.client.meters.list_group_by_values(SLUG, "model", from_parameter=older) == [
        "claude",
        "gpt-3",
        "gpt-4",
        "old-model",
    ]
    assert w.client.meters.list_group_by_values(SLUG, "model", to=t) == ["old-model"]  # open start
    window = {"from_parameter": t, "to": t + 90 * M}
    assert w.client.meters.list_group_by_values(SLUG, "model", **window) == ["gpt-3", "gpt-4"]
    assert w.client.meters.list_group_by_values("sdk_models", "model", **window) == ["gpt-3", "gpt-4"]


def test_namespaces_see_only_their_own(world: World) -> None:
    w = world
    assert w.foreign.meters.list_subjects(SLUG) == ["s-foreign"]
    assert w.foreign.meters.list_group_by_values(SLUG, "model") == ["gpt-5"]
    assert "s-foreign" not in w.client.meters.list_subjects(SLUG)
    with pytest.raises(ResourceNotFoundError):
        w.foreign.meters.list_subjects(w.meter_id)  # the other namespace's meter id
    with pytest.raises(ResourceNotFoundError):
        w.foreign.meters.list_group_by_values("sdk_models", "model")


def test_errors(world: World) -> None:
    w, t = world, world.t
    with pytest.raises(ResourceNotFoundError):
        w.client.meters.list_subjects("no_such_meter")
    with pytest.raises(ResourceNotFoundError):
        w.client.meters.list_group_by_values("no_such_meter", "model")
    with pytest.raises(HttpResponseError) as exc:
        w.client.meters.list_group_by_values(SLUG, "region")
    assert exc.value.status_code == 400 and code(exc.value) == "invalid_group_by"
    with pytest.raises(HttpResponseError) as exc:
        w.client.meters.list_subjects(SLUG, from_parameter=t, to=t - M)
    assert exc.value.status_code == 400 and code(exc.value) == "invalid_range"
    with pytest.raises(ClientAuthenticationError):
        make_client(w.server, "ml_000000000000_wrong").meters.list_subjects(SLUG)


def test_search_scopes_and_bad_times_over_http(world: World) -> None:
    w = world
    base = f"{w.server.url}/api/v1/meters/{SLUG}"
    reader = make_key(w.server.data_dir, ["read"])
    ingester = make_key(w.server.data_dir, ["ingest"])
    with httpx.Client(headers={"Authorization": f"Bearer {reader}"}) as http:
        assert http.get(f"{base}/subjects", params={"search": "ALP"}).json() == ["s-alpha"]
        since = (w.t - timedelta(days=3)).isoformat()
        values = http.get(f"{base}/group-by/model/values", params={"search": "GPT", "from": since})
        assert values.json() == ["gpt-3", "gpt-4"]
        r = http.get(f"{base}/subjects", params={"from": "yesterday"})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_time")
    r = httpx.get(f"{base}/subjects", headers={"Authorization": f"Bearer {ingester}"})
    assert (r.status_code, r.json()["code"]) == (403, "missing_scope")
