"""The HTTP client of every command that talks to a running server, and the one place where
a failed request becomes one line for a person.

    RequestFailed (a MeterlineError; ``meterline`` prints ``error: <detail>`` and exits 2)
    ├── cannot connect: refused, unknown host, TLS handshake, bad --url
    ├── no answer in time (connect, read or write timeout)
    ├── the connection broke or the peer does not speak HTTP
    ├── an answer that is not JSON where JSON was asked for (another service at --url?)
    └── a 3xx/4xx/5xx answer: the problem+json ``detail`` and ``code``, or status and type

Each line says what failed, at which URL, and what to check. httpx is imported when the
first request is made, so ``meterline --help`` and the data-directory commands never load it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, overload

import click
import msgspec

from meterline.domain.errors import MeterlineError

if TYPE_CHECKING:
    import httpx

    from meterline.client import TLSOptions

_encode = msgspec.json.Encoder(decimal_format="number").encode
_decode = msgspec.json.Decoder(float_hook=Decimal).decode  # numbers stay exact

_URL_HINT = "check --url or METERLINE_URL"
JSON = "application/json"


class RequestFailed(MeterlineError):
    """A request to the server failed; ``detail`` is one line meant for a person (CLI only)."""

    code = "request_failed"


class Api:
    """A client for one server: JSON in and out (bodies may be msgspec Structs), errors translated."""

    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0, tls: TLSOptions | None = None) -> None:
        """``tls`` (CA bundle, client certificate) defaults to METERLINE_CA_FILE, METERLINE_CLIENT_CERT
        and METERLINE_CLIENT_KEY; without an API key only a client certificate identifies the caller."""
        import httpx

        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=_verify(tls))
        except httpx.InvalidURL:
            raise RequestFailed(f"{url!r} is not a server address like http://127.0.0.1:8888; {_URL_HINT}") from None

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        return self._json(self.send("GET", path, params=params))

    def post(
        self, path: str, body: object = None, *, content: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """POST ``body`` as JSON (or ``content`` with its own ``headers``) and decode the JSON answer."""
        if content is None and body is not None:
            content, headers = _encode(body), {"Content-Type": "application/json", **(headers or {})}
        return self._json(self.send("POST", path, content=content, headers=headers))

    def put(self, path: str, body: object) -> Any:
        return self._json(self.send("PUT", path, content=_encode(body), headers={"Content-Type": "application/json"}))

    def delete(self, path: str) -> None:
        self._json(self.send("DELETE", path))  # meterline answers 204; anything else must be JSON

    def text(self, path: str, params: Sequence[tuple[str, str]] = (), *, expect: str) -> str:
        """The answer's text, exactly as served, when it is of media type ``expect`` (text/csv,
        text/html, application/x-ndjson; application/json is also decoded to check it)."""
        response = self.send("GET", path, params=params, headers={"Accept": expect})
        if _media_type(response) != expect:
            raise RequestFailed(
                f"{_request_line(response)} answered {response.status_code} with {_media_type(response)},"
                f" not {expect}; is {self.url} a meterline server? {_URL_HINT}"
            )
        if expect == JSON:
            self._json(response)
        return response.text

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request; any failure, or an answer of status 300 or more, raises RequestFailed."""
        import httpx

        try:
            response = self._http.request(method, path, params=tuple(params), content=content, headers=headers)
        except httpx.InvalidURL:
            raise RequestFailed(f"{method} {self.url}{path}: not a valid URL; {_URL_HINT}") from None
        except httpx.HTTPError as exc:
            raise RequestFailed(self._transport_failure(exc)) from None
        if response.status_code >= 300:
            raise RequestFailed(answer_failure(response))
        return response

    def _transport_failure(self, exc: httpx.HTTPError) -> str:
        import socket
        import ssl

        import httpx

        where = self.url
        if isinstance(exc, httpx.ConnectTimeout):
            return f"{where} did not accept a connection within {self.timeout:g} s; is the address right? {_URL_HINT}"
        if isinstance(exc, httpx.TimeoutException):
            return (
                f"{where} did not answer within {self.timeout:g} s; the server may be overloaded or stuck"
                " (check its /readyz and logs, or raise --timeout)"
            )
        if isinstance(exc, httpx.UnsupportedProtocol):
            return f"{where} is not an http:// or https:// address; {_URL_HINT}"
        cause = _root_cause(exc)
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or type(cause).__name__
            return f"TLS with {where} failed ({reason}); check http:// versus https:// and the server's certificate"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host of {where} ({cause.strerror or cause}); {_URL_HINT}"
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot connect to {where} (connection refused); is meterline running there? {_URL_HINT}"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {where} ({_one_line(str(exc)) or type(exc).__name__}); {_URL_HINT}"
        return (
            f"the connection to {where} broke before an answer ({type(exc).__name__}); "
            f"is a meterline server listening there? {_URL_HINT}"
        )

    def _json(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return _decode(response.content)
        except msgspec.DecodeError:
            raise RequestFailed(
                f"{_request_line(response)} answered {response.status_code} with {_media_type(response)}, not JSON;"
                f" is {self.url} a meterline server? {_URL_HINT}"
            ) from None


def tls_from_env() -> TLSOptions:
    import os

    from meterline.client import TLSOptions

    env = os.environ.get
    return TLSOptions(
        env("METERLINE_CA_FILE") or None, env("METERLINE_CLIENT_CERT") or None, env("METERLINE_CLIENT_KEY") or None
    )


def _verify(tls: TLSOptions | None) -> Any:
    """httpx's ``verify``: True (system CAs) unless a CA bundle or client certificate is set."""
    from meterline.client.transport import ssl_context

    tls = tls or tls_from_env()
    if not (tls.ca_file or tls.cert_file):
        return True
    try:
        return ssl_context(tls)
    except (OSError, ValueError) as exc:
        what = ", ".join(str(p) for p in (tls.ca_file, tls.cert_file, tls.key_file) if p)
        raise RequestFailed(
            f"cannot load the TLS files {what} ({_one_line(str(exc))}); check --ca-file, --client-cert and --client-key"
        ) from None


def answer_failure(response: httpx.Response) -> str:
    """One line for an answer of status 300 or more: the problem's detail and code when it is one."""
    status, what = response.status_code, _request_line(response)
    problem = _problem(response)
    if problem is not None:
        code = problem.get("code") or response.reason_phrase
        hint = "; check --api-key or METERLINE_API_KEY" if status == 401 else ""
        retry = response.headers.get("Retry-After")
        hint += f"; retry after {retry} s" if retry and retry.isdigit() else ""
        return f"{_one_line(str(problem['detail']))} ({status} {code}) from {what}{hint}"
    if 300 <= status < 400:
        where = response.headers.get("Location", "elsewhere")
        return f"{what} answered {status}, redirecting to {_one_line(where)}; {_URL_HINT}"
    body = ""
    if _media_type(response) == "text/plain" and response.content:
        body = ": " + _one_line(response.text)[:200]
    return (
        f"{what} answered {status} {response.reason_phrase} ({_media_type(response)}){body}, not a meterline"
        f" answer: another service, or a proxy whose meterline is down? {_URL_HINT}"
    )


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = _decode(response.content)
    except msgspec.DecodeError:
        return None
    return body if isinstance(body, dict) and isinstance(body.get("detail"), str) else None


def _request_line(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url}"


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("Content-Type", "").partition(";")[0].strip() or "no content type"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _root_cause(exc: BaseException) -> BaseException:
    seen: set[int] = set()
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(exc))
        exc = nxt
    return exc


# -- the options every server command takes -------------------------------------------------


def tls_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--ca-file``, ``--client-cert``, ``--client-key`` (also METERLINE_CA_FILE, _CLIENT_CERT, _CLIENT_KEY)."""
    f = click.option("--client-key", envvar="METERLINE_CLIENT_KEY", metavar="FILE", help="PEM key of --client-cert")(f)
    f = click.option(
        "--client-cert", envvar="METERLINE_CLIENT_CERT", metavar="FILE", help="PEM client certificate for mTLS"
    )(f)
    return click.option(
        "--ca-file",
        envvar="METERLINE_CA_FILE",
        metavar="FILE",
        help="PEM CA bundle the server's certificate is checked with",
    )(f)


def tls_of(ca_file: str | None, client_cert: str | None, client_key: str | None) -> TLSOptions:
    from meterline.client import TLSOptions

    return TLSOptions(ca_file, client_cert, client_key)


def server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--api-key``, ``--timeout`` and the TLS options (also from METERLINE_URL, _API_KEY, _TIMEOUT)."""
    f = tls_options(f)
    f = click.option(
        "--timeout",
        "timeout_s",
        envvar="METERLINE_TIMEOUT",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="how long to wait for the server (default 60, billing 300, reconcile 600), or METERLINE_TIMEOUT",
    )(f)
    f = click.option("--api-key", envvar="METERLINE_API_KEY", required=True, help="or METERLINE_API_KEY")(f)
    return click.option(
        "--url",
        envvar="METERLINE_URL",
        default="http://127.0.0.1:8888",
        show_default=True,
        help="server address, or METERLINE_URL",
    )(f)


@overload
def with_api(f: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def with_api(*, timeout: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def with_api(f: Callable[..., Any] | None = None, /, *, timeout: float = 60.0) -> Any:
    """Add the server options and call ``f(api, **options)`` with an open :class:`Api`
    (``timeout`` is the default of ``--timeout``). Use as ``@with_api`` or ``@with_api(timeout=...)``."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def run(
            url: str,
            api_key: str,
            timeout_s: float | None,
            ca_file: str | None,
            client_cert: str | None,
            client_key: str | None,
            **kwargs: Any,
        ) -> Any:
            with Api(url, api_key, timeout_s or timeout, tls_of(ca_file, client_cert, client_key)) as api:
                return f(api, **kwargs)

        return server_options(run)

    return decorate if f is None else decorate(f)
