"""Single sign-on: which namespace and scopes a signed-in identity gets from its ID token claims.

Rules are tried in order; the first that matches decides. A rule matches when all of its
conditions hold:

- ``email_domains``: the ``email`` claim is at one of these domains (case-insensitive) **and**
  ``email_verified`` is true (an unverified address proves nothing);
- ``claims``: for each name, the claim equals the value, or is a list holding it (``groups``,
  ``roles``).

A rule without conditions matches every identity the issuer signs in. No matching rule: no
access (the sign-in is refused; no session is made). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meterline.domain.auth.keys import Scope

KEPT = ("sub", "email", "email_verified", "name")
"""Claims kept in a session besides those the rules name: who it is, and the email rules."""


@dataclass(frozen=True, slots=True)
class SsoRule:
    namespace: str
    scopes: frozenset[Scope]
    email_domains: tuple[str, ...] = ()
    claims: Mapping[str, str] = field(default_factory=dict)

    def matches(self, claims: Mapping[str, Any]) -> bool:
        if self.email_domains:
            email = claims.get("email")
            if not isinstance(email, str) or claims.get("email_verified") is not True or "@" not in email:
                return False
            if email.rsplit("@", 1)[1].lower() not in {d.lower() for d in self.email_domains}:
                return False
        for name, wanted in self.claims.items():
            value = claims.get(name)
            if not (value == wanted or (isinstance(value, list) and wanted in value)):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Grant:
    """What a signed-in identity may do: one namespace, its scopes, and who it is."""

    namespace: str
    scopes: frozenset[Scope]
    subject: str
    label: str
    """The email, or the name, or the subject: shown in the page header."""


def grant(rules: Sequence[SsoRule], claims: Mapping[str, Any]) -> Grant | None:
    """The grant of the first rule matching ``claims``, or None (no access)."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        return None
    for rule in rules:
        if rule.matches(claims):
            label = next((v for v in (claims.get("email"), claims.get("name")) if isinstance(v, str) and v), subject)
            return Grant(rule.namespace, rule.scopes, subject, label)
    return None


def kept_claims(rules: Sequence[SsoRule], claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims a session keeps so that every request can apply the rules again (a rule
    changed or removed takes effect at once): who it is and what the rules read."""
    names = set(KEPT).union(*(rule.claims.keys() for rule in rules))
    return {name: claims[name] for name in sorted(names) if name in claims}
