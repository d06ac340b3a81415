"""Erasure of a subject (``/api/v1/erasures``): GDPR's right to erasure, and its audit list.

Both need an ``admin`` key; the key's id is recorded as who erased. The answer and the list
never name the subject: an audit record keeps its pseudonym (``docs/erasure.md``).
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from meterline.api.endpoint import Call, endpoint
from meterline.api.http import json_response, typed_body
from meterline.domain.auth.keys import Scope
from meterline.domain.clock import rfc3339
from meterline.domain.erasure import ErasureRecord


class ErasureIn(msgspec.Struct, forbid_unknown_fields=True):
    subject: str
    reason: str


@endpoint(Scope.ADMIN)
async def erase(call: Call) -> Response:
    """``POST /api/v1/erasures``: erase a subject; 201 with the audit record."""
    body = await typed_body(call.request, ErasureIn, "erasure")
    service = call.ctx.catalog.erasures
    record = await call.run(service.erase, call.namespace, body.subject, reason=body.reason, actor=call.key.id)
    return json_response(record_json(record), 201)


@endpoint(Scope.ADMIN)
async def list_erasures(call: Call) -> Response:
    """``GET /api/v1/erasures``: the namespace's audit records, newest first."""
    records = await call.run(call.ctx.catalog.erasures.erasures, call.namespace)
    return json_response({"items": [record_json(r) for r in records]})


def record_json(r: ErasureRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "id": r.id,
        "erasedAt": rfc3339(r.erased_us),
        "actor": r.actor,
        "reason": r.reason,
        "pseudonym": r.pseudonym,
        "throughPosition": r.through_seq,
        "counts": r.counts,
    }
    if r.through_log is not None:  # scale mode: a position per log partition
        out["throughLogPositions"] = {str(p): o for p, o in sorted(r.through_log.items())}
        purged = r.log_purged_by_us()  # the topic keeps the original records until then
        out["logPurgedBy"] = rfc3339(purged) if purged is not None else ("never" if r.log_kept_ms == -1 else None)
        if r.redis_files is not None:
            out["redisFiles"] = r.redis_files
        if r.postgres_files is not None:
            out["postgresFiles"] = r.postgres_files
    return out
