"""Every command that talks to a server fails with one line and exit status 2, however the server
fails: nobody listening, an unknown host, TLS against plain HTTP, a bad URL, no answer in time, a
dropped connection, an answer that is not JSON, a problem+json answer.

The commands are discovered from the ``meterline`` click group (every command with ``--url``),
so a new command is covered without editing this file; its arguments are made up from its
parameters (``SAMPLES`` and ``EXTRA`` hold the few values a command checks before sending).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from conftest import free_port

from meterline.cli.main import cli

CLI = [sys.executable, "-m", "meterline.cli.main"]
EVENT = '{"specversion":"1.0","id":"e1","source":"t","type":"prompt","subject":"acme"}\n'
# values for parameters that are checked before anything is sent
SAMPLES = {"file": "-", "ids": "1", "asks": "feature=1", "from_": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
# options some commands need to get as far as sending a request
EXTRA = {
    "customers update": ["--name", "Acme"],
    "portal invalidate": ["--id", "t1"],
    "erase": ["--yes"],  # no confirmation prompt: the request itself is what fails
    "entitlements grant": ["--limit", "10"],
    "alerts channels create": ["--log"],
    "alerts rules create": ["--threshold", "80%"],
}


def _client_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _client_commands(command, (*prefix, name))
        elif any(p.name == "url" for p in command.params):
            yield (*prefix, name)


COMMANDS = list(_client_commands())


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def _args(path: tuple[str, ...]) -> list[str]:
    """The command line of ``path`` with every required parameter given a plausible value."""
    args = list(path)
    for param in _command(path).params:
        if not param.required or param.name in ("url", "api_key"):
            continue
        value = SAMPLES.get(param.name or "", "x")
        if isinstance(param.type, click.Choice):
            value = str(param.type.choices[0])
        args += [value] if isinstance(param, click.Argument) else [param.opts[0], value]
    return args + EXTRA.get(" ".join(path), [])


def run(path: tuple[str, ...], url: str, timeout: str = "10") -> Result:
    env = {"METERLINE_URL": url, "METERLINE_API_KEY": "ml_test", "METERLINE_TIMEOUT": timeout}
    return CliRunner().invoke(cli, _args(path), env=env, input=EVENT)


def assert_one_line(result: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, one ``error:`` line on stderr holding every needle."""
    lines = result.stderr.splitlines()
    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exit_code == 2 and result.stdout == "", shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert "Usage:" not in lines[0] and "Traceback" not in result.stderr, shown
    for needle in needles:
        assert needle in lines[0], shown
    return lines[0]


# -- servers that fail in every way ----------------------------------------------------------


class _Fixed(BaseHTTPRequestHandler):
    """Answers every request with the class's status, media type and body."""

    status = 200
    media = "text/html"
    body = b"<html><body>It works!</body></html>"
    headers_out: dict[str, str] = {}

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Type", self.media)
        self.send_header("Content-Length", str(len(self.body)))
        for name, value in self.headers_out.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Problem(_Fixed):
    status = 503
    media = "application/problem+json"
    body = b'{"type":"about:blank","title":"Unavailable","status":503,"code":"storage_unavailable",'
    body += b'"detail":"The store could not commit; nothing of this request was recorded"}'
    headers_out = {"Retry-After": "2"}


class _WrongShape(_Fixed):
    """Valid JSON of a shape no meterline endpoint answers (another service at --url)."""

    media = "application/json"
    body = b'{"data": 5, "items": "x", "invoices": {"a": null}, "lines": [null, 7]}'


class _Proxy(_Fixed):
    status = 502
    media = "text/html"
    body = b"<html>\n<h1>502 Bad Gateway</h1>\n</html>"


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def html_server() -> Iterator[str]:
    yield from _serve(_Fixed)


@pytest.fixture(scope="module")
def problem_server() -> Iterator[str]:
    yield from _serve(_Problem)


@pytest.fixture(scope="module")
def wrong_shape_server() -> Iterator[str]:
    yield from _serve(_WrongShape)


@pytest.fixture(scope="module")
def proxy_server() -> Iterator[str]:
    yield from _serve(_Proxy)


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def hangup_server() -> Iterator[str]:
    """Accepts each connection and closes it without a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)

    def loop() -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


# -- every command, every way ------------------------------------------------------------------


def test_the_known_client_commands_are_discovered() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"ingest", "usage", "meters list", "billing invoices", "billing run", "customers list"} <= names
    assert "serve" not in names and "keys create" not in names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_closed_port(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line(run(command, url), f"cannot connect to {url} (connection refused)", "METERLINE_URL")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_answer_that_is_not_json(command: tuple[str, ...], html_server: str) -> None:
    line = assert_one_line(run(command, html_server), html_server, "answered 200 with text/html")
    assert "meterline server" in line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_problem_answer(command: tuple[str, ...], problem_server: str) -> None:
    line = assert_one_line(run(command, problem_server), "nothing of this request was recorded", problem_server)
    assert "(503 storage_unavailable)" in line and "retry after 2 s" in line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_json_answer_of_another_shape(command: tuple[str, ...], wrong_shape_server: str) -> None:
    result = run(command, wrong_shape_server)
    if result.exit_code == 0:  # a command that only echoes what it got may take any JSON
        assert "Traceback" not in result.stderr
        return
    assert_one_line(result)


@pytest.mark.parametrize("command", [("meters", "list"), ("billing", "invoices"), ("ingest",)], ids=" ".join)
def test_error_page_of_a_proxy(command: tuple[str, ...], proxy_server: str) -> None:
    assert_one_line(run(command, proxy_server), "answered 502 Bad Gateway (text/html)", proxy_server)


REPRESENTATIVE = [("usage",), ("meters", "list"), ("ingest",), ("billing", "invoices"), ("customers", "list")]


@pytest.mark.parametrize("command", REPRESENTATIVE, ids=" ".join)
def test_unknown_host(command: tuple[str, ...]) -> None:
    assert_one_line(run(command, "http://no-such-host.invalid:8888"), "cannot resolve the host of", ".invalid")


@pytest.mark.parametrize("command", REPRESENTATIVE, ids=" ".join)
def test_tls_against_plain_http(command: tuple[str, ...], html_server: str) -> None:
    url = html_server.replace("http://", "https://")
    assert_one_line(run(command, url), f"TLS with {url} failed", "http:// versus https://")


@pytest.mark.parametrize("url", ["127.0.0.1:8888", "ftp://127.0.0.1", "http://[::1"])
@pytest.mark.parametrize("command", REPRESENTATIVE, ids=" ".join)
def test_not_a_server_address(command: tuple[str, ...], url: str) -> None:
    assert_one_line(run(command, url), url, "METERLINE_URL")


@pytest.mark.parametrize("command", REPRESENTATIVE, ids=" ".join)
def test_no_answer_in_time(command: tuple[str, ...], silent_server: str) -> None:
    assert_one_line(run(command, silent_server, timeout="0.2"), f"{silent_server} did not answer within 0.2 s")


@pytest.mark.parametrize("command", REPRESENTATIVE, ids=" ".join)
def test_connection_dropped(command: tuple[str, ...], hangup_server: str) -> None:
    assert_one_line(run(command, hangup_server), f"the connection to {hangup_server} broke before an answer")


def test_text_answers_must_be_what_was_asked_for(html_server: str) -> None:
    for args in (("usage", "tokens", "--csv"), ("billing", "invoice", "INV-1", "--format", "csv")):
        env = {"METERLINE_URL": html_server, "METERLINE_API_KEY": "k"}
        assert_one_line(CliRunner().invoke(cli, list(args), env=env), "with text/html, not text/csv")


@pytest.mark.parametrize("option", ["--from", "--to"])
@pytest.mark.parametrize("value", ["2026-03-01T00:00:00Z", "2026-13-01", "yesterday"])
def test_reconcile_days_are_checked_before_anything_is_sent(option: str, value: str) -> None:
    """``from`` and ``to`` are whole days (the server takes YYYY-MM-DD): anything else is a
    usage error naming the option, and no request is made (nothing listens at the URL)."""
    env = {"METERLINE_URL": f"http://127.0.0.1:{free_port()}", "METERLINE_API_KEY": "ml_test"}
    result = CliRunner().invoke(cli, ["reconcile", option, value], env=env)
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"Invalid value for '{option}': '{value}' is not a day (YYYY-MM-DD" in result.stderr, result.stderr
    assert "cannot connect" not in result.stderr


def test_a_reader_that_goes_away_is_no_failure(tmp_path: Path) -> None:
    """Output piped into a reader that stops early (``meterline keys list | head -1``): the
    command stops quietly with status 1, as click does, not with an "unexpected failure"."""
    data = ["--data-dir", str(tmp_path / "data")]
    made = subprocess.run([*CLI, "keys", "create", "--scope", "read", *data], capture_output=True)
    assert made.returncode == 0, made.stderr
    reader, writer = os.pipe()
    os.close(reader)  # gone before the command writes a byte
    try:
        done = subprocess.run([*CLI, "keys", "list", *data], stdout=writer, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(writer)
    assert done.returncode == 1, done.stderr
    assert "unexpected failure" not in done.stderr and "Traceback" not in done.stderr, done.stderr
