"""The MeterCatalog contract (definitions only)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from meterline.domain.errors import Conflict, NotFound
from meterline.domain.meters.model import Aggregation, MeterSpec

NS = "default"


def _spec(slug: str) -> MeterSpec:
    return MeterSpec(slug, "api", Aggregation.SUM, value_property="$.n", group_by={"region": "$.region"})


def test_create_get_list_delete(meters: Any) -> None:
    a = meters.create(NS, _spec("calls"))
    b = meters.create(NS, _spec("tokens"))
    meters.create("other", _spec("calls"))
    assert meters.get(NS, "calls") == a == meters.get(NS, a.id)
    assert a.spec == _spec("calls") and a.namespace == NS
    assert [m.slug for m in meters.list(NS)] == ["calls", "tokens"]
    meters.delete(NS, a.id)
    assert [m.id for m in meters.list(NS)] == [b.id]
    with pytest.raises(NotFound) as err:
        meters.get(NS, "calls")
    assert err.value.code == "meter_not_found"
    with pytest.raises(NotFound):
        meters.delete(NS, "calls")
    assert meters.create(NS, _spec("calls")).id != a.id  # the slug is free again


def test_slugs_are_unique_among_live_meters(meters: Any) -> None:
    meters.create(NS, _spec("calls"))
    with pytest.raises(Conflict) as err:
        meters.create(NS, _spec("calls"))
    assert err.value.code == "meter_exists"


def test_update_replaces_the_definition_and_keeps_identity(meters: Any, stores: Any) -> None:
    created = meters.create(NS, _spec("calls"))
    stores.clock.advance(10)
    spec = msgspec.structs.replace(_spec("calls"), name="Calls", description="API calls", metadata={"team": "a"})
    updated = meters.update(NS, "calls", spec)
    assert (updated.key, updated.id, updated.created_us) == (created.key, created.id, created.created_us)
    assert updated.updated_us == created.updated_us + 10_000_000 == created.created_us + 10_000_000
    assert meters.get(NS, created.id) == updated == meters.list(NS)[0]
    with pytest.raises(NotFound):
        meters.update(NS, "ghost", spec)
    meters.delete(NS, "calls")
    with pytest.raises(NotFound):
        meters.update(NS, created.id, spec)
