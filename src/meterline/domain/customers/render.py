"""The wire shape of customers, and of OpenMeter subjects (a customer seen as a subject)."""

from __future__ import annotations

from typing import Any

from meterline.domain.clock import rfc3339
from meterline.domain.customers.model import Customer


def customer_body(c: Customer) -> dict[str, Any]:
    """meterline's members and OpenMeter's (``usageAttribution`` and the profile's members
    that were set), so an OpenMeter client reads the customer it wrote. ``metadata`` is left
    out when it is unset or empty, as OpenMeter leaves it out (never ``null``)."""
    body: dict[str, Any] = {
        "id": c.id,
        "key": c.key,
        "name": c.name,
        "subjectKeys": list(c.subjects),
        "usageAttribution": {"subjectKeys": list(c.subjects)},
        "timezone": c.timezone,
        "createdAt": rfc3339(c.created_us),
        "updatedAt": rfc3339(c.updated_us),
    }
    if c.metadata:
        body["metadata"] = c.metadata
    if c.deleted_us is not None:
        body["deletedAt"] = rfc3339(c.deleted_us)
    return body | (c.profile or {})


def subject_body(c: Customer) -> dict[str, Any]:
    """OpenMeter's subject: ``displayName`` and ``metadata`` are left out when not set (its
    mapping sends no metadata for none, an empty one as ``{}``), never ``null``."""
    body: dict[str, Any] = {"id": c.id, "key": c.key}
    if c.name is not None:
        body["displayName"] = c.name
    if c.metadata is not None:
        body["metadata"] = c.metadata
    return body | {"createdAt": rfc3339(c.created_us), "updatedAt": rfc3339(c.updated_us)}
