"""Opening a ClickHouse client and translating its errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from meterline.domain.errors import StorageUnavailable
from meterline.runtime.extras import import_extra

SETTINGS = {"async_insert": 0, "insert_deduplicate": 1}
"""Every insert is synchronous (acknowledged once written) and deduplicated by its token."""


class Connection:
    """One ``clickhouse_connect`` client (thread-safe for sequential use; each call is one HTTP
    request) with the database every statement runs in."""

    def __init__(self, url: str, database: str, *, user: str = "default", password: str = "") -> None:
        cc = import_extra("clickhouse_connect", "scale")
        parts = urlsplit(url)
        self.database = database
        with translated("connect"):
            self._client: Any = cc.get_client(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                secure=parts.scheme == "https",
                username=user,
                password=password,
                settings=dict(SETTINGS),
                autogenerate_session_id=False,
            )
            self._client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            self._client.database = database

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with translated("command"):
            self._client.command(sql, parameters=params)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with translated("query"):
            result: list[tuple[Any, ...]] = self._client.query(sql, parameters=params).result_rows
            return result

    def insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], token: str) -> None:
        """Insert ``rows`` (``columns``: name and ClickHouse type) under a deduplication token:
        inserting the same token again (within the table's window) writes nothing. Never insert
        into these tables without one: a table with a deduplication window also drops an
        untokened block whose content equals a recent one."""
        if not rows:
            return
        with translated("insert"):
            self._client.insert(
                table,
                rows,
                column_names=[name for name, _ in columns],
                column_type_names=[kind for _, kind in columns],  # spares a DESCRIBE per insert
                settings={"insert_deduplication_token": token},
            )

    def close(self) -> None:
        self._client.close()


@contextmanager
def translated(what: str) -> Iterator[None]:
    """ClickHouse and transport errors become ``StorageUnavailable`` at this edge."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as exc:
        if isinstance(exc, (TypeError, AttributeError, KeyError)):
            raise
        raise StorageUnavailable(f"ClickHouse {what} failed: {type(exc).__name__}") from exc
