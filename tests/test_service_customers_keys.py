"""The customer, key and dead-letter services on the in-memory adapters, and the pure rules
they use (``upserted``, ``mint``)."""

from __future__ import annotations

import pytest

from meterline.adapters.memory.customers import MemoryCustomers, NoQuarantine
from meterline.adapters.memory.keys import MemoryKeys
from meterline.domain.auth.keys import DEFAULT_NAMESPACE, Scope, mint
from meterline.domain.clock import FixedClock
from meterline.domain.customers.model import Customer, CustomerInput, UnknownSubjects, upserted
from meterline.domain.errors import Conflict, InvalidInput
from meterline.ports.dead_letters import DeadLetter, DeadLetterFilter
from meterline.services.customers import CustomerService
from meterline.services.dead_letters import DeadLetterService
from meterline.services.keys import KeyService

T0 = 1_772_366_400_000_000


@pytest.fixture
def service() -> CustomerService:
    repo = MemoryCustomers(FixedClock(T0).now_us)
    return CustomerService(repo, repo, NoQuarantine(), default_policy=UnknownSubjects.ACCEPT)


def test_invalid_input_is_refused_before_anything_is_stored(service: CustomerService) -> None:
    with pytest.raises(InvalidInput) as err:
        service.create("ns", CustomerInput("bad key!", timezone="Mars/Olympus"))
    assert err.value.code == "invalid_customer" and len(err.value.extra["problems"]) == 2
    with pytest.raises(InvalidInput):
        service.upsert_many("ns", [CustomerInput("fine"), CustomerInput("", name="x" * 300)])
    assert service.list("ns") == []


def test_replace_may_change_the_key_as_openmeter_does(service: CustomerService) -> None:
    acme = service.create("ns", CustomerInput("acme")).customer
    globex = service.create("ns", CustomerInput("globex", subject_keys=["g-1"])).customer
    renamed = service.replace("ns", "acme", CustomerInput("acme-inc", subject_keys=["acme"])).customer
    assert (renamed.id, renamed.key, renamed.subjects) == (acme.id, "acme-inc", ("acme",))
    assert service.get("ns", acme.id).key == "acme-inc" and service.get("ns", "acme-inc").id == acme.id
    owner = service.owner("ns", "acme")
    assert owner is not None and owner.id == acme.id
    taken_keys = (("globex", "customer_exists"), (globex.id, "customer_key_conflict"), ("g-1", "subject_claimed"))
    for taken, code in taken_keys:
        with pytest.raises(Conflict) as err:
            service.replace("ns", "acme-inc", CustomerInput(taken, subject_keys=["acme"]))
        assert err.value.code == code, taken
    assert service.get("ns", acme.id).key == "acme-inc"
    assert sorted(c.key for c in service.list("ns")) == ["acme-inc", "globex"]


def test_owner_is_the_customer_keyed_by_the_subject_else_the_claiming_one(service: CustomerService) -> None:
    """OpenMeter's attribution: a customer's key comes before another customer's subject key."""
    service.create("ns", CustomerInput("acme", subject_keys=["svc-1"]))
    service.create("ns", CustomerInput("globex", subject_keys=["acme", "svc-2"]))
    owner = service.owner("ns", "acme")
    assert owner is not None and owner.key == "acme"
    claimed = service.owner("ns", "svc-2")
    assert claimed is not None and claimed.key == "globex"
    svc = service.owner("ns", "svc-1")
    assert svc is not None and svc.key == "acme"
    assert service.owner("ns", "nobody") is None


def test_the_policy_defaults_to_the_configured_one(service: CustomerService) -> None:
    assert service.policy("ns") is UnknownSubjects.ACCEPT
    service.set_policy("ns", UnknownSubjects.QUARANTINE)
    assert service.policy("ns") is UnknownSubjects.QUARANTINE
    assert service.policy("other") is UnknownSubjects.ACCEPT


def test_upserted_keeps_subjects_zone_and_metadata_unless_given() -> None:
    existing = Customer("id", "ns", "acme", "Old", ("s1", "s2"), "Europe/Paris", {"a": 1}, 1, 1)
    assert upserted(existing, CustomerInput("acme", "New")) == CustomerInput(
        "acme", "New", ["s1", "s2"], "Europe/Paris", {"a": 1}
    )
    assert upserted(existing, CustomerInput("acme", None, metadata={"b": 2})).metadata == {"b": 2}


def test_mint_makes_a_key_whose_secret_is_not_stored() -> None:
    key, secret = mint("ns", "k", frozenset({Scope.READ}), T0)
    assert secret.startswith(f"ml_{key.id}_") and key.prefix == secret[:11]
    assert secret not in repr(key)
    other, other_secret = mint("ns", "k", frozenset({Scope.READ}), T0)
    assert (other.id, other_secret) != (key.id, secret)


def test_key_service_authenticates_live_keys_only() -> None:
    clock = FixedClock(T0)
    keys = KeyService(MemoryKeys(), clock)
    key, secret = keys.create("ns", "k", frozenset({Scope.INGEST}))
    assert keys.authenticate(secret) == key
    assert keys.authenticate(secret[:-1]) is None
    clock.advance(5)
    assert keys.revoke(key.id, "ns").revoked_us == T0 + 5_000_000
    assert keys.authenticate(secret) is None


def test_key_service_refuses_a_bad_namespace() -> None:
    with pytest.raises(InvalidInput) as err:
        KeyService(MemoryKeys(), FixedClock(T0)).create("no spaces", "k", frozenset({Scope.READ}))
    assert err.value.code == "invalid_namespace"


def test_bootstrap_admin_is_made_once_on_an_empty_store() -> None:
    keys = KeyService(MemoryKeys(), FixedClock(T0))
    secret = keys.bootstrap_admin()
    assert secret is not None
    admin = keys.authenticate(secret)
    assert admin is not None and admin.namespace == DEFAULT_NAMESPACE and admin.allows(Scope.ADMIN)
    assert keys.bootstrap_admin() is None
    assert len(keys.list(None)) == 1


class _Recorded:
    """A dead-letter store that records the filters it was asked for."""

    def __init__(self) -> None:
        self.asked: list[DeadLetterFilter] = []

    def list(self, namespace: str, f: DeadLetterFilter, *, limit: int, after_id: int = 0) -> list[DeadLetter]:
        self.asked.append(f)
        return []

    def purge(self, namespace: str, f: DeadLetterFilter) -> int:
        self.asked.append(f)
        return 0

    def count(self) -> int:
        return 0


def test_dead_letter_reasons_are_checked_before_the_store_is_asked() -> None:
    store = _Recorded()
    service = DeadLetterService(store)
    with pytest.raises(InvalidInput) as err:
        service.purge("ns", DeadLetterFilter(reason="gremlins"))
    assert err.value.code == "invalid_parameter" and store.asked == []
    service.list("ns", DeadLetterFilter(reason="invalid_data"), limit=10)
    assert store.asked == [DeadLetterFilter(reason="invalid_data")]
