"""The real OpenMeter Python SDK (``openmeter==1.0.0b236``) against a real ``meterline serve`` process.

Nothing here talks HTTP by hand: every request is built by the SDK, so these tests catch both
server-side contract deviations and wire-format quirks of the SDK (for example it sends
``filterGroupBy`` as a Python dict repr rather than OpenMeter's deepObject style).

Time layout. ``B`` is the latest Asia/Kathmandu hour boundary (UTC+05:45, no DST, so local
hours start at :15 UTC) at least two minutes before now. Events sit a few minutes either side
of ``B``, so a HOUR query in Kathmandu from ``B - 1h`` to ``B + 1h`` has exactly two windows,
``W1 = [B - 1h, B)`` and ``W2 = [B, B + 1h)``, and every value below is known in advance.

    id    how                  type    subject     time        model   tokens
    e1    ingest_event         prompt  customer-1  B - 4m      gpt-4   10
    e2    ingest_events        prompt  customer-1  B - 3m      gpt-4   1.25
    e3    ingest_events        prompt  customer-2  B - 1m30s   gpt-3   "2.5"   (numeric string)
    e4    ingest_events        prompt  customer-3  B - 1m      gpt-4   100     (not in subject filter)
    e5    ingest_events        other   customer-1  B - 1m      gpt-4   1000    (other event type)
    e6    ingest_events_json   prompt  customer-1  B           gpt-4   20      (exactly on the boundary)
    e7    ingest_events_json   prompt  customer-2  B + 1m      gpt-3   7
    e8    ingest_events_json   prompt  customer-1  B + 1m30s   gpt-3   0.75
    e9    ingest_events_json   prompt  customer-2  B + 30s     gpt-4   0.5     (single JSON object)
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import MODES, Server, mode_server
from corehttp.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from openmeter import Client
from openmeter.models import Event, MeterCreate

KTM = ZoneInfo("Asia/Kathmandu")
SLUG = "sdk_tokens"
SOURCE = "sdk-test"
C1, C2, C3 = "customer-1", "customer-2", "customer-3"


def status_and_body(pipeline_response: Any, deserialized: Any, _headers: Any) -> tuple[int, Any]:
    """``cls=`` hook for SDK operations: keep the HTTP status next to the parsed body."""
    return pipeline_response.http_response.status_code, deserialized


def kathmandu_boundary(now: datetime) -> datetime:
    """Latest Asia/Kathmandu hour start (minute :15 UTC) that is at least 2 minutes before ``now``."""
    t = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    b = t - timedelta(minutes=(t.minute - 15) % 60)
    local = b.astimezone(KTM)
    assert (local.minute, local.second) == (0, 0), local  # sanity: it really is a local hour start
    return b


@dataclass
class Seeded:
    client: Client
    server: Server
    meter_id: str
    b: datetime  # the Kathmandu hour boundary between W1 and W2
    ids: dict[str, str]  # e1..e9 -> event id
    events: dict[str, dict[str, Any]]  # e1..e9 -> the event as sent (wire names)

    @property
    def w1(self) -> datetime:
        return self.b - timedelta(hours=1)

    @property
    def w2(self) -> datetime:
        return self.b

    @property
    def end(self) -> datetime:
        return self.b + timedelta(hours=1)


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A real server in each storage mode: these tests hold for both."""
    yield from mode_server(request, tmp_path)


def make_client(server: Server, token: str | None = None) -> Client:
    return Client(endpoint=server.url, token=token or server.key, retry_total=0)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = make_client(server)
    yield c
    c.close()


def create_meter(client: Client) -> Any:
    return client.meters.create(
        MeterCreate(
            slug=SLUG,
            name="SDK tokens",
            description="tokens by model",
            aggregation="SUM",
            event_type="prompt",
            value_property="$.tokens",
            group_by={"model": "$.model"},
        ),
        cls=status_and_body,
    )


def ev(id_: str, subject: str, t: datetime, tokens: Any, model: str, type_: str = "prompt") -> dict[str, Any]:
    return {
        "id": id_,
        "source": SOURCE,
        "specversion": "1.0",
        "type": type_,
        "subject": subject,
        "time": t.isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens, "model": model},
    }


@pytest.fixture
def seeded(server: Server, client: Client) -> Seeded:
    status, meter = create_meter(client)
    assert status == 201
    b = kathmandu_boundary(datetime.now(UTC))
    m = timedelta(minutes=1)
    run = uuid.uuid4().hex[:8]
    ids = {f"e{i}": f"{run}-e{i}" for i in range(1, 10)}
    events = {
        "e1": ev(ids["e1"], C1, b - 4 * m, 10, "gpt-4"),
        "e2": ev(ids["e2"], C1, b - 3 * m, 1.25, "gpt-4"),
        "e3": ev(ids["e3"], C2, b - timedelta(seconds=90), "2.5", "gpt-3"),
        "e4": ev(ids["e4"], C3, b - m, 100, "gpt-4"),
        "e5": ev(ids["e5"], C1, b - m, 1000, "gpt-4", type_="other"),
        "e6": ev(ids["e6"], C1, b, 20, "gpt-4"),
        "e7": ev(ids["e7"], C2, b + m, 7, "gpt-3"),
        "e8": ev(ids["e8"], C1, b + timedelta(seconds=90), 0.75, "gpt-3"),
        "e9": ev(ids["e9"], C2, b + timedelta(seconds=30), 0.5, "gpt-4"),
    }

    # 1. one CloudEvent (application/cloudevents+json), built as the SDK's Event model
    e1 = events["e1"]
    single = Event(
        id=e1["id"], source=SOURCE, specversion="1.0", type="prompt", subject=C1, time=b - 4 * m, data=e1["data"]
    )
    assert client.events.ingest_event(single, cls=status_and_body) == (204, None)
    # 2. a batch (application/cloudevents-batch+json): a model and plain dicts mixed
    e2 = events["e2"]
    batch: list[Any] = [
        Event(
            id=e2["id"], source=SOURCE, specversion="1.0", type="prompt", subject=C1, time=b - 3 * m, data=e2["data"]
        ),
        events["e3"],
        events["e4"],
        events["e5"],
    ]
    assert client.events.ingest_events(batch, cls=status_and_body) == (204, None)
    # 3. plain application/json: an array, then a single object
    assert client.events.ingest_events_json([events["e6"], events["e7"], events["e8"]], cls=status_and_body) == (
        204,
        None,
    )
    # NB: the SDK only serializes an Event model or a list here; a plain dict is sent as an EMPTY body
    assert client.events.ingest_events_json(Event(events["e9"]), cls=status_and_body) == (204, None)
    return Seeded(client, server, meter.id, b, ids, events)


def rows_of(result: Any) -> list[tuple[datetime, datetime, str | None, dict[str, str], Decimal]]:
    """Rows as comparable tuples, sorted; values go through ``str`` so 11.25 compares as Decimal."""
    out = [
        (r.window_start, r.window_end, r.subject, dict(r.group_by or {}), Decimal(str(r.value))) for r in result.data
    ]
    return sorted(out, key=lambda r: (r[0], r[2] or "", sorted(r[3].items())))


# --------------------------------------------------------------------------------------------
# 1. meters: create, list, get, duplicate, missing, bad token
# --------------------------------------------------------------------------------------------


def test_meter_create_list_get_and_errors(server: Server, client: Client) -> None:
    status, meter = create_meter(client)
    assert status == 201
    assert meter.slug == SLUG
    assert meter.name == "SDK tokens"
    assert meter.description == "tokens by model"
    assert meter.aggregation == "SUM"
    assert meter.event_type == "prompt"
    assert meter.value_property == "$.tokens"
    assert meter.group_by == {"model": "$.model"}
    assert isinstance(meter.id, str) and len(meter.id) == 26  # ULID
    assert isinstance(meter.created_at, datetime) and meter.created_at.tzinfo is not None
    assert abs(meter.created_at - datetime.now(UTC)) < timedelta(minutes=1)

    listed = client.meters.list()
    assert [(m.id, m.slug) for m in listed] == [(meter.id, SLUG)]

    for ref in (SLUG, meter.id):
        got = client.meters.get(ref)
        assert (got.id, got.slug, got.aggregation, got.event_type, got.value_property, got.group_by) == (
            meter.id,
            SLUG,
            "SUM",
            "prompt",
            "$.tokens",
            {"model": "$.model"},
        )

    # the same slug again -> 409
    with pytest.raises(ResourceExistsError) as exc:
        create_meter(client)
    assert exc.value.status_code == 409
    # a plain dict with wire names works too (and conflicts the same way)
    with pytest.raises(ResourceExistsError):
        client.meters.create({"slug": SLUG, "aggregation": "COUNT", "eventType": "prompt"})

    with pytest.raises(ResourceNotFoundError) as exc404:
        client.meters.get("missing_meter_xyz")
    assert exc404.value.status_code == 404

    bad = make_client(server, token="wrong-key")
    try:
        with pytest.raises(ClientAuthenticationError) as exc401:
            bad.meters.list()
        assert exc401.value.status_code == 401
        with pytest.raises(ClientAuthenticationError):
            bad.meters.get(SLUG)
        with pytest.raises(ClientAuthenticationError):
            bad.events.ingest_event(ev("x", C1, datetime.now(UTC), 1, "gpt-4"))
    finally:
        bad.close()
    # nothing above changed the meter list
    assert [m.slug for m in client.meters.list()] == [SLUG]


# --------------------------------------------------------------------------------------------
# 2 + 3. ingest (three ways) and query_json
# --------------------------------------------------------------------------------------------


def hour_query(s: Seeded) -> dict[str, Any]:
    """The query both the JSON and the CSV test ask: HOUR windows in Kathmandu over W1 and W2."""
    return {
        "from_parameter": s.w1,
        "to": s.end,
        "window_size": "HOUR",
        "window_time_zone": "Asia/Kathmandu",
        "subject": [C1, C2],
        "group_by": ["model"],
    }


def test_query_json_hour_windows_in_kathmandu(seeded: Seeded) -> None:
    s = seeded
    res = s.client.meters.query_json(SLUG, **hour_query(s))
    assert res.from_property == s.w1
    assert res.to == s.end
    assert res.window_size == "HOUR"
    w1, w2, end = s.w1, s.w2, s.end
    assert rows_of(res) == [
        (w1, w2, C1, {"model": "gpt-4"}, Decimal("11.25")),  # 10 + 1.25
        (w1, w2, C2, {"model": "gpt-3"}, Decimal("2.5")),  # "2.5" (numeric string)
        (w2, end, C1, {"model": "gpt-3"}, Decimal("0.75")),
        (w2, end, C1, {"model": "gpt-4"}, Decimal("20")),  # exactly at B -> second window
        (w2, end, C2, {"model": "gpt-3"}, Decimal("7")),
        (w2, end, C2, {"model": "gpt-4"}, Decimal("0.5")),
    ]
    # the SDK parses values as floats; approx agrees with the exact decimals
    assert sorted(r.value for r in res.data) == pytest.approx([0.5, 0.75, 2.5, 7, 11.25, 20])
    # Kathmandu hour windows really start at local :00 (= :15 UTC)
    for r in res.data:
        assert r.window_start.astimezone(KTM).minute == 0
        assert r.window_start.astimezone(UTC).minute == 15


def test_query_json_without_subject_or_group_by(seeded: Seeded) -> None:
    s = seeded
    res = s.client.meters.query_json(
        SLUG,
        from_parameter=s.w1,
        to=s.end,
        window_size="HOUR",
        window_time_zone="Asia/Kathmandu",
    )
    # every subject, every model; the "other" event type (e5) is not counted
    assert [(r.window_start, r.window_end, Decimal(str(r.value))) for r in res.data] == [
        (s.w1, s.w2, Decimal("113.75")),  # 10 + 1.25 + 2.5 + 100
        (s.w2, s.end, Decimal("28.25")),  # 20 + 7 + 0.75 + 0.5
    ]
    for r in res.data:
        assert r.subject is None
        assert not r.group_by

    # no window: one row over the whole range; from/to on whole minutes inside W1/W2
    total = s.client.meters.query_json(SLUG, from_parameter=s.b - timedelta(minutes=3), to=s.b + timedelta(minutes=1))
    assert [(r.window_start, r.window_end, Decimal(str(r.value))) for r in total.data] == [
        # e2 1.25 + e3 2.5 + e4 100 + e6 20 + e9 0.5 (e7 at B+1m is excluded: `to` is exclusive)
        (s.b - timedelta(minutes=3), s.b + timedelta(minutes=1), Decimal("124.25")),
    ]

    # by subject only
    by_subject = s.client.meters.query_json(SLUG, from_parameter=s.w1, to=s.end, group_by=["subject"])
    assert sorted((r.subject, Decimal(str(r.value))) for r in by_subject.data) == [
        (C1, Decimal("32")),
        (C2, Decimal("10")),
        (C3, Decimal("100")),  # C2: 2.5 + 7 + 0.5
    ]


def test_query_json_filter_group_by(seeded: Seeded) -> None:
    s = seeded
    w1, w2, end = s.w1, s.w2, s.end
    expected = [
        (w1, w2, C1, {"model": "gpt-4"}, Decimal("11.25")),
        (w2, end, C1, {"model": "gpt-4"}, Decimal("20")),
        (w2, end, C2, {"model": "gpt-4"}, Decimal("0.5")),
    ]
    common: dict[str, Any] = dict(
        from_parameter=w1,
        to=end,
        window_size="HOUR",
        window_time_zone="Asia/Kathmandu",
        subject=[C1, C2],
        group_by=["model"],
    )
    # as the SDK sends it: filterGroupBy={'model': 'gpt-4'} (a Python dict repr)
    res = s.client.meters.query_json(SLUG, filter_group_by={"model": "gpt-4"}, **common)
    assert rows_of(res) == expected
    # OpenMeter's documented deepObject form, filterGroupBy[model]=gpt-4, passed through the SDK
    res = s.client.meters.query_json(SLUG, params={"filterGroupBy[model]": "gpt-4"}, **common)
    assert rows_of(res) == expected
    # advancedMeterGroupByFilters (JSON-encoded by the SDK)
    res = s.client.meters.query_json(SLUG, advanced_meter_group_by_filters={"model": {"$in": ["gpt-4"]}}, **common)
    assert rows_of(res) == expected
    # a filter on an unknown dimension is a 400
    with pytest.raises(HttpResponseError) as exc:
        s.client.meters.query_json(SLUG, filter_group_by={"nope": "x"}, **common)
    assert exc.value.status_code == 400


def test_query_post_body(seeded: Seeded) -> None:
    s = seeded
    res = s.client.meters.query(
        SLUG,
        {
            "from": s.w1.isoformat(),
            "to": s.end.isoformat(),
            "windowSize": "HOUR",
            "windowTimeZone": "Asia/Kathmandu",
            "subject": [C1, C2],
            "groupBy": ["model"],
            "filterGroupBy": {"model": ["gpt-3"]},
        },
    )
    assert rows_of(res) == [
        (s.w1, s.w2, C2, {"model": "gpt-3"}, Decimal("2.5")),
        (s.w2, s.end, C1, {"model": "gpt-3"}, Decimal("0.75")),
        (s.w2, s.end, C2, {"model": "gpt-3"}, Decimal("7")),
    ]


def test_query_errors(seeded: Seeded) -> None:
    s = seeded
    with pytest.raises(ResourceNotFoundError):
        s.client.meters.query_json("missing_meter_xyz", from_parameter=s.w1, to=s.end)
    # to not after from -> 400 (a from inside a minute is answered: tests/test_query_unaligned.py)
    with pytest.raises(HttpResponseError) as exc:
        s.client.meters.query_json(SLUG, from_parameter=s.end + timedelta(seconds=30), to=s.end)
    assert exc.value.status_code == 400
    with pytest.raises(HttpResponseError) as exc:
        s.client.meters.query_json(SLUG, window_size="HOUR", window_time_zone="Mars/Olympus")
    assert exc.value.status_code == 400


# --------------------------------------------------------------------------------------------
# 4. query_csv
# --------------------------------------------------------------------------------------------


def test_query_csv(seeded: Seeded) -> None:
    s = seeded
    text = s.client.meters.query_csv(SLUG, **hour_query(s))
    assert isinstance(text, str)
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["window_start", "window_end", "subject", "model", "value"]

    body = sorted(
        (
            datetime.fromisoformat(r[0].replace("Z", "+00:00")),
            datetime.fromisoformat(r[1].replace("Z", "+00:00")),
            r[2],
            r[3],
            Decimal(r[4]),
        )
        for r in lines[1:]
    )
    w1, w2, end = s.w1, s.w2, s.end
    assert body == sorted(
        [
            (w1, w2, C1, "gpt-4", Decimal("11.25")),
            (w1, w2, C2, "gpt-3", Decimal("2.5")),
            (w2, end, C1, "gpt-3", Decimal("0.75")),
            (w2, end, C1, "gpt-4", Decimal("20")),
            (w2, end, C2, "gpt-3", Decimal("7")),
            (w2, end, C2, "gpt-4", Decimal("0.5")),
        ]
    )
    # values are written exactly (no float artefacts such as 11.250000000000002)
    assert sorted(r[4] for r in lines[1:]) == sorted(["11.25", "2.5", "0.75", "20", "7", "0.5"])

    # filtered CSV, no window and no subject: one row over the whole range, subject column empty
    text = s.client.meters.query_csv(
        SLUG, from_parameter=s.w1, to=s.end, filter_group_by={"model": "gpt-3"}, group_by=["model"]
    )
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["window_start", "window_end", "subject", "model", "value"]
    assert [r[2:] for r in lines[1:]] == [["", "gpt-3", "10.25"]]  # 2.5 + 7 + 0.75


# --------------------------------------------------------------------------------------------
# 5. events.list
# --------------------------------------------------------------------------------------------


def test_events_list(seeded: Seeded) -> None:
    s = seeded
    listed = s.client.events.list(from_parameter=s.w1, to=s.end)
    by_id = {ie.event.id: ie for ie in listed}
    assert set(by_id) == set(s.ids.values())  # all nine, including the "other" type
    for name, sent in s.events.items():
        ie = by_id[s.ids[name]]
        e = ie.event
        assert (e.id, e.source, e.specversion, e.type, e.subject) == (
            sent["id"],
            SOURCE,
            "1.0",
            sent["type"],
            sent["subject"],
        )
        assert e.time == datetime.fromisoformat(sent["time"].replace("Z", "+00:00"))
        assert e.data["model"] == sent["data"]["model"]
        assert Decimal(str(e.data["tokens"])) == Decimal(str(sent["data"]["tokens"]))
        assert abs(ie.ingested_at - datetime.now(UTC)) < timedelta(minutes=2)
        assert ie.stored_at >= ie.ingested_at
    # the numeric string stays a string, as it was sent
    assert by_id[s.ids["e3"]].event.data["tokens"] == "2.5"

    # subject filter (partial match, as OpenMeter) and limit
    c2 = s.client.events.list(from_parameter=s.w1, to=s.end, subject=C2)
    assert {ie.event.id for ie in c2} == {s.ids["e3"], s.ids["e7"], s.ids["e9"]}
    assert len(s.client.events.list(from_parameter=s.w1, to=s.end, limit=2)) == 2
    # id filter
    one = s.client.events.list(from_parameter=s.w1, to=s.end, id=s.ids["e6"])
    assert [ie.event.id for ie in one] == [s.ids["e6"]]
    # default range (last 72h) sees them too
    assert {ie.event.id for ie in s.client.events.list()} == set(s.ids.values())


def test_events_list_time_bounds_inclusive(seeded: Seeded) -> None:
    """The spec says both `from` and `to` of GET /api/v1/events are inclusive."""
    s = seeded
    at_b = s.client.events.list(from_parameter=s.b, to=s.b)
    ids = {ie.event.id for ie in at_b}
    assert ids == {s.ids["e6"]}


def test_events_list_ingested_at_filter(seeded: Seeded) -> None:
    """ingestedAtFrom/ingestedAtTo filter on ingestion time (spec: listEvents parameters)."""
    s = seeded
    future = datetime.now(UTC) + timedelta(hours=1)
    got = s.client.events.list(from_parameter=s.w1, to=s.end, ingested_at_from=future)
    assert got == []


# --------------------------------------------------------------------------------------------
# idempotency: re-ingesting the same id does not double count
# --------------------------------------------------------------------------------------------


def test_reingest_same_id_does_not_double_count(seeded: Seeded) -> None:
    s = seeded

    def totals() -> list[tuple[str | None, dict[str, str], Decimal]]:
        res = s.client.meters.query_json(SLUG, from_parameter=s.w1, to=s.end, subject=[C1, C2], group_by=["model"])
        rows = [(r.subject, dict(r.group_by), Decimal(str(r.value))) for r in res.data]
        return sorted(rows, key=lambda r: (r[0] or "", r[1]["model"]))

    before = totals()
    assert before == [
        (C1, {"model": "gpt-3"}, Decimal("0.75")),
        (C1, {"model": "gpt-4"}, Decimal("31.25")),
        (C2, {"model": "gpt-3"}, Decimal("9.5")),
        (C2, {"model": "gpt-4"}, Decimal("0.5")),
    ]
    # the same events again, as a batch and as a JSON array (single objects: test_ingest_single_object)
    assert s.client.events.ingest_events([s.events["e1"], s.events["e2"], s.events["e3"]], cls=status_and_body) == (
        204,
        None,
    )
    assert s.client.events.ingest_events_json([s.events["e6"]], cls=status_and_body) == (204, None)
    assert totals() == before
    # a batch mixing a duplicate and a new event: only the new one counts
    new = ev(f"{s.ids['e1']}-new", C1, s.b + timedelta(seconds=10), 5, "gpt-4")
    assert s.client.events.ingest_events([s.events["e7"], new], cls=status_and_body) == (204, None)
    after = dict(((subj, g["model"]), v) for subj, g, v in totals())
    assert after == {
        (C1, "gpt-3"): Decimal("0.75"),
        (C1, "gpt-4"): Decimal("36.25"),
        (C2, "gpt-3"): Decimal("9.5"),
        (C2, "gpt-4"): Decimal("0.5"),
    }
    # events.list still has each id once
    ids = [ie.event.id for ie in s.client.events.list(from_parameter=s.w1, to=s.end)]
    assert len(ids) == len(set(ids)) == 10


@pytest.mark.parametrize("how", ["ingest_event", "ingest_events_json"])
def test_ingest_single_object(seeded: Seeded, how: str) -> None:
    """One CloudEvent object (not an array): application/cloudevents+json via ingest_event, and
    application/json via ingest_events_json(dict). Spec: both bodies are valid; answer 204."""
    s = seeded
    send = s.client.events.ingest_event if how == "ingest_event" else s.client.events.ingest_events_json
    # an Event model: ingest_events_json(dict) would send an empty body (SDK quirk, see seeded())
    new = Event(ev(f"{s.ids['e1']}-{how}", C2, s.b + timedelta(seconds=20), 3, "gpt-4"))

    def w2_c2_gpt4() -> Decimal:
        res = s.client.meters.query_json(
            SLUG, from_parameter=s.w2, to=s.end, subject=[C2], filter_group_by={"model": "gpt-4"}
        )
        return sum((Decimal(str(r.value)) for r in res.data), Decimal(0))

    assert w2_c2_gpt4() == Decimal("0.5")
    result = send(new, cls=status_and_body)
    assert result == (204, None)
    assert w2_c2_gpt4() == Decimal("3.5")
    # and again: a duplicate, still 204, not counted twice
    assert send(new, cls=status_and_body) == (204, None)
    assert w2_c2_gpt4() == Decimal("3.5")


# --------------------------------------------------------------------------------------------
# 6. delete
# --------------------------------------------------------------------------------------------


def test_delete_meter(seeded: Seeded) -> None:
    s = seeded
    assert s.client.meters.delete(SLUG, cls=status_and_body) == (204, None)
    with pytest.raises(ResourceNotFoundError) as exc:
        s.client.meters.get(SLUG)
    assert exc.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        s.client.meters.get(s.meter_id)
    assert [m.slug for m in s.client.meters.list()] == []
    with pytest.raises(ResourceNotFoundError):
        s.client.meters.query_json(SLUG, from_parameter=s.w1, to=s.end)


def test_delete_meter_by_id_returns_none(seeded: Seeded) -> None:
    s = seeded
    assert s.client.meters.delete(s.meter_id) is None
    with pytest.raises(ResourceNotFoundError):
        s.client.meters.get(SLUG)
    with pytest.raises(ResourceNotFoundError):
        s.client.meters.delete(SLUG)


def test_customer_scoped_query_and_meter_order_through_the_sdk(client: Client) -> None:
    """``meters.query_json(filter_customer_id=...)``: the customer's key and subject keys, one row
    set per customer naming it; ``meters.list(order_by=...)`` in OpenMeter's order."""
    assert create_meter(client)[0] == 201
    extra = MeterCreate(slug="sdk_calls", name="A calls", aggregation="COUNT", event_type="call")
    assert client.meters.create(extra, cls=status_and_body)[0] == 201
    assert [m.slug for m in client.meters.list()] == ["sdk_calls", SLUG]  # by key
    assert [m.slug for m in client.meters.list(order_by="name", order="DESC")] == [SLUG, "sdk_calls"]
    body = {"name": "Acme", "key": "sdk-acme", "usageAttribution": {"subjectKeys": ["sdk-app"]}}
    acme = client.customers.create(body)
    now = datetime.now(UTC).replace(microsecond=0)
    sent = [("sdk-acme", 2, "a"), ("sdk-app", 3, "b"), ("sdk-app", 5, "a"), ("sdk-other", 100, "a")]
    events = [ev(str(uuid.uuid4()), s, now, n, model) for s, n, model in sent]
    assert client.events.ingest_events(events, cls=status_and_body)[0] == 204
    start, end = now - timedelta(minutes=5), now + timedelta(minutes=5)
    whole = client.meters.query_json(SLUG, from_parameter=start, to=end, filter_customer_id=[acme.id])
    assert [(r.customer_id, r.subject, r.value) for r in whole.data] == [(acme.id, None, 10)]
    split = client.meters.query_json(
        SLUG, from_parameter=start, to=end, filter_customer_id=[acme.id], group_by=["model"]
    )
    assert sorted((r.customer_id, r.group_by["model"], r.value) for r in split.data) == [
        (acme.id, "a", 7),
        (acme.id, "b", 3),
    ]
