"""Clients generated from the served OpenAPI document by two common generators build, and
their ingest, meter query and customer calls work against a real server.

- Python: ``openapi-python-client`` (a dev dependency) generates a package, which is imported
  and used; the only part it may leave out is the YAML answer of ``GET /api/v1/openapi.yaml``.
- TypeScript: ``@hey-api/openapi-ts`` generates an SDK that ``tsc`` compiles without errors,
  and ``tests/openmeter_js/generated_client.test.cjs`` uses it (``npm ci`` installs both).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, start_server
from node_packages import failures, node_test, npm_ci

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

ALLOWED_WARNING = "GET /api/v1/openapi.yaml"  # a YAML answer: not a JSON model to generate


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "data")
    yield s
    s.stop()


def served_document(server: Server, into: Path) -> Path:
    r = httpx.get(f"{server.url}/api/v1/openapi.yaml", timeout=30)
    assert r.status_code == 200
    into.write_text(r.text)
    return into


def test_openapi_python_client(server: Server, tmp_path: Path) -> None:
    doc = served_document(server, tmp_path / "openapi.yaml")
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "openapi-python-client"), "generate", "--path", str(doc), "--meta", "none"]
    done = subprocess.run(
        [*command, "--output-path", str(tmp_path / "meterline_client")],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    assert all(ALLOWED_WARNING in w for w in warnings), done.stdout
    assert "Failure to process schema" not in done.stdout and "will not be generated" not in done.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        _use_python_client(server)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "meterline_client"]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"meterline_client.{name}")


def _use_python_client(server: Server) -> None:
    authenticated = _module("client").AuthenticatedClient
    client = authenticated(base_url=server.url, token=server.key, raise_on_unexpected_status=True)
    models = _module("models")
    meters, events, customers = "api.meters.", "api.events.", "api.customers."
    spec = {"slug": "calls", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n", "groupBy": {"m": "$.m"}}
    created = _module(meters + "create_meter").sync_detailed(client=client, body=models.MeterCreate.from_dict(spec))
    assert created.status_code == 201, created.content
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    def event(i: int, seconds: float, n: str, m: str) -> Any:
        time = (t0 + timedelta(seconds=seconds)).isoformat()
        body = {"specversion": "1.0", "id": f"py-{i}", "source": "py", "type": "call", "subject": "acme"}
        return models.Event.from_dict(body | {"time": time, "data": {"n": n, "m": m}})

    ingest = _module(events + "ingest_events")
    assert ingest.sync_detailed(client=client, body=event(1, 1.5, "2.25", "a")).status_code == 204
    batch = [event(2, 95.25, "4", "b"), event(1, 1.5, "2.25", "a")]  # the second is a retry
    assert ingest.sync_detailed(client=client, body=batch).status_code == 204
    query = _module(meters + "query_meter")
    one = query.sync(meter="calls", client=client, from_=t0 + timedelta(seconds=1), to=t0 + timedelta(seconds=90))
    assert [row.value for row in one.data] == [2.25]
    grouped = query.sync(meter="calls", client=client, from_=t0, group_by=["m"])
    assert sorted((row.group_by["m"], row.value) for row in grouped.data) == [("a", 2.25), ("b", 4)]
    body = {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["acme"]}, "currency": "USD"}
    made = _module(customers + "create_customer").sync(client=client, body=models.CustomerInput.from_dict(body))
    assert (made.key, made.currency) == ("acme", "USD")
    page = _module(customers + "list_customers").sync(client=client, page_size=10)
    assert (page.total_count, [c.key for c in page.items]) == (1, ["acme"])
    got = _module(customers + "get_customer").sync(customer=made.id, client=client)
    assert got.usage_attribution.subject_keys == ["acme"]


def test_hey_api_typescript_client(server: Server, tmp_path: Path) -> None:
    js = npm_ci()
    doc = served_document(server, tmp_path / "openapi.yaml")
    generated, compiled = tmp_path / "gen", tmp_path / "dist"
    bins = js / "node_modules" / ".bin"
    done = subprocess.run(
        [str(bins / "openapi-ts"), "-i", str(doc), "-o", str(generated)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tsconfig = {
        "compilerOptions": {
            "target": "ES2022",
            "module": "CommonJS",
            "moduleResolution": "Node10",
            "lib": ["ES2022", "DOM", "DOM.Iterable"],
            "strict": True,
            "skipLibCheck": True,
            "outDir": str(compiled),
        },
        "include": [f"{generated}/**/*.ts"],
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(tsconfig))
    (tmp_path / "package.json").write_text("{}")  # CommonJS output
    built = subprocess.run(
        [str(bins / "tsc"), "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    env = {"METERLINE_URL": server.url, "METERLINE_KEY": server.key, "GENERATED": str(compiled)}
    ran = node_test("generated_client.test.cjs", env)
    assert not failures(ran), failures(ran)
