"""The event explorer's bounded scan over a real server and store: a filtered page looks through
one window of ledger positions, says which, and links to the next window; following the links
shows every match exactly once, newest first, and stops at the oldest position."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from dashboard_site import Served, Site, event, ingest, serve
from test_dashboard_access import signed_in_client

from meterline.api.dashboard import debug

WINDOW = 7


def kind(i: int) -> str:
    return "rare" if i % 9 == 0 else "common"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    served: Served = serve(tmp_path_factory.mktemp("explorer") / "data")
    try:
        with served.site.client() as c:
            ingest(
                c, [event(f"e{i}", f"cust-{i % 4}", kind(i), f"2026-02-{1 + i % 27:02d}T10:00:00Z") for i in range(40)]
            )
        yield served.site
    finally:
        served.stop()


@pytest.fixture
def client(site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setattr(debug, "SCAN", WINDOW)  # the server runs in this process
    c, _ = signed_in_client(site, "read")
    try:
        yield c
    finally:
        c.close()


def page(c: httpx.Client, path: str) -> tuple[list[int], str | None, str]:
    """The shown positions, the next page's link and the page's text."""
    r = c.get(path)
    assert r.status_code == 200, r.text
    seqs = [int(s) for s in re.findall(r'<tr data-seq="(\d+)"', r.text)]
    older = re.search(r'href="\?([^"]*)" rel="next"', r.text)
    return seqs, None if older is None else "/ui/events?" + older.group(1).replace("&amp;", "&"), r.text


def test_a_filter_pages_through_bounded_windows_and_finds_every_match_once(client: httpx.Client) -> None:
    found: list[int] = []
    path: str | None = "/ui/events?type=rare"
    pages = 0
    while path is not None:
        seqs, path, text = page(client, path)
        pages += 1
        assert len(seqs) <= WINDOW
        if path is not None:
            shown = re.search(r"Looked through ledger positions (\d+) to (\d+)", text)
            assert shown is not None and int(shown.group(2)) - int(shown.group(1)) + 1 == WINDOW
            assert all(int(shown.group(1)) <= s <= int(shown.group(2)) for s in seqs)
        found += seqs
    rare = [i + 1 for i in range(40) if i % 9 == 0]  # positions of the "rare" events (one batch, in order)
    assert found == sorted(rare, reverse=True)
    assert pages == -(-40 // WINDOW)
    assert "the oldest" in text


def test_unfiltered_pages_stay_by_primary_key_and_full(client: httpx.Client) -> None:
    seqs, older, text = page(client, "/ui/events")
    assert seqs == list(range(40, 0, -1)) and older is None and "Looked through" not in text


def test_a_type_no_event_has_answers_from_the_index(client: httpx.Client) -> None:
    seqs, _, text = page(client, "/ui/events?type=nosuch")
    assert seqs == [] and "No events match" in text


def test_several_filters_combine_within_the_window(client: httpx.Client) -> None:
    found: list[int] = []
    path: str | None = "/ui/events?type=common&subject=cust-1&from=2026-02-10T00:00"
    while path is not None:
        seqs, path, _ = page(client, path)
        found += seqs
    want = [i + 1 for i in range(40) if i % 9 and i % 4 == 1 and 1 + i % 27 >= 10]
    assert found == sorted(want, reverse=True)
