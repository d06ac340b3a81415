"""Column values as ``verify`` reads them: a hand edit may have changed a column's type, and
such a value must fail to match, not raise."""

from __future__ import annotations


def as_int(value: object) -> int:
    """An INTEGER column as int; a hand edit that made it something else cannot match: -1."""
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return -1


def as_blob(value: object) -> bytes:
    """A BLOB column as bytes, also after a hand edit changed its type."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()
