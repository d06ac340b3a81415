"""``meterline ingest`` refuses files it cannot read with one line and exit status 2, before it
sends anything (so no server is needed): bytes that are not UTF-8, JSON nested deeper than the
decoder can follow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

NESTED = "[" * 100_000 + "]" * 100_000
LINE = '{"specversion":"1.0","id":"e1","source":"t","type":"prompt","subject":"acme"}'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe" + LINE.encode() + b"\n", "not UTF-8"),
        (NESTED.encode(), "nests too deep"),
        (LINE.encode() + b"\n" + ('{"a":' * 100_000 + "1" + "}" * 100_000).encode() + b"\n", "line 2"),
    ],
    ids=["not-utf8", "nested-array", "nested-line"],
)
def test_ingest_of_an_unreadable_file_is_one_line_and_exit_2(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(content)
    url = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "ingest", str(path), "--url", url, "--api-key", "ml_x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
