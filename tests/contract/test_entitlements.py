"""The FeatureRepository, EntitlementRepository and GrantRepository contracts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from meterline.domain.customers.model import CustomerInput
from meterline.domain.entitlements.model import (
    Entitlement,
    EntitlementInput,
    Feature,
    FeatureInput,
    Grant,
    GrantInput,
)
from meterline.domain.errors import Conflict, NotFound

NS = "default"
T = 1_772_366_400_000_000


def _feature(key: str, at: int = T, namespace: str = NS) -> Feature:
    return Feature(f"f-{namespace}-{key}-{at}", namespace, FeatureInput(key, key.title()), at)


def _ent(customer: Any, feature: Feature, at: int = T, id_: str | None = None) -> Entitlement:
    spec = EntitlementInput("boolean", feature_key=feature.key)
    return Entitlement(
        id_ or f"e-{feature.key}-{at}", NS, customer.id, customer.key, feature.id, feature.key, spec, at, at, at
    )


def _grant(ent_id: str, n: int) -> Grant:
    spec = GrantInput(Decimal("12.5"), datetime(2026, 3, 1, tzinfo=UTC), {"duration": "DAY", "count": 1})
    return Grant(f"g-{n}", ent_id, spec, T, T + 86_400_000_000, T + n)


def test_feature_keys_are_unique_among_live_features(features: Any) -> None:
    first = features.add(_feature("sso"))
    assert features.get(NS, "sso") == first == features.get(NS, first.id)
    with pytest.raises(Conflict) as err:
        features.add(_feature("sso", T + 1))
    assert err.value.code == "feature_exists"
    features.add(_feature("sso", T, "other"))  # another namespace
    features.archive(NS, first.id, T + 5)
    with pytest.raises(NotFound) as missing:
        features.get(NS, "sso")  # an archived feature is no longer found by key ...
    assert missing.value.code == "feature_not_found"
    assert features.get(NS, first.id).archived_us == T + 5  # ... but still by id
    second = features.add(_feature("sso", T + 9))
    assert features.get(NS, "sso") == second


def test_features_list_oldest_first_with_or_without_archived(features: Any) -> None:
    b, a = features.add(_feature("b", T + 2)), features.add(_feature("a", T + 1))
    features.archive(NS, b.id, T + 3)
    assert [f.key for f in features.list(NS)] == ["a"]
    assert [f.key for f in features.list(NS, include_archived=True)] == ["a", "b"]
    assert features.list(NS, include_archived=True)[1].spec == b.spec
    assert a.spec.name == "A"


def test_one_live_entitlement_per_customer_and_feature(customers: Any, features: Any, entitlements: Any) -> None:
    acme = customers.create(NS, CustomerInput("acme")).customer
    sso = features.add(_feature("sso"))
    ent = entitlements.add(_ent(acme, sso))
    assert entitlements.get(NS, ent.id) == ent
    with pytest.raises(Conflict) as err:
        entitlements.add(_ent(acme, sso, T + 1))
    assert err.value.code == "entitlement_exists"
    assert [e.id for e in entitlements.list(NS)] == [ent.id]


def test_replace_deletes_the_live_one_in_the_same_write(customers: Any, features: Any, entitlements: Any) -> None:
    acme = customers.create(NS, CustomerInput("acme")).customer
    sso = features.add(_feature("sso"))
    old = entitlements.add(_ent(acme, sso))
    new = entitlements.add(_ent(acme, sso, T + 60), replace=True)
    assert [e.id for e in entitlements.list(NS, customer_id=acme.id)] == [new.id]
    assert entitlements.get(NS, old.id).deleted_us == T + 60
    every = entitlements.list(NS, customer_id=acme.id, include_deleted=True)
    assert [(e.id, e.deleted_us) for e in every] == [(old.id, T + 60), (new.id, None)]


def test_entitlements_by_customer_update_and_delete(customers: Any, features: Any, entitlements: Any) -> None:
    acme, globex = (customers.create(NS, CustomerInput(k)).customer for k in ("acme", "globex"))
    sso, api = features.add(_feature("sso")), features.add(_feature("api", T + 1))
    e1, e2 = entitlements.add(_ent(acme, sso)), entitlements.add(_ent(globex, api, T + 1))
    assert [e.id for e in entitlements.list(NS, customer_id=globex.id)] == [e2.id]
    moved = msgspec.structs.replace(e1, anchor_us=T + 600, last_reset_us=T + 600)
    entitlements.update(moved)
    assert entitlements.get(NS, e1.id) == moved
    entitlements.delete(NS, e1.id, T + 700)
    assert entitlements.get(NS, e1.id).deleted_us == T + 700
    assert [e.id for e in entitlements.list(NS)] == [e2.id]
    with pytest.raises(NotFound) as err:
        entitlements.get("other", e2.id)
    assert err.value.code == "entitlement_not_found"


def test_grants_list_void_once(grants: Any) -> None:
    g1, g2, g3 = grants.add(NS, _grant("e1", 1)), grants.add(NS, _grant("e1", 2)), grants.add(NS, _grant("e2", 3))
    assert grants.list(NS) == [g1, g2, g3]
    assert grants.list(NS, "e1") == [g1, g2]
    assert grants.list("other") == []
    grants.void(NS, g1.id, T + 50)
    assert grants.list(NS, "e1") == [g2]
    assert [g.voided_us for g in grants.list(NS, "e1", include_voided=True)] == [T + 50, None]
    with pytest.raises(Conflict) as voided:
        grants.void(NS, g1.id, T + 60)
    assert voided.value.code == "grant_voided"
    for namespace, grant_id in ((NS, "g-404"), ("other", g2.id)):
        with pytest.raises(NotFound) as missing:
            grants.void(namespace, grant_id, T)
        assert missing.value.code == "grant_not_found"
