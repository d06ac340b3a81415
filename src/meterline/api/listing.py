"""OpenMeter's list parameters over a list of JSON items: ``orderBy``/``order``, and pages.

``page``/``pageSize`` answer a page ``{totalCount, page, pageSize, items}``; ``offset``/``limit``
slice. v2 lists always answer a page; v1 lists (features, grants, entitlements) answer a bare
array unless ``page`` or ``pageSize`` is given, as OpenMeter does, of at most ``limit`` items
(default 100, as there).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from meterline.api.http import json_response, parse_int
from meterline.domain.errors import InvalidInput

Item = dict[str, Any]
ENTITLEMENT_ORDER = (("createdAt", "updatedAt"), "createdAt")
"""OpenMeter's ``orderBy`` values for entitlements, and its default."""
GRANT_ORDER = (("id", "createdAt", "updatedAt"), "effectiveAt")
"""OpenMeter's ``orderBy`` values for grants; without one it orders by ``effectiveAt``."""
FEATURE_ORDER = (("id", "key", "name", "createdAt", "updatedAt"), "key")


def ordered(request: Request, items: Sequence[Item], fields: Sequence[str], default: str | None = None) -> list[Item]:
    """``items`` sorted by the member ``orderBy`` names (one of ``fields``; ``default`` when not
    given, the given order when that is None too), ``order`` ``ASC`` (default) or ``DESC``.
    Times (members ending in ``At``) compare as instants, not as text."""
    q = request.query_params
    given, order = q.get("orderBy"), (q.get("order") or "ASC").upper()
    if given is not None and given not in fields:
        raise InvalidInput(f"orderBy must be one of {', '.join(fields)}", code="invalid_query")
    if order not in ("ASC", "DESC"):
        raise InvalidInput("order must be ASC or DESC", code="invalid_query")
    out, field = list(items), given or default
    if field is not None:
        out.sort(key=lambda item: _sort_key(field, item.get(field)))
    if order == "DESC":
        out.reverse()
    return out


def _sort_key(field: str, value: Any) -> tuple[bool, Any]:
    if value is None:  # missing values sort first
        return (False, "")
    if field.endswith("At") and isinstance(value, str):
        return (True, datetime.fromisoformat(value))
    return (True, value.lower() if isinstance(value, str) and field == "name" else value)


def page(q: QueryParams, items: Sequence[Item]) -> tuple[list[Item], dict[str, int]]:
    """One page of ``items`` (``page``/``pageSize``, or ``offset``/``limit``) and its counts."""
    number = parse_int("page", q.get("page"), 1, 1, 2**31)
    size = parse_int("pageSize", q.get("pageSize"), 100, 1, 1000)
    limit = parse_int("limit", _one(q, "limit"), 100, 1, 1000)  # checked whenever given
    first = parse_int("offset", _one(q, "offset"), 0, 0, 2**31)
    if ("limit" in q or "offset" in q) and not ("page" in q or "pageSize" in q):
        size, number = limit, first // limit + 1
    else:
        first = (number - 1) * size
    return list(items[first : first + size]), {"totalCount": len(items), "page": number, "pageSize": size}


def _one(q: QueryParams, name: str) -> str | None:
    """A parameter that may be given once (a repeated one is refused)."""
    values = q.getlist(name)
    if len(values) > 1:
        raise InvalidInput(f"`{name}` may be given once", code="invalid_parameter")
    return values[0] if values else None


def paged(request: Request, items: Sequence[Item], fields: Sequence[str] = (), default: str | None = None) -> Response:
    """A v2 list: always a page, ordered as :func:`ordered` says."""
    chosen, counts = page(request.query_params, ordered(request, items, fields, default))
    return json_response(counts | {"items": chosen})


LIST_CAP = 1000
"""The most items OpenMeter answers on a list it does not page (meters, an entitlement's grants)."""
V1_LIMIT = 100
"""OpenMeter's ``limit`` when a v1 list (features, entitlements, grants) is asked for without
``page``/``pageSize``/``limit``: the first 100 items."""


def listed(
    request: Request,
    items: Sequence[Item],
    fields: Sequence[str] = (),
    default: str | None = None,
    *,
    limit: int = V1_LIMIT,
) -> Response:
    """A v1 list: a page when ``page`` or ``pageSize`` is given, else an array cut by
    ``offset``/``limit`` (``limit`` default: ``limit``, as OpenMeter's handler sets it)."""
    q, items = request.query_params, ordered(request, items, fields, default)
    if "page" in q or "pageSize" in q:
        chosen, counts = page(q, items)
        return json_response(counts | {"items": chosen})
    first = parse_int("offset", _one(q, "offset"), 0, 0, 2**31)
    last = first + parse_int("limit", _one(q, "limit"), limit, 1, 1000)
    return json_response(list(items[first:last]))
