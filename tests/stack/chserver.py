"""A ClickHouse HTTP-interface endpoint over the ClickHouse engine of ``chdb``: the one stand-in
of the local stack, because no usable ClickHouse server package installs on this machine.

It owns one chdb data directory (chdb allows one process per path) and speaks enough of
ClickHouse's port-8123 protocol for unchanged ``clickhouse_connect.get_client(host, port)``
clients in any number of processes:

- every request is a POST (or GET) whose SQL is the ``query`` URL parameter followed by the
  body; ``param_<name>`` are bind parameters, other known parameters are settings (``SET`` on
  the chdb handle of the serving thread, replaced by a fresh one when a request lacks a setting
  the last one had, so requests never see each other's settings);
- an INSERT's data follows its ``FORMAT`` line, chunked and possibly lz4/zstd/gzip compressed:
  it reaches chdb through a temporary file (``INSERT ... FROM INFILE``);
- results carry ``X-ClickHouse-Format``; an empty Native result gets its header block (chdb
  answers 0 bytes where ClickHouse sends the column names and types);
- errors are HTTP 500 with ``X-ClickHouse-Exception-Code`` and ClickHouse's ``Code: n.`` text.

Run: ``python -m stack.chserver --path DIR --port PORT``.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import gzip
import os
import re
import signal
import socket
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

_NOT_SETTINGS = {
    "query", "database", "session_id", "query_id", "default_format", "compress", "decompress",
    "user", "password", "session_timeout", "session_check", "buffer_size", "wait_end_of_query",
    "enable_http_compression", "http_headers_progress_interval_ms", "send_progress_in_http_headers",
    "client_protocol_version", "role", "quota_key", "http_response_headers",
}  # fmt: skip
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s", re.IGNORECASE)
_RESULT = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN|\()", re.IGNORECASE)
_CODE = re.compile(r"Code:\s*(\d+)")


class Handle:
    """A chdb handle with the session settings it was given (handles run in parallel)."""

    def __init__(self, path: str) -> None:
        self.conn = chdb.connect(path)
        self.conn.query("SET async_insert=0")  # chdb's default is 1: an insert must be written when answered
        self.settings: dict[str, str] = {}
        self.database = ""

    def query(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        return self.conn.query(sql, fmt, params=params)

    def prepare(self, database: str, settings: dict[str, str]) -> bool:
        """Apply a request's database and settings; False when it had settings this request
        lacks (a fresh handle is needed so they do not leak into it)."""
        if self.settings.keys() - settings.keys():
            return False
        if database and database != self.database:
            self.conn.query(f"USE `{database}`")
            self.database = database
        for key, value in settings.items():
            if self.settings.get(key) != value:
                self.conn.query(f"SET {key} = {_literal(value)}")
                self.settings[key] = value
        return True


class Engine:
    """The chdb data directory, with one handle per server thread (an HTTP keep-alive
    connection), so a client's requests reuse the settings already applied."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._keep = chdb.connect(path)  # holds the engine open between requests
        self.tmp = tempfile.mkdtemp(prefix="chserver-")
        self._seq = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def handle(self, database: str, settings: dict[str, str]) -> Handle:
        handle: Handle | None = getattr(self._local, "handle", None)
        if handle is None or not handle.prepare(database, settings):
            if handle is not None:
                handle.conn.close()
            handle = self._local.handle = Handle(self.path)
            handle.prepare(database, settings)
        return handle

    def temp_file(self) -> str:
        with self._lock:
            self._seq += 1
            return os.path.join(self.tmp, f"insert-{self._seq}.bin")


def _decompress(data: bytes, encoding: str) -> bytes:
    """The whole body: clients compress an insert one block at a time, each block a frame of its
    own, so every concatenated frame is decoded (a one-frame decoder silently kept the first
    block, about 65,000 rows, of a larger insert)."""
    if encoding == "lz4":
        import lz4.frame

        out = bytearray()
        while data:
            decoder = lz4.frame.LZ4FrameDecompressor()
            out += decoder.decompress(data)
            data = decoder.unused_data
        return bytes(out)
    if encoding == "zstd":
        import zstandard

        out = bytearray()
        while data:
            obj = zstandard.ZstdDecompressor().decompressobj()
            out += obj.decompress(data)
            data = obj.unused_data
        return bytes(out)
    if encoding in ("gzip", "deflate"):
        return gzip.decompress(data)  # reads every gzip member
    return data


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        if urlsplit(self.path).path in ("/ping", "/"):
            if "query" not in dict(parse_qsl(urlsplit(self.path).query)):
                self._send(200, b"Ok.\n", {})
                return
        self.do_POST()

    def do_POST(self) -> None:
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        try:
            body = self._body()
        except Exception as exc:  # a broken request body
            self._error(f"Code: 27. DB::Exception: cannot read the request body: {exc}")
            return
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            # a query whose bound parameters are too long for the URL comes as a form (as
            # ClickHouse's HTTP interface takes it): the query and each param_* are fields
            params.update(_form_fields(self.headers["Content-Type"], body))
            body = b""
        sql = params.get("query", "")
        if body:
            sql = f"{sql}\n{body.decode('utf-8', 'surrogateescape')}" if sql else None  # type: ignore[assignment]
        try:
            if sql is None:
                self._insert_or_query(params, body)
            else:
                self._run(params, sql, b"")
        except Exception as exc:
            self._error(str(exc))

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(parts)
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return _decompress(data, self.headers.get("Content-Encoding", "").lower())

    def _insert_or_query(self, params: dict[str, str], body: bytes) -> None:
        """A body that is the whole statement; for an INSERT the data follows its first line."""
        head, sep, rest = body.partition(b"\n")
        text = head.decode("utf-8", "surrogateescape")
        if _INSERT.match(text) and sep and _FORMAT.search(text):  # INSERT ... SELECT may span lines
            self._run(params, text, rest)
        else:
            self._run(params, body.decode("utf-8", "surrogateescape"), b"")

    def _run(self, params: dict[str, str], sql: str, data: bytes) -> None:
        settings = {
            k: v
            for k, v in params.items()
            if k not in _NOT_SETTINGS and not k.startswith("param_") and re.fullmatch(r"\w+", k)
        }
        handle = self.server.engine.handle(params.get("database", ""), settings)
        if _INSERT.match(sql):
            self._insert(handle, sql, data, params)
        elif _RESULT.match(sql):
            self._select(handle, sql, params)
        else:
            handle.query(sql.strip().rstrip(";"), "TabSeparated", params=_binds(params))
            self._send(200, b"", {})

    def _insert(self, handle: Handle, sql: str, data: bytes, params: dict[str, str]) -> None:
        match = _FORMAT.search(sql)
        if match is None:  # INSERT ... VALUES / SELECT: the statement is complete (with its binds)
            handle.query(sql, "TabSeparated", params=_binds(params))
            self._send(200, b"", {})
            return
        path = self.server.engine.temp_file()
        with open(path, "wb") as f:
            f.write(data)
        try:
            statement = f"{sql[: match.start()]} FROM INFILE '{path}' FORMAT {match.group(1)}"
            handle.query(statement, "TabSeparated")
        finally:
            os.unlink(path)
        self._send(200, b"", {})

    def _select(self, handle: Handle, sql: str, params: dict[str, str]) -> None:
        sql = sql.strip().rstrip(";")
        match = _FORMAT.search(sql)
        fmt = match.group(1) if match else params.get("default_format", "TabSeparated")
        bare = sql[: match.start()].rstrip() if match else sql
        result = handle.query(bare, fmt, params=_binds(params))
        out = result.bytes()
        if not out and fmt == "Native":
            out = _header_block(handle, bare, params)
        self._send(200, out, {"X-ClickHouse-Format": fmt})

    def _error(self, text: str) -> None:
        text = text.removeprefix("RuntimeError: ")
        match = _CODE.search(text)
        code = match.group(1) if match else "1001"
        if not match:
            text = f"Code: {code}. DB::Exception: {text}"
        self._send(500, text.encode(), {"X-ClickHouse-Exception-Code": code})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("X-ClickHouse-Timezone", "UTC")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _binds(params: dict[str, str]) -> dict[str, str] | None:
    binds = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
    return binds or None


def _literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _varuint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return _varuint(len(raw)) + raw


def _header_block(handle: Handle, sql: str, params: dict[str, str]) -> bytes:
    """A Native block with the result's columns and no rows (what ClickHouse sends)."""
    described = handle.query(f"DESCRIBE ({sql})", "TabSeparated", params=_binds(params)).bytes().decode()
    columns = [line.split("\t")[:2] for line in described.splitlines() if line]
    return _varuint(len(columns)) + _varuint(0) + b"".join(_string(n) + _string(t) for n, t in columns)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        super().__init__(address, Handler)
        self.engine = engine


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a ``multipart/form-data`` body, by name."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", "surrogateescape")
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args(argv)
    server = Server((args.host, args.port), Engine(args.path))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave serve_forever, close the engine
    print(f"listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
