"""The entitlement and feature services on the in-memory adapters: what they refuse before
anything is written, and what they store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterline.adapters.memory.customers import MemoryCustomers
from meterline.adapters.memory.entitlements import MemoryEntitlements, MemoryFeatures, MemoryGrants
from meterline.adapters.memory.meters import MemoryMeters
from meterline.domain.clock import FixedClock, to_us
from meterline.domain.customers.model import CustomerInput
from meterline.domain.entitlements.model import EntitlementInput, FeatureInput, GrantInput, UsagePeriodInput
from meterline.domain.entitlements.rules import default_grant
from meterline.domain.errors import Conflict, InvalidInput, NotFound
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.services.entitlements import EntitlementService
from meterline.services.features import FeatureService

NS = "ns"
T0 = to_us(datetime(2026, 3, 18, 9, 30, tzinfo=UTC))


@dataclass
class World:
    clock: FixedClock
    features: MemoryFeatures
    entitlements: MemoryEntitlements
    grants: MemoryGrants
    ents: EntitlementService
    feats: FeatureService


@pytest.fixture
def w() -> World:
    clock = FixedClock(T0)
    customers, meters = MemoryCustomers(clock.now_us), MemoryMeters(clock.now_us)
    features, entitlements, grants = MemoryFeatures(), MemoryEntitlements(), MemoryGrants()
    ents = EntitlementService(entitlements, features, customers, meters, clock)
    customers.create(NS, CustomerInput("acme", subject_keys=["acme-svc"], timezone="Asia/Kolkata"))
    meters.create(NS, MeterSpec("calls", "api", Aggregation.SUM, value_property="$.n", group_by={"tier": "$.tier"}))
    meters.create(NS, MeterSpec("peak", "api", Aggregation.MAX, value_property="$.n"))
    return World(clock, features, entitlements, grants, ents, FeatureService(features, grants, meters, ents, clock))


def metered(feature: str, interval: str = "MONTH") -> EntitlementInput:
    return EntitlementInput(
        "metered", feature_key=feature, usage_period=UsagePeriodInput(interval), issue_after_reset=Decimal(100)
    )


def test_a_feature_must_filter_on_its_meters_dimensions(w: World) -> None:
    with pytest.raises(InvalidInput) as err:
        w.feats.create(NS, FeatureInput("api", "API", meter_slug="calls", meter_group_by_filters={"region": "eu"}))
    assert err.value.code == "invalid_feature"
    with pytest.raises(NotFound):
        w.feats.create(NS, FeatureInput("api", "API", meter_slug="nope"))
    assert w.features.list(NS) == []
    made = w.feats.create(NS, FeatureInput("api", "API", meter_slug="calls", meter_group_by_filters={"tier": "pro"}))
    assert made.created_us == T0 and [f.id for f in w.feats.list(NS, meters=["calls"])] == [made.id]
    assert w.feats.list(NS, meters=["peak"]) == []


def test_a_metered_entitlement_is_anchored_in_the_customers_zone(w: World) -> None:
    w.feats.create(NS, FeatureInput("api", "API", meter_slug="calls"))
    acme = w.ents.create(NS, "acme", metered("api")).customer_id
    ent = w.ents.get(NS, w.ents.of_customer(NS, acme)[0].id)  # a customer is named by key or id
    assert ent.customer_key == "acme"
    assert ent.anchor_us == to_us(datetime(2026, 2, 28, 18, 30, tzinfo=UTC))  # 1 March, 00:00 in Kolkata
    assert w.entitlements.get(NS, ent.id) == ent


def test_a_metered_entitlement_needs_a_sum_or_count_meter(w: World) -> None:
    w.feats.create(NS, FeatureInput("sso", "SSO"))
    w.feats.create(NS, FeatureInput("peak", "Peak", meter_slug="peak"))
    for feature in ("sso", "peak"):
        with pytest.raises(InvalidInput) as err:
            w.ents.create(NS, "acme", metered(feature))
        assert err.value.code == "invalid_entitlement"
    assert w.entitlements.list(NS) == []


def test_feature_key_and_id_must_agree(w: World) -> None:
    sso = w.feats.create(NS, FeatureInput("sso", "SSO"))
    w.feats.create(NS, FeatureInput("api", "API", meter_slug="calls"))
    with pytest.raises(InvalidInput):
        w.ents.create(NS, "acme", EntitlementInput("boolean", feature_key="api", feature_id=sso.id))


def test_override_replaces_and_find_delete_reset_work_by_feature(w: World) -> None:
    w.feats.create(NS, FeatureInput("api", "API", meter_slug="calls"))
    first = w.ents.create(NS, "acme", metered("api"))
    second = w.ents.create(NS, "acme", metered("api", "DAY"), replace=True)
    assert [e.id for e in w.ents.of_customer(NS, "acme")] == [second.id]
    assert w.ents.find(NS, "acme", "api") == second
    w.clock.advance(3600)
    w.ents.reset(NS, "acme", "api", None, False)
    assert w.ents.get(NS, second.id).last_reset_us == T0 + 3_600_000_000
    w.ents.delete(NS, "acme", second.id)
    with pytest.raises(NotFound):
        w.ents.find(NS, "acme", "api")
    assert {e.id for e in w.ents.of_customer(NS, "acme", include_deleted=True)} == {first.id, second.id}


def test_list_filters_by_feature_and_customer(w: World) -> None:
    sso = w.feats.create(NS, FeatureInput("sso", "SSO"))
    ent = w.ents.create(NS, "acme", EntitlementInput("boolean", feature_key="sso"))
    assert w.ents.list(NS, features=[sso.id]) == [ent] == w.ents.list(NS, customers=["acme"])
    assert w.ents.list(NS, features=["api"]) == [] == w.ents.list(NS, customers=["globex"])


def test_grants_go_to_metered_entitlements_and_void_once(w: World) -> None:
    w.feats.create(NS, FeatureInput("api", "API", meter_slug="calls"))
    w.feats.create(NS, FeatureInput("sso", "SSO"))
    ent = w.ents.create(NS, "acme", metered("api"))
    w.ents.create(NS, "acme", EntitlementInput("boolean", feature_key="sso"))
    # effective at the start of the entitlement's current usage period (not before it: refused)
    inp = GrantInput(Decimal(50), datetime(2026, 3, 18, 9, 30, tzinfo=UTC), {"duration": "WEEK", "count": 2})
    with pytest.raises(InvalidInput) as err:
        w.feats.grant(NS, "acme", "sso", inp)
    assert err.value.code == "invalid_grant"
    grant = w.feats.grant(NS, "acme", "api", inp)
    assert (grant.entitlement_id, grant.expires_us) == (ent.id, to_us(datetime(2026, 4, 1, 9, 30, tzinfo=UTC)))
    issued = default_grant(ent)  # the grant issueAfterReset stands for, listed as OpenMeter lists it
    assert issued is not None
    assert w.feats.grants_of(NS, "acme", ent.id) == [grant, issued] == w.feats.grants(NS)
    w.feats.void_grant(NS, grant.id, None)
    assert w.feats.grants(NS) == [issued] and w.feats.grants(NS, include_voided=True)[0].voided_us == T0
    w.feats.void_grant(NS, issued.id, None)  # voided like any grant, as OpenMeter voids its default grant
    assert w.feats.grants(NS) == []
    assert [g.voided_us for g in w.feats.grants_of(NS, "acme", ent.id, include_voided=True)] == [T0, T0]
    with pytest.raises(Conflict) as voided:
        w.feats.void_grant(NS, issued.id, None)
    assert voided.value.code == "grant_voided"


def test_archiving_frees_the_feature_key(w: World) -> None:
    old = w.feats.create(NS, FeatureInput("sso", "SSO"))
    w.feats.archive(NS, "sso")
    new = w.feats.create(NS, FeatureInput("sso", "SSO 2"))
    assert w.feats.get(NS, "sso") == new and w.feats.get(NS, old.id).archived_us == T0
