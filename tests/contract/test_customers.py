"""The CustomerRepository and NamespaceSettings contract."""

from __future__ import annotations

from typing import Any

import pytest

from meterline.domain.customers.model import CustomerInput, UnknownSubjects
from meterline.domain.errors import Conflict, NotFound

NS = "default"


def test_create_then_get_by_key_or_id(customers: Any) -> None:
    saved = customers.create(NS, CustomerInput("acme", "Acme", ["a-1", "a-0"], "Europe/Berlin", {"tier": "gold"}))
    c = saved.customer
    assert (c.key, c.name, c.timezone, c.metadata) == ("acme", "Acme", "Europe/Berlin", {"tier": "gold"})
    assert set(c.subjects) == {"a-0", "a-1"}
    assert (saved.released, saved.released_rejected) == (0, 0)
    by_key, by_id = customers.get(NS, "acme"), customers.get(NS, c.id)
    assert by_key == by_id
    assert by_key.subjects == ("a-0", "a-1")  # stored sorted
    assert by_key.created_us == by_key.updated_us == c.created_us


def test_a_customer_without_subject_keys_is_its_own_subject(customers: Any) -> None:
    customers.create(NS, CustomerInput("solo"))
    assert customers.get(NS, "solo").subjects == ("solo",)
    assert customers.by_subject(NS, "solo").key == "solo"


def test_keys_are_unique_per_namespace(customers: Any) -> None:
    customers.create(NS, CustomerInput("acme", subject_keys=["x"]))
    with pytest.raises(Conflict) as err:
        customers.create(NS, CustomerInput("acme", subject_keys=["y"]))
    assert err.value.code == "customer_exists"
    customers.create("other", CustomerInput("acme", subject_keys=["x"]))  # another namespace is free
    assert [c.key for c in customers.list("other")] == ["acme"]


def test_a_subject_belongs_to_one_customer(customers: Any) -> None:
    customers.create(NS, CustomerInput("acme", subject_keys=["s"]))
    with pytest.raises(Conflict) as err:
        customers.create(NS, CustomerInput("globex", subject_keys=["t", "s"]))
    assert err.value.code == "subject_claimed"
    with pytest.raises(NotFound):
        customers.get(NS, "globex")  # nothing of the refused write was kept
    assert customers.by_subject(NS, "t") is None


def test_replace_keeps_id_and_creation_and_moves_subjects(customers: Any, stores: Any) -> None:
    first = customers.create(NS, CustomerInput("acme", subject_keys=["a", "b"])).customer
    stores.clock.advance(60)
    second = customers.replace(NS, "acme", CustomerInput("acme", "New", ["b", "c"], "Asia/Kolkata")).customer
    assert (second.id, second.created_us) == (first.id, first.created_us)
    assert second.updated_us == first.created_us + 60_000_000
    assert customers.by_subject(NS, "a") is None
    assert customers.by_subject(NS, "c").key == "acme"
    assert customers.get(NS, "acme").timezone == "Asia/Kolkata"
    customers.create(NS, CustomerInput("globex", subject_keys=["a"]))  # the freed subject can be claimed


PROFILE = {
    "description": "the first customer",
    "primaryEmail": "billing@acme.example",
    "currency": "USD",
    "billingAddress": {
        "country": "US",
        "postalCode": "12345",
        "state": "IL",
        "city": "Springfield",
        "line1": "1 Main St",
        "line2": None,
        "phoneNumber": "+1 555 0100",
    },
}


def test_openmeters_members_are_stored_and_replaced(customers: Any) -> None:
    """OpenMeter's descriptive members (the profile) survive every read path, and a replace
    without them clears them (a PUT replaces the whole customer)."""
    inp = CustomerInput(
        "acme",
        "Acme",
        ["a-1"],
        description="the first customer",
        primary_email="billing@acme.example",
        currency="USD",
        billing_address=PROFILE["billingAddress"],  # type: ignore[arg-type]
    )
    created = customers.create(NS, inp).customer
    assert created.profile == PROFILE
    assert customers.get(NS, "acme").profile == PROFILE
    assert customers.get(NS, created.id).profile == PROFILE
    assert customers.by_subject(NS, "a-1").profile == PROFILE
    assert [c.profile for c in customers.list(NS)] == [PROFILE]
    if hasattr(customers, "load_all"):
        assert [c.profile for c in customers.load_all(NS)] == [PROFILE]
    kept = customers.upsert_many(NS, [CustomerInput("acme", "Acme Inc.")])[0].customer  # a subject upsert
    assert (kept.name, kept.profile) == ("Acme Inc.", PROFILE)
    changed = CustomerInput("acme", "Acme", ["a-1"], currency="EUR", primary_email="ap@acme.example")
    assert customers.replace(NS, "acme", changed).customer.profile == {
        "primaryEmail": "ap@acme.example",
        "currency": "EUR",
    }
    assert customers.get(NS, "acme").profile == {"primaryEmail": "ap@acme.example", "currency": "EUR"}
    customers.replace(NS, "acme", CustomerInput("acme", "Acme", ["a-1"]))
    assert customers.get(NS, "acme").profile is None


def test_replace_of_a_missing_customer_is_not_found(customers: Any) -> None:
    with pytest.raises(NotFound) as err:
        customers.replace(NS, "ghost", CustomerInput("ghost"))
    assert err.value.code == "customer_not_found"


def test_upsert_many_creates_or_updates_and_keeps_subjects_and_zone(customers: Any) -> None:
    customers.create(NS, CustomerInput("acme", "Old", ["s1"], "Europe/Paris", {"a": 1}))
    saved = customers.upsert_many(NS, [CustomerInput("acme", "New"), CustomerInput("globex", "G")])
    acme, globex = (s.customer for s in saved)
    assert (acme.name, acme.subjects, acme.timezone, acme.metadata) == ("New", ("s1",), "Europe/Paris", {"a": 1})
    assert (globex.key, globex.subjects) == ("globex", ("globex",))
    assert [c.key for c in customers.list(NS)] == ["acme", "globex"]


def test_upsert_many_is_all_or_nothing(customers: Any) -> None:
    customers.create(NS, CustomerInput("acme", subject_keys=["taken"]))
    with pytest.raises(Conflict):
        customers.upsert_many(NS, [CustomerInput("first"), CustomerInput("taken")])
    assert [c.key for c in customers.list(NS)] == ["acme"]


def test_delete_frees_the_key_and_subjects(customers: Any) -> None:
    old = customers.create(NS, CustomerInput("acme", subject_keys=["s"])).customer
    customers.delete(NS, "acme")
    with pytest.raises(NotFound):
        customers.get(NS, "acme")
    with pytest.raises(NotFound):
        customers.delete(NS, "acme")
    assert customers.by_subject(NS, "s") is None and customers.list(NS) == []
    new = customers.create(NS, CustomerInput("acme", subject_keys=["s"])).customer
    assert new.id != old.id


def test_a_deleted_customer_is_kept_with_its_subject_keys(customers: Any, stores: Any) -> None:
    old = customers.create(NS, CustomerInput("acme", "Acme", ["s", "t"], currency="EUR")).customer
    customers.create(NS, CustomerInput("bravo"))
    stores.clock.advance(60)
    customers.delete(NS, old.id)
    deleted = customers.get(NS, old.id, include_deleted=True)  # by its id only
    assert deleted.deleted_us == old.created_us + 60_000_000
    assert (deleted.key, deleted.name, deleted.subjects, deleted.profile) == ("acme", "Acme", ("s", "t"), old.profile)
    for hidden in ("acme", old.id):
        with pytest.raises(NotFound):
            customers.get(NS, hidden)  # gone for everything that resolves customers
    with pytest.raises(NotFound):
        customers.get(NS, "acme", include_deleted=True)  # a deleted customer's key names no one
    with pytest.raises(NotFound):
        customers.delete(NS, old.id)  # deleted once only
    assert [c.key for c in customers.list(NS)] == ["bravo"]
    assert [(c.key, c.deleted_us) for c in customers.list(NS, include_deleted=True)] == [
        ("acme", deleted.deleted_us),
        ("bravo", None),
    ]
    # The key and the subject keys are free: a new customer takes them; the deleted one stays as it was.
    new = customers.create(NS, CustomerInput("acme", subject_keys=["t"])).customer
    assert customers.by_subject(NS, "t") == new and customers.by_subject(NS, "s") is None
    assert customers.get(NS, "acme", include_deleted=True) == new
    assert customers.get(NS, old.id, include_deleted=True) == deleted
    customers.delete(NS, "acme")
    both = customers.list(NS, include_deleted=True)
    assert [(c.id, c.key, c.subjects) for c in both if c.deleted_us is not None] == sorted(
        [(old.id, "acme", ("s", "t")), (new.id, "acme", ("t",))]
    )
    assert customers.list("other", include_deleted=True) == []


def test_list_is_by_key_and_per_namespace(customers: Any) -> None:
    for key in ("b", "c", "a"):
        customers.create(NS, CustomerInput(key))
    customers.create("other", CustomerInput("z"))
    assert [c.key for c in customers.list(NS)] == ["a", "b", "c"]


def test_the_policy_is_unset_until_set(customers: Any) -> None:
    assert customers.policy(NS) is None
    customers.set_policy(NS, UnknownSubjects.QUARANTINE)
    customers.set_policy(NS, UnknownSubjects.REJECT)
    assert customers.policy(NS) is UnknownSubjects.REJECT
    assert customers.policy("other") is None
