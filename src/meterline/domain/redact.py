"""Credentials never leave through an error message or a log line: :func:`redact` masks them.

Masked wherever they appear in a text: API keys (``ml_<id>_<secret>``: the secret part, the public
id stays so an operator can tell which key was meant), webhook signing secrets (``whsec_...``)
and portal tokens or any other JWT (``eyJ...``). Problem bodies (``meterline.api.problems``) and
every log record (``meterline.cli.logs``) pass through it, so a secret pasted into a URL path, a
query parameter or an id field is not echoed back, whatever message interpolates it.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "[redacted]"

_SECRETS = re.compile(
    r"(?P<key>\bml_[0-9a-f]{4,32}_)[A-Za-z0-9_-]{6,}"  # an API key: keep "ml_<id>_"
    r"|\bwhsec_[A-Za-z0-9+/=_-]{4,}"  # a Standard Webhooks signing secret
    r"|\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?"  # a JWT (portal token)
)


def _mask(match: re.Match[str]) -> str:
    return (match.group("key") or "") + MASK


def redact(text: str) -> str:
    """``text`` with every recognisable credential replaced by ``[redacted]``."""
    if "ml_" not in text and "whsec_" not in text and "eyJ" not in text:
        return text  # the common case costs three substring checks
    return _SECRETS.sub(_mask, text)


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside ``value`` (lists, tuples and dict values)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
