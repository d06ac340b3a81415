"""Dashboard single sign-on (OIDC, authorization code + PKCE) against a stand-in provider
(``oidc_provider``: a small app in the test tree signing real RS256 ID tokens), end to end in
headless Chromium and step by step over HTTP for what must be refused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import oidc_provider
import pytest
from conftest import T0_US
from dashboard_site import Served, Site, browser_errors, launch, serve, shots_dir
from oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider

USERS: dict[str, dict[str, Any]] = {
    "root": {"sub": "u-root", "email": "root@example.com", "email_verified": True, "groups": ["meterline-admins"]},
    "alice": {"sub": "u-alice", "email": "alice@example.com", "email_verified": True, "name": "Alice"},
    "mallory": {"sub": "u-mallory", "email": "mallory@example.com", "email_verified": False},
    "eve": {"sub": "u-eve", "email": "eve@elsewhere.org", "email_verified": True},
}
RULES = [
    {"claims": {"groups": "meterline-admins"}, "namespace": "default", "scopes": ["admin"]},
    {"email_domains": ["example.com"], "namespace": "default", "scopes": ["read"]},
]


@pytest.fixture(scope="module")
def idp() -> Iterator[Provider]:
    running = oidc_provider.start(USERS, lambda: T0_US // 1_000_000)
    try:
        yield running.provider
    finally:
        running.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, idp: Provider) -> Iterator[Site]:
    oidc = {"issuer": idp.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "rules": RULES,
            "label": "Example SSO"}  # fmt: skip
    served: Served = serve(tmp_path_factory.mktemp("dashboard-sso") / "data", oidc=oidc)
    try:
        yield served.site
    finally:
        served.stop()


@pytest.fixture(autouse=True)
def honest(idp: Provider) -> Iterator[None]:
    idp.tamper.clear()
    yield
    idp.tamper.clear()


def through_provider(site: Site, user: str, state: str | None = None) -> tuple[httpx.Client, httpx.Response]:
    """Sign in as ``user`` step by step: the dashboard's redirect, the provider's page and its
    answer, then the callback (with ``state`` instead of the provider's when given). Returns the
    browser-like client (its cookies) and the callback's answer."""
    c = httpx.Client(base_url=site.url, timeout=30)
    r = c.get("/ui/sign-in/sso", params={"next": "/ui/executive"})
    assert r.status_code == 303, r.text
    ask = parse_qs(urlsplit(r.headers["location"]).query)
    assert ask["response_type"] == ["code"] and ask["client_id"] == [CLIENT_ID]
    assert ask["code_challenge_method"] == ["S256"] and len(ask["code_challenge"][0]) == 43
    assert ask["nonce"][0] and ask["state"][0] and "openid" in ask["scope"][0].split()
    assert httpx.get(r.headers["location"]).status_code == 200  # the provider's sign-in page
    form = {k: ask[k][0] for k in ("redirect_uri", "state", "nonce", "code_challenge", "scope")}
    back = httpx.post(r.headers["location"].split("?")[0], data={**form, "user": user})
    assert back.status_code == 302, back.text
    target = urlsplit(back.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == site.url and target.path == "/ui/sign-in/sso/callback"
    params = parse_qs(target.query)
    if state is not None:
        params["state"] = [state]
    return c, c.get(target.path, params={k: v[0] for k, v in params.items()})


def signed_out(c: httpx.Client) -> bool:
    r = c.get("/ui/executive")
    return r.status_code == 303 and r.headers["location"].startswith("/ui/sign-in")


def test_sign_in_and_out_in_the_browser(site: Site, idp: Provider, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors = browser_errors(page)
            page.goto(f"{site.url}/ui/executive")
            assert page.url.startswith(f"{site.url}/ui/sign-in")
            page.click("#sso")  # "Sign in with Example SSO"
            assert page.url.startswith(f"{idp.url}/authorize")
            page.select_option("#user", "root")
            page.click("#approve")
            page.wait_for_url(f"{site.url}/ui/executive")
            who = page.inner_text("header .who")
            assert "root@example.com" in who and "admin" in who and "default" in who
            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["meterline_session"]
            assert session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/ui"
            assert "meterline_oidc" not in cookies  # the flow's cookie is gone once used
            page.goto(f"{site.url}/ui/dead-letters")  # an admin sees the re-submit actions' page
            assert page.url == f"{site.url}/ui/dead-letters"
            page.screenshot(path=str(shots_dir(tmp_path) / "sso-desktop.png"), full_page=True)
            page.click("header .who button")  # sign out
            page.wait_for_url(re.compile(r".*/ui/sign-in.*"))
            assert "meterline_session" not in {c["name"] for c in context.cookies()}
            page.goto(f"{site.url}/ui/executive")
            assert page.url.startswith(f"{site.url}/ui/sign-in")
            assert errors == []
        finally:
            browser.close()
    assert len(idp.token_requests[-1]["code_verifier"]) >= 43  # PKCE: the verifier went to the token endpoint


def test_rules_give_scopes_and_a_read_user_cannot_act(site: Site) -> None:
    c, r = through_provider(site, "alice")
    assert r.status_code == 303 and r.headers["location"] == "/ui/executive"
    page = c.get("/ui/dead-letters")
    assert page.status_code == 200 and "alice@example.com" in page.text and "(read)" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    refused = c.post("/ui/dead-letters/resubmit", data={"csrf": csrf.group(1), "ids": "x"})
    assert refused.status_code == 403 and "missing_scope" in refused.text
    no_token = c.post("/ui/sign-out", data={"csrf": "not-the-token"})
    assert no_token.status_code == 403 and "csrf_failed" in no_token.text  # forms need the session token
    assert c.post("/ui/sign-out", data={"csrf": csrf.group(1)}).status_code == 303
    assert signed_out(c)


def _refused(c: httpx.Client, r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status and code in r.text, r.text
    assert "meterline_session" not in r.headers.get("set-cookie", "")
    assert signed_out(c)


def test_a_wrong_state_is_refused(site: Site) -> None:
    c, r = through_provider(site, "alice", state="forged-state")
    _refused(c, r, 401, "sso_state_mismatch")


def test_a_callback_without_the_flow_started_here_is_refused(site: Site, idp: Provider) -> None:
    through_provider(site, "alice")  # signed in; now a code arrives in a fresh browser
    fresh = httpx.Client(base_url=site.url, timeout=30)
    r = fresh.get("/ui/sign-in/sso/callback", params={"code": "whatever", "state": "whatever"})
    _refused(fresh, r, 401, "sso_state_mismatch")


@pytest.mark.parametrize(
    ("tamper", "said"),
    [
        ({"nonce": "another-sign-in"}, "nonce"),
        ({"aud": "some-other-client"}, "audience"),
        ({"exp_in": -3600}, "expired"),
        ({"iss": "http://127.0.0.1:1/impostor"}, "issuer"),
        ({"foreign_key": True}, "signature"),
    ],
)
def test_a_bad_id_token_makes_no_session(site: Site, idp: Provider, tamper: dict[str, Any], said: str) -> None:
    idp.tamper.update(tamper)
    c, r = through_provider(site, "root")
    _refused(c, r, 401, "sso_failed")
    assert said in r.text


@pytest.mark.parametrize("user", ["eve", "mallory"])  # another domain; an unverified address
def test_claims_mapping_to_no_scope_are_refused_clearly(site: Site, user: str) -> None:
    c, r = through_provider(site, user)
    _refused(c, r, 403, "sso_no_access")
    assert USERS[user]["email"] in r.text and "ask an administrator" in r.text


def test_a_code_works_once(site: Site, idp: Provider) -> None:
    c, r = through_provider(site, "alice")
    assert r.status_code == 303
    used = idp.token_requests[-1]
    again = c.get("/ui/sign-in/sso/callback", params={"code": used["code"], "state": "x"})
    assert again.status_code == 401  # its flow cookie is gone, and the provider would refuse the code


def test_without_oidc_there_is_no_sso(tmp_path: Path) -> None:
    served = serve(tmp_path / "data")
    try:
        form = httpx.get(f"{served.site.url}/ui/sign-in")
        assert form.status_code == 200 and 'id="sso"' not in form.text
        r = httpx.get(f"{served.site.url}/ui/sign-in/sso")
        assert r.status_code == 404 and "sso_off" in r.text
    finally:
        served.stop()
