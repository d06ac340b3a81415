import httpx
from conftest import Api, Server


def test_ingest_and_query_in_process(api: Api) -> None:
    assert api.create_meter(slug="calls", eventType="api", aggregation="COUNT").status_code == 201
    r = api.post_events([{"specversion": "1.0", "id": "a", "source": "s", "type": "api", "subject": "acme"}])
    assert r.status_code == 204, r.text
    rows = api.query("calls").json()["data"]
    assert [row["value"] for row in rows] == [1]


def test_real_server_process(server: Server) -> None:
    h = {"Authorization": f"Bearer {server.key}"}
    assert httpx.get(f"{server.url}/api/v1/meters", headers=h).json() == []
