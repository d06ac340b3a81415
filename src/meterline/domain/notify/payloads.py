"""Alert bodies for receivers other than a program reading the alert JSON.

:func:`slack` turns an alert (``{"id", "type", "timestamp", "data": {...}}``) into a Slack
incoming-webhook message. Every key is optional: a missing piece is left out of the sentence
rather than failing the delivery.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

_TITLES = {
    "threshold": "Usage threshold reached",
    "projected": "Usage projected to reach its limit",
    "spike": "Usage spike",
    "drop": "Usage drop",
}


def slack(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack message (``{"text", "blocks"}``) describing the alert for a human."""
    data = _dict(payload.get("data"))
    title = _TITLES.get(str(data.get("kind", "")), "Usage alert")
    sentence = summary(data)
    context = " · ".join(x for x in (_threshold(data), _access(data), _ids(payload)) if x)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(sentence)}},
    ]
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(context)}]})
    return {"text": _escape(f"{title}: {sentence}"), "blocks": blocks}


def summary(data: dict[str, Any]) -> str:
    """One line, e.g. ``acme used 80% of api_calls (800 of 1000) — period 2026-03-01 → 2026-04-01``."""
    who = _key(data, "customer") or _key(data, "subject") or "a customer"
    feature = _key(data, "feature") or "a feature"
    value = _dict(data.get("value"))
    usage, limit = _number(value.get("usage")), _limit(value)
    if usage is not None and limit:
        line = f"{who} used {_fmt(usage * 100 / limit, 1)}% of {feature} ({_fmt(usage)} of {_fmt(limit)})"
    elif usage is not None:
        line = f"{who} used {_fmt(usage)} of {feature}"
    else:
        line = f"{who}: alert on {feature}"
    period = _period(data)
    return f"{line} — period {period}" if period else line


def _limit(value: dict[str, Any]) -> Decimal | None:
    """What the customer could use this period: usage + balance - overage (OpenMeter's value fields)."""
    usage, balance = _number(value.get("usage")), _number(value.get("balance"))
    if usage is None or balance is None:
        return None
    return usage + balance - (_number(value.get("overage")) or Decimal(0))


def _threshold(data: dict[str, Any]) -> str:
    threshold = _dict(data.get("threshold"))
    number = _number(threshold.get("value"))
    if number is None:
        return ""
    return f"threshold {_fmt(number)}{'%' if threshold.get('type') == 'PERCENT' else ''}"


def _access(data: dict[str, Any]) -> str:
    has_access = _dict(data.get("value")).get("hasAccess")
    return "" if not isinstance(has_access, bool) else ("has access" if has_access else "access denied")


def _ids(payload: dict[str, Any]) -> str:
    return " ".join(str(payload[k]) for k in ("timestamp", "id") if payload.get(k))


def _period(data: dict[str, Any]) -> str:
    period = _dict(_dict(data.get("entitlement")).get("currentUsagePeriod"))
    start, end = period.get("from"), period.get("to")
    return f"{_date(start)} → {_date(end)}" if start and end else ""


def _date(value: object) -> str:
    """The date alone when the instant is a midnight (the usual period boundary), else date and time."""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return t.date().isoformat() if (t.hour, t.minute, t.second) == (0, 0, 0) else t.strftime("%Y-%m-%d %H:%M")


def _key(data: dict[str, Any], name: str) -> str:
    item = data.get(name)
    if isinstance(item, dict):
        return str(item.get("key") or item.get("name") or item.get("id") or "")
    return str(item) if isinstance(item, str) else ""


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _fmt(number: Decimal, places: int = 2) -> str:
    """At most ``places`` decimals, no trailing zeros, no exponent: ``800``, ``12.5``, ``33.3``."""
    try:
        text = f"{round(number, places):f}"
    except InvalidOperation:  # more digits than the decimal context holds
        return str(number)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _escape(text: str) -> str:
    """Slack mrkdwn treats ``&``, ``<`` and ``>`` as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
