"""Identifiers and names that callers choose: the characters and lengths each kind may have.

Every rule is checked against the whole text. A pattern anchored with ``^...$`` and applied with
``re.match`` also accepts the text followed by a newline (``"api_calls\\n"``), and such a key is
stored, shown and never matched again; so rules here are applied with ``fullmatch`` only.

- slug (meter slugs, feature keys, plan, rate-card and credit-grant keys): 1-64 lower-case
  letters and digits in words joined by single ``_`` (OpenMeter's pattern and length);
- group-by key (a meter's ``groupBy`` dimensions): 1-64 letters, digits and ``_``, not starting
  with a digit;
- key (customer keys, subjects upserted through ``/subjects``): 1-256 letters, digits and
  ``_ . : @ / -``, starting with a letter or digit;
- subject (a customer's ``subjectKeys``): 1-256 characters, no control characters;
- namespace: 1-63 lower-case letters, digits, ``_`` and ``-``, starting with a letter or digit;
- name (display names of meters, features, channels, rules, plans and rate cards): 1-256
  characters, no control characters (C0, DEL, C1: line breaks included), not only spaces.
"""

from __future__ import annotations

import re

MAX_SLUG = 64
MAX_GROUP_KEY = 64
MAX_KEY = 256
MAX_NAMESPACE = 63
MAX_NAME = 256

_SLUG = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_GROUP_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]*")
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_-]*")
# Spelt with explicit classes (no \s), so that JSON Schema's regex dialect reads it the same way
# (the OpenAPI document carries it as ``pattern``): no C0/C1 control characters, and at least one
# character that is neither a control character nor a space of any kind.
NAME_PATTERN = (
    r"[^\x00-\x1f\x7f-\x9f]*"
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
    r"[^\x00-\x1f\x7f-\x9f]*"
)
_NAME = re.compile(NAME_PATTERN)
SUBJECT_PATTERN = r"[^\x00-\x1f\x7f-\x9f]+"
_SUBJECT = re.compile(SUBJECT_PATTERN)

SLUG_RULE = f"1-{MAX_SLUG} lower-case letters and digits in words joined by single '_' (e.g. api_calls)"
GROUP_KEY_RULE = f"1-{MAX_GROUP_KEY} letters, digits and '_', not starting with a digit"
KEY_RULE = f"1-{MAX_KEY} characters: letters, digits and _ . : @ / -, starting with a letter or digit"
NAMESPACE_RULE = f"1-{MAX_NAMESPACE} lower-case letters, digits, '_' and '-', starting with a letter or digit"
NAME_RULE = f"1-{MAX_NAME} characters, no control characters, not only spaces"


def is_slug(text: str) -> bool:
    """Whether ``text`` is a slug: meter slugs, feature keys, plan keys (see the module doc)."""
    return len(text) <= MAX_SLUG and _SLUG.fullmatch(text) is not None


def is_group_key(text: str) -> bool:
    """Whether ``text`` may name a meter's ``groupBy`` dimension."""
    return len(text) <= MAX_GROUP_KEY and _GROUP_KEY.fullmatch(text) is not None


def is_key(text: str) -> bool:
    """Whether ``text`` may be a customer or subject key."""
    return len(text) <= MAX_KEY and _KEY.fullmatch(text) is not None


def is_subject(text: str) -> bool:
    """Whether ``text`` may be a subject key a customer claims: 1-256 characters, none a control
    character (an event's subject is free text, so more than a customer key allows)."""
    return len(text) <= MAX_KEY and _SUBJECT.fullmatch(text) is not None


def is_namespace(text: str) -> bool:
    """Whether ``text`` may name a namespace."""
    return len(text) <= MAX_NAMESPACE and _NAMESPACE.fullmatch(text) is not None


def name_problem(member: str, text: str) -> str | None:
    """Why ``text`` cannot be the display name ``member``, or None when it can."""
    if len(text) > MAX_NAME or not _NAME.fullmatch(text):
        return f"{member} must be {NAME_RULE}"
    return None


def shown(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut at ``limit`` characters (the caller sent it)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
