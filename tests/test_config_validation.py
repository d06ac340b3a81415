"""Config values that would only fail later are refused up front, with every other problem.

An unknown ``billing.locale`` used to pass ``check-config`` and start-up and then make every
HTML invoice answer 500; an interval beyond the timer's range killed the scheduler thread; an
invoice prefix with ``/`` made invoices unreachable. Each is now a listed config problem, from
``load_config``, from ``meterline check-config`` and from ``meterline serve`` (which then does
not start).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import free_port

from meterline.config import load_config
from meterline.domain.errors import ConfigError

BAD = """
[server]
host = "bad host!"
[ingest]
future_skew = -5
dedupe_window = "P0D"
[portal]
token_ttl = "P2D"
max_token_ttl = "P1D"
[alerts]
backoff_max = 1e300
[billing]
locale = "xx_YY"
invoice_prefix = "INV/"
scheduler_interval = "P400D"
grace_period = 1e12
[[meters]]
namespace = "Not A Namespace"
slug = "calls"
event_type = "request"
aggregation = "COUNT"
"""
PROBLEMS = (
    "server.host",
    "ingest.future_skew",
    "ingest.dedupe_window",
    "portal",
    "alerts.backoff_max",
    "billing.locale",
    "billing.invoice_prefix",
    "billing.scheduler_interval",
    "billing.grace_period",
    "meters.0.namespace",
)


def test_every_late_failing_value_is_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    problems = exc.value.extra["problems"]
    assert sorted(p.split(":")[0] for p in problems) == sorted(PROBLEMS)
    assert any("unknown locale 'xx_YY'" in p for p in problems)


def test_check_config_and_serve_list_them_and_serve_does_not_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    base = [sys.executable, "-m", "meterline.cli.main"]
    check = subprocess.run([*base, "check-config", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    serve = subprocess.run(
        [*base, "serve", "--config", str(bad), "--data-dir", str(tmp_path / "d"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for r in (check, serve):
        assert r.returncode != 0 and "invalid configuration" in r.stderr
        for name in PROBLEMS:
            assert f"  - {name}: " in r.stderr, (name, r.stderr)
    assert "listening" not in serve.stdout and not (tmp_path / "d").exists()


def test_a_known_locale_is_accepted_in_its_canonical_form(tmp_path: Path) -> None:
    assert load_config(None, {"billing": {"locale": "de_DE.UTF-8"}}).billing.locale == "de_DE"
    assert load_config(None, {"billing": {"locale": "EN_us"}}).billing.locale == "en_US"
    assert load_config(None, {"billing": {"locale": "fr"}}).billing.locale == "fr"
    good = tmp_path / "good.toml"
    good.write_text('[billing]\nlocale = "de_CH"\ninvoice_prefix = "ACME.2026-"\n[server]\nhost = "localhost"\n')
    r = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "check-config", "--config", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert '"locale": "de_CH"' in r.stdout


def test_an_empty_reconcile_interval_turns_the_scheduled_run_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOML has no null: an empty interval (in the file or the environment) means never, as the
    example config says; in scale mode that keeps the job on one API node of many."""
    path = tmp_path / "c.toml"
    path.write_text('[reconcile]\ninterval = ""\n')
    assert load_config(path).reconcile.interval is None
    monkeypatch.setenv("METERLINE_RECONCILE__INTERVAL", "")
    assert load_config(None).reconcile.interval is None
    monkeypatch.setenv("METERLINE_RECONCILE__INTERVAL", "PT5M")
    assert load_config(None).reconcile.interval == timedelta(minutes=5)
