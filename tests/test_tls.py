"""TLS and mTLS end to end: a real `meterline serve` with certificates from a throwaway CA
(trustme), reached by httpx, the CLI, the client SDK and curl. Attacker-minded: plain HTTP,
no certificate, a certificate of another CA, an expired one, an unmapped subject, a mapped
subject asking for more than ingest, a key that does not match."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trustme
from conftest import free_port, make_key

from meterline.client import Client, ClientOptions, TLSOptions
from meterline.config import load_config
from meterline.domain.errors import ConfigError
from meterline.runtime.tls import server_ssl_context, subject_name

MAPPED = "CN=billing-worker,OU=metering,O=Example Corp"  # as openssl -nameopt RFC2253 prints it
EVENT = {"specversion": "1.0", "source": "tls-test", "type": "probe", "subject": "acme", "data": {"n": 1}}


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    good: Path  # client cert + key in one PEM, subject MAPPED
    unmapped: Path
    expired: Path
    stranger: Path  # signed by another CA


@dataclass
class TLSServer:
    url: str
    key: str
    tenant_key: str  # a read key of the mapped namespace
    pki: Pki
    process: subprocess.Popen[bytes]


def _pem(leaf: trustme.LeafCert, path: Path) -> Path:
    path.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems) + leaf.private_key_pem.bytes())
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    past = datetime.now(UTC) - timedelta(days=30)
    return Pki(
        d,
        d / "ca.pem",
        _pem(ca.issue_cert("127.0.0.1", "localhost"), d / "server.pem"),
        _pem(
            ca.issue_cert(
                "billing-worker",
                common_name="billing-worker",
                organization_name="Example Corp",
                organization_unit_name="metering",
            ),
            d / "good.pem",
        ),
        _pem(
            ca.issue_cert(
                "someone",
                common_name="someone-else",
                organization_name="Example Corp",
                organization_unit_name="metering",
            ),
            d / "unmapped.pem",
        ),
        _pem(
            ca.issue_cert(
                "old",
                common_name="billing-worker",
                organization_name="Example Corp",
                organization_unit_name="metering",
                not_before=past,
                not_after=past + timedelta(days=1),
            ),
            d / "expired.pem",
        ),
        _pem(
            other.issue_cert(
                "x", common_name="billing-worker", organization_name="Example Corp", organization_unit_name="metering"
            ),
            d / "stranger.pem",
        ),
    )


def _client_ctx(pki: Pki, cert: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert))
    return ctx


def start_tls_server(data_dir: Path, pki: Pki, *extra: str, client_auth: str = "required") -> TLSServer:
    key = make_key(data_dir, ["admin"])
    tenant_key = make_key(data_dir, ["read", "admin"], namespace="billing")
    port = free_port()
    env = {
        **os.environ,
        "METERLINE_SERVER__TLS_CLIENT_NAMESPACES": json.dumps({MAPPED: "billing"}),
        "METERLINE_SERVER__TLS_CLIENT_AUTH": client_auth,
    }
    args = ["--tls-cert", str(pki.server_cert), "--tls-client-ca", str(pki.ca), *extra]
    log = (data_dir.parent / "tls-server.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "meterline.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )
    server = TLSServer(f"https://127.0.0.1:{port}", key, tenant_key, pki, process)
    deadline = time.monotonic() + 60
    with httpx.Client(verify=_client_ctx(pki, pki.good), timeout=2) as http:
        while time.monotonic() < deadline:
            assert process.poll() is None, (data_dir.parent / "tls-server.log").read_text()[-2000:]
            try:
                if http.get(f"{server.url}/readyz").status_code == 200:
                    return server
            except httpx.HTTPError:
                time.sleep(0.05)
    process.terminate()
    raise RuntimeError("the TLS server did not become ready")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TLSServer]:
    server = start_tls_server(tmp_path_factory.mktemp("tls") / "data", pki)
    yield server
    server.process.terminate()
    server.process.wait(10)


def _post(server: TLSServer, cert: Path | None, key: str | None, event_id: str) -> httpx.Response:
    headers = {"Content-Type": "application/cloudevents+json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    with httpx.Client(verify=_client_ctx(server.pki, cert), timeout=10) as http:
        return http.post(f"{server.url}/api/v1/events", content=json.dumps({**EVENT, "id": event_id}), headers=headers)


def _has_event(server: TLSServer, key: str, event_id: str) -> bool:
    with httpx.Client(verify=_client_ctx(server.pki, server.pki.good), timeout=10) as http:
        r = http.get(f"{server.url}/api/v1/events", params={"id": event_id}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return any(e["event"]["id"] == event_id for e in r.json())


# -- the handshake refuses -----------------------------------------------------------------------


def test_plain_http_is_refused(tls_server: TLSServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_server.url.replace("https://", "http://") + "/readyz", timeout=10)


@pytest.mark.parametrize("cert", [None, "stranger", "expired"])
def test_a_client_without_a_good_certificate_is_refused(tls_server: TLSServer, cert: str | None) -> None:
    path = getattr(tls_server.pki, cert) if cert else None
    with pytest.raises(httpx.TransportError):
        _post(tls_server, path, tls_server.key, f"refused-{cert}")


def test_a_server_certificate_of_an_unknown_ca_is_refused_by_the_client(tls_server: TLSServer) -> None:
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=10) as http:  # the system's CAs only
        http.get(f"{tls_server.url}/readyz")


# -- certificates as identities ------------------------------------------------------------------


def test_a_mapped_certificate_ingests_into_its_namespace_without_a_key(tls_server: TLSServer) -> None:
    r = _post(tls_server, tls_server.pki.good, None, "mapped-1")
    assert r.status_code == 204, r.text
    assert _has_event(tls_server, tls_server.tenant_key, "mapped-1")
    assert not _has_event(tls_server, tls_server.key, "mapped-1")  # not in the default namespace


def test_an_unmapped_certificate_still_needs_a_key(tls_server: TLSServer) -> None:
    r = _post(tls_server, tls_server.pki.unmapped, None, "unmapped-1")
    assert r.status_code == 401 and r.json()["code"] == "missing_api_key"
    assert _post(tls_server, tls_server.pki.unmapped, tls_server.key, "unmapped-2").status_code == 204


def test_a_mapped_certificate_grants_ingest_only(tls_server: TLSServer) -> None:
    with httpx.Client(verify=_client_ctx(tls_server.pki, tls_server.pki.good), timeout=10) as http:
        for method, path in [("GET", "/api/v1/meters"), ("GET", "/api/v1/events"), ("POST", "/api/v1/keys")]:
            r = http.request(method, f"{tls_server.url}{path}", json={})
            assert r.status_code == 401, (method, path, r.status_code)


def test_a_key_sent_with_a_mapped_certificate_is_checked_not_ignored(tls_server: TLSServer) -> None:
    r = _post(tls_server, tls_server.pki.good, "ml_000000000000_not-a-key", "badkey-1")
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"


def test_optional_client_auth_lets_keys_in_without_certificates_but_never_bad_certificates(
    tmp_path: Path, pki: Pki
) -> None:
    server = start_tls_server(tmp_path / "data", pki, client_auth="optional")
    try:
        assert _post(server, None, server.key, "optional-1").status_code == 204
        assert _post(server, None, None, "optional-2").status_code == 401
        with pytest.raises(httpx.TransportError):
            _post(server, pki.stranger, server.key, "optional-3")
        assert _post(server, pki.good, None, "optional-4").status_code == 204
    finally:
        server.process.terminate()
        server.process.wait(10)


# -- the CLI, the SDK, curl ------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_the_cli_speaks_tls_with_a_ca_file_and_a_client_certificate(tls_server: TLSServer) -> None:
    pki = tls_server.pki
    tls = ["--url", tls_server.url, "--ca-file", str(pki.ca), "--client-cert", str(pki.good)]
    result = _cli("ingest", "-", *tls, "--api-key", tls_server.key, stdin=json.dumps({**EVENT, "id": "cli-1"}))
    assert result.returncode == 0 and "accepted 1" in result.stdout, result.stderr
    env = {
        "METERLINE_URL": tls_server.url,
        "METERLINE_API_KEY": tls_server.key,
        "METERLINE_CA_FILE": str(pki.ca),
        "METERLINE_CLIENT_CERT": str(pki.good),
    }
    assert _cli("meters", "list", env=env).returncode == 0
    refused = _cli("meters", "list", "--url", tls_server.url, "--api-key", tls_server.key, "--ca-file", str(pki.ca))
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1


def test_the_sdk_ingests_with_a_mapped_certificate_and_no_key(tls_server: TLSServer, tmp_path: Path) -> None:
    pki = tls_server.pki
    options = ClientOptions(max_delay=0, tls=TLSOptions(ca_file=pki.ca, cert_file=pki.good))
    with Client(tls_server.url, None, options) as client:
        client.record("probe", "acme", {"n": 1}, id="sdk-1")
        assert client.flush(60)
        assert client.stats.sent == 1
    assert _has_event(tls_server, tls_server.tenant_key, "sdk-1")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_the_ca_and_a_client_certificate(tls_server: TLSServer) -> None:
    pki = tls_server.pki
    body = json.dumps({**EVENT, "id": "curl-1"})
    common = ["curl", "-sS", "--cacert", str(pki.ca), "-o", "/dev/null", "-w", "%{http_code}"]
    ok = subprocess.run(
        [
            *common,
            "--cert",
            str(pki.good),
            "-H",
            "Content-Type: application/cloudevents+json",
            "--data",
            body,
            f"{tls_server.url}/api/v1/events",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.stdout == "204", ok.stderr
    no_cert = subprocess.run([*common, f"{tls_server.url}/readyz"], capture_output=True, text=True, timeout=60)
    assert no_cert.returncode != 0 and no_cert.stdout in ("000", "")
    old = subprocess.run(
        [*common, "--cert", str(pki.good), "--tls-max", "1.1", f"{tls_server.url}/readyz"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert old.returncode != 0  # TLS 1.1 and older are refused


# -- configuration ---------------------------------------------------------------------------------


def test_the_server_context_demands_tls_1_2_and_verified_client_certificates(pki: Pki) -> None:
    ctx = server_ssl_context(pki.server_cert, None, pki.ca)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_REQUIRED
    assert server_ssl_context(pki.server_cert, None, pki.ca, "optional").verify_mode == ssl.CERT_OPTIONAL


def test_tls_settings_are_checked_as_a_whole(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"server": {"tls_client_namespaces": {"CN=x": "Not A Namespace"}}})
    assert "tls_client_namespaces needs tls_client_ca" in str(err.value)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS files cannot be used"):
        load_config(None, {"server": {"tls_cert": tmp_path / "junk.pem"}})
    with pytest.raises(ConfigError, match="needs tls_cert"):
        load_config(None, {"server": {"tls_client_ca": pki.ca}})


def test_subjects_are_written_as_rfc_4514() -> None:
    subject = ((("countryName", "DE"),), (("organizationName", "Example, Corp"),), (("commonName", "#svc"),))
    assert subject_name(subject) == "CN=\\#svc,O=Example\\, Corp,C=DE"
