"""The billing store contracts (plans, subscriptions, credits, invoices and their unit of
work), run against every adapter. Usage and the directory: ``test_billing_usage``."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from contract.billing_kit import APRIL, MARCH, MAY, NS, Kit, open_kit
from meterline.domain.billing import PlanStatus, PlanVersion, Subscription, parse_plan
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import InvoiceWindow, UsageEntry
from meterline.domain.billing.records import NewInvoice, Snapshot, StoredSubscription
from meterline.domain.clock import from_us
from meterline.domain.errors import Conflict, InvalidInput, NotFound
from meterline.ports.billing_invoices import InvoiceTransaction

ADAPTERS = ["sqlite", "memory", "postgres"]


@pytest.fixture(params=ADAPTERS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    yield from open_kit(request.param, tmp_path)


def plan(name: str = "pro", version: int = 1) -> PlanVersion:
    body = {"plan": name, "version": version, "currency": "USD", "cards": [{"key": "base", "name": "Base",
            "model": {"model": "flat", "amount": "10"}}]}  # fmt: skip
    return parse_plan(body)


def sub(id_: str, customer: str, start: int, end: int | None = None, billed: int | None = None) -> StoredSubscription:
    terms = Subscription(customer, "pro", 1, from_us(start), "UTC", end=None if end is None else from_us(end))
    return StoredSubscription(id_, NS, customer, terms, start if billed is None else billed, None, start)


def refuse(_: object) -> None:
    raise InvalidInput("refused", code="refused")


# -- plans ------------------------------------------------------------------------------------


def test_plan_versions_are_numbered_after_the_latest_and_unique(kit: Kit) -> None:
    plans = kit.stores.plans
    first = plans.add(NS, "pro", lambda latest: plan(version=latest + 1))
    second = plans.add(NS, "pro", lambda latest: plan(version=latest + 1))
    assert (first.version, second.version) == (1, 2)
    plans.add(NS, "basic", lambda latest: plan("basic", latest + 1))
    with pytest.raises(Conflict) as err:
        plans.add(NS, "pro", lambda _: plan(version=2))
    assert err.value.code == "plan_version_exists"
    assert [(p.plan, p.version) for p in plans.versions(NS)] == [("basic", 1), ("pro", 1), ("pro", 2)]
    assert [p.version for p in plans.versions(NS, "pro")] == [1, 2]
    assert plans.versions("other") == []
    assert plans.get(NS, "pro", 2) == second


def test_a_missing_plan_version_is_not_found(kit: Kit) -> None:
    kit.stores.plans.add(NS, "pro", lambda _: plan())
    for call in (lambda: kit.stores.plans.get(NS, "pro", 2), lambda: kit.stores.plans.get("other", "pro", 1)):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.code == "plan_not_found"
    with pytest.raises(NotFound):
        kit.stores.plans.update(NS, "pro", 3, lambda p: p)


def test_a_plan_update_is_the_change_of_the_stored_version_or_nothing(kit: Kit) -> None:
    plans = kit.stores.plans
    plans.add(NS, "pro", lambda _: plan())
    published = msgspec.structs.replace(plan(), status=PlanStatus.PUBLISHED, published_at=from_us(MARCH))
    assert plans.update(NS, "pro", 1, lambda current: published) == published
    assert plans.get(NS, "pro", 1).published
    with pytest.raises(InvalidInput):
        plans.update(NS, "pro", 1, refuse)  # type: ignore[arg-type]
    assert plans.get(NS, "pro", 1) == published
    with pytest.raises(InvalidInput):
        plans.add(NS, "pro", refuse)  # type: ignore[arg-type]
    assert [p.version for p in plans.versions(NS)] == [1]


# -- subscriptions ----------------------------------------------------------------------------


def test_a_subscription_is_added_once_its_check_passed_on_the_customers_others(kit: Kit) -> None:
    subs = kit.stores.subscriptions
    seen: list[list[str]] = []
    subs.add(sub("s2", "acme", APRIL), lambda others: seen.append([o.id for o in others]))
    subs.add(sub("s1", "acme", MARCH, APRIL), lambda others: seen.append([o.id for o in others]))
    subs.add(sub("s3", "bravo", MARCH), lambda others: seen.append([o.id for o in others]))
    subs.add(sub("s4", "acme", MAY), lambda others: seen.append([o.id for o in others]))
    assert seen == [[], ["s2"], [], ["s1", "s2"]]  # only the customer's, by start
    with pytest.raises(InvalidInput):
        subs.add(sub("s5", "acme", MAY), refuse)
    assert [s.id for s in subs.list(NS)] == ["s1", "s2", "s4", "s3"]  # by customer, start, id
    assert [s.id for s in subs.list(NS, "bravo")] == ["s3"]
    assert subs.get(NS, "s1").subscription.end == from_us(APRIL)
    for call in (lambda: subs.get(NS, "s5"), lambda: subs.get("other", "s1")):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.code == "subscription_not_found"


def test_a_subscription_update_stores_new_terms_and_a_successor_together(kit: Kit) -> None:
    subs = kit.stores.subscriptions
    subs.add(sub("s1", "acme", MARCH), lambda _: None)

    def change(old: StoredSubscription) -> tuple[Subscription, StoredSubscription]:
        ended = msgspec.structs.replace(old.subscription, end=from_us(APRIL))
        return ended, msgspec.structs.replace(sub("s2", "acme", APRIL), previous=old.id)

    closed, started = subs.update(NS, "s1", change)
    assert closed.subscription.end == from_us(APRIL) and closed.id == "s1"
    assert started is not None and started.previous == "s1"
    assert subs.get(NS, "s1") == closed
    assert [s.id for s in subs.list(NS)] == ["s1", "s2"]
    with pytest.raises(InvalidInput):
        subs.update(NS, "s2", refuse)  # type: ignore[arg-type]
    assert subs.get(NS, "s2") == started
    with pytest.raises(NotFound):
        subs.update(NS, "nope", change)


def test_open_subscriptions_are_those_left_to_invoice(kit: Kit) -> None:
    subs = kit.stores.subscriptions
    subs.add(sub("done", "acme", MARCH, APRIL, billed=APRIL), lambda _: None)
    subs.add(sub("ending", "acme", APRIL, MAY), lambda _: None)
    subs.add(sub("later", "bravo", MAY), lambda _: None)
    other = msgspec.structs.replace(sub("elsewhere", "zulu", MARCH), namespace="other")
    subs.add(other, lambda _: None)
    assert [s.id for s in subs.open(NS)] == ["ending", "later"]
    assert [s.id for s in subs.open(NS, MAY)] == ["ending"]
    assert [s.id for s in subs.open(None)] == ["ending", "later", "elsewhere"]  # by namespace first
    assert subs.billed_through(NS) == {"done": APRIL, "ending": APRIL, "later": MAY}
    assert subs.billed_through(None)["elsewhere"] == MARCH


# -- credits ----------------------------------------------------------------------------------


def grant(key: str, amount: str, currency: str = "USD") -> GrantTerms:
    return GrantTerms(key, currency, Decimal(amount), effective_at=from_us(MARCH))


def test_credit_grants_keep_their_key_and_balance(kit: Kit) -> None:
    credits = kit.stores.credits
    credits.add(NS, "c1", grant("b", "20"), MARCH)
    credits.add(NS, "c1", grant("a", "5.5", "EUR"), MARCH)
    credits.add(NS, "c2", grant("a", "1"), MARCH)
    assert [(g.key, b) for g, b in credits.balances(NS, "c1")] == [("a", Decimal("5.5")), ("b", Decimal(20))]
    credits.void(NS, "c1", "b", APRIL)
    assert [g.key for g, _ in credits.balances(NS, "c1")] == ["a"]
    for call, code in (
        (lambda: credits.add(NS, "c1", grant("b", "1"), APRIL), "credit_grant_exists"),  # a void keeps its key
        (lambda: credits.void(NS, "c1", "b", APRIL), "credit_grant_not_found"),
        (lambda: credits.void(NS, "c1", "zzz", APRIL), "credit_grant_not_found"),
    ):
        with pytest.raises((Conflict, NotFound)) as err:
            call()
        assert err.value.code == code


# -- invoices and the finalizing unit of work ---------------------------------------------


def window(start: int, end: int, usage: str = "1") -> InvoiceWindow:
    t0, t1 = from_us(start), from_us(end)
    return InvoiceWindow("pro", 1, t0, t1, t0, t1, (UsageEntry("m", Decimal(usage)),))


def invoice(tx: InvoiceTransaction, customer: str, subscription: str, start: int, end: int, **kw: object) -> NewInvoice:
    number = f"INV-{tx.next_number(NS)}"
    fields: dict[str, object] = {
        "snapshots": (Snapshot(subscription, window(start, end), None),),
        "burns": (),
        "billed_through_us": end,
        "replaces": "",
        **kw,
    }
    return NewInvoice(
        NS, number, customer, subscription, start, end, str(fields["replaces"]), start, f'{{"n":"{number}"}}'.encode(),
        fields["snapshots"], fields["burns"], fields["billed_through_us"],  # type: ignore[arg-type]
    )  # fmt: skip


def finalize(kit: Kit, customer: str, subscription: str, start: int, end: int, **kw: object) -> str:
    def work(tx: InvoiceTransaction) -> str:
        new = invoice(tx, customer, subscription, start, end, **kw)
        tx.store(new)
        return new.number

    return kit.stores.finalizing.run(work)


def test_a_finalized_invoice_is_stored_with_its_windows_and_moves_billing_forward(kit: Kit) -> None:
    kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)
    kit.stores.credits.add(NS, "c1", grant("g", "10"), MARCH)
    number = finalize(kit, "c1", "s1", MARCH, APRIL, burns=(("g", Decimal(4)),))
    assert number == "INV-1"
    record = kit.stores.invoices.get(NS, number)
    assert (record.customer_id, record.subscription, record.period_start_us, record.status) == (
        "c1", "s1", MARCH, "finalized")  # fmt: skip
    assert record.body == b'{"n":"INV-1"}'
    assert kit.stores.subscriptions.get(NS, "s1").billed_through_us == APRIL
    assert kit.stores.credits.balances(NS, "c1")[0][1] == Decimal(6)
    billed = kit.stores.invoices.billed(NS, {"c1"}, MARCH)["c1"]
    assert [(b.subscription, b.window_start_us, b.origin_number) for b in billed] == [("s1", MARCH, "INV-1")]
    assert kit.stores.invoices.first_billed(NS, "c1", "s1", MARCH, APRIL) == ["INV-1"]
    assert kit.stores.invoices.first_billed(NS, "c1", "s1", APRIL, MAY) == []
    reads = kit.stores.finalizing.run(
        lambda tx: (tx.invoice_for("s1", MARCH, ""), tx.billed_through("s1"), tx.latest_snapshot("s1", MARCH))
    )
    assert reads == ("INV-1", APRIL, billed[0].id)


def test_a_failed_unit_of_work_leaves_nothing_behind(kit: Kit) -> None:
    kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)

    def work(tx: InvoiceTransaction) -> None:
        tx.store(invoice(tx, "c1", "s1", MARCH, APRIL))
        assert tx.invoice_for("s1", MARCH, "") == "INV-1"  # reads see the transaction's writes
        raise Conflict("changed my mind", code="billing_busy")

    with pytest.raises(Conflict):
        kit.stores.finalizing.run(work)
    assert kit.stores.invoices.list(NS) == []
    assert kit.stores.subscriptions.get(NS, "s1").billed_through_us == MARCH
    assert finalize(kit, "c1", "s1", MARCH, APRIL) == "INV-1"  # the number was not used up


def test_numbers_are_per_namespace_and_billing_never_moves_back(kit: Kit) -> None:
    kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)
    assert finalize(kit, "c1", "s1", MARCH, APRIL) == "INV-1"
    assert finalize(kit, "c1", "s1", APRIL, MAY, billed_through_us=APRIL) == "INV-2"
    assert kit.stores.subscriptions.get(NS, "s1").billed_through_us == APRIL
    assert finalize(kit, "c1", "s1", MAY, MAY + 1, billed_through_us=None) == "INV-3"
    assert kit.stores.subscriptions.get(NS, "s1").billed_through_us == APRIL
    assert kit.stores.finalizing.run(lambda tx: (tx.next_number("other"), tx.next_number(NS))) == (1, 4)
    assert [r.number for r in kit.stores.invoices.list(NS, period_from_us=APRIL)] == ["INV-2", "INV-3"]
    assert [r.number for r in kit.stores.invoices.list(NS, period_to_us=APRIL)] == ["INV-1"]
    assert kit.stores.invoices.list(NS, customer_id="c2") == []


def test_a_void_is_recorded_beside_the_invoice_and_gives_back_its_credits(kit: Kit) -> None:
    kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)
    kit.stores.credits.add(NS, "c1", grant("g", "10"), MARCH)
    finalize(kit, "c1", "s1", MARCH, APRIL, burns=(("g", Decimal(4)),))
    kit.stores.invoices.void(NS, "INV-1", "wrong", APRIL)
    record = kit.stores.invoices.get(NS, "INV-1")
    assert (record.status, record.void_reason, record.voided_us, record.replaced_by) == (
        "voided", "wrong", APRIL, None)  # fmt: skip
    assert record.body == b'{"n":"INV-1"}'
    assert kit.stores.credits.balances(NS, "c1")[0][1] == Decimal(10)
    assert kit.stores.invoices.billed(NS, {"c1"}, MARCH) == {}
    assert kit.stores.invoices.first_billed(NS, "c1", "s1", MARCH, APRIL) == []
    for call, code in (
        (lambda: kit.stores.invoices.void(NS, "INV-1", "again", APRIL), "invoice_voided"),
        (lambda: kit.stores.invoices.void(NS, "INV-9", "x", APRIL), "invoice_not_found"),
        (lambda: kit.stores.invoices.get("other", "INV-1"), "invoice_not_found"),
    ):
        with pytest.raises((Conflict, NotFound)) as err:
            call()
        assert err.value.code == code


def test_a_replacement_marks_the_voided_invoice_and_sees_the_period_chain(kit: Kit) -> None:
    kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)
    finalize(kit, "c1", "s1", MARCH, APRIL)
    finalize(kit, "c1", "s1", APRIL, MAY)
    kit.stores.invoices.void(NS, "INV-1", "wrong", MAY)
    assert finalize(kit, "c1", "s1", MARCH, APRIL, replaces="INV-1", billed_through_us=None) == "INV-3"
    assert kit.stores.invoices.get(NS, "INV-1").replaced_by == "INV-3"
    chain = kit.stores.finalizing.run(
        lambda tx: (
            tx.period_invoices("s1", MARCH),
            tx.live_after(NS, "c1", "INV-1"),
            tx.invoice_for("s1", MARCH, "INV-1"),
        )
    )
    assert chain[0] == ["INV-1", "INV-3"]
    assert [n for n, _ in chain[1]] == ["INV-2", "INV-3"]
    assert chain[2] == "INV-3"


def test_later_snapshots_of_a_window_supersede_earlier_ones(kit: Kit) -> None:
    kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)
    finalize(kit, "c1", "s1", MARCH, APRIL)
    first = kit.stores.invoices.billed(NS, {"c1"}, MARCH)["c1"][0]
    later = Snapshot("s1", window(MARCH, APRIL, "5"), first.origin_id)  # an adjustment re-billed it
    finalize(kit, "c1", "s1", APRIL, MAY, snapshots=(Snapshot("s1", window(APRIL, MAY), None), later))
    billed = {b.window_start_us: b for b in kit.stores.invoices.billed(NS, {"c1"}, MARCH)["c1"]}
    assert billed[MARCH].origin_number == "INV-1" and billed[MARCH].id != first.id
    assert billed[MARCH].window.usage[0].quantity == Decimal(5)
    assert kit.stores.finalizing.run(lambda tx: tx.latest_snapshot("s1", MARCH)) == billed[MARCH].id
    kit.stores.invoices.void(NS, "INV-2", "wrong", MAY)  # the adjusting invoice: its snapshot is gone too
    assert kit.stores.invoices.billed(NS, {"c1"}, MARCH)["c1"][0].id == first.id
    assert kit.stores.invoices.billed(NS, {"c2"}, MARCH) == {}


def test_postgres_refuses_to_change_or_delete_a_finalized_invoice(tmp_path: Path) -> None:
    """Immutability is the database's too: not even SQL run beside meterline can rewrite one."""
    import psycopg

    opened = open_kit("postgres", tmp_path)
    kit = next(opened)
    try:
        kit.stores.subscriptions.add(sub("s1", "c1", MARCH), lambda _: None)
        number = finalize(kit, "c1", "s1", MARCH, APRIL)
        db = kit.stores.invoices._db  # type: ignore[attr-defined]
        for sql in ("UPDATE invoices SET body = 'x'", "DELETE FROM invoices", "TRUNCATE invoices CASCADE"):
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation), db.tx() as conn:
                conn.execute(sql)
        assert kit.stores.invoices.get(NS, number).body == kit.stores.invoices.list(NS)[0].body
    finally:
        opened.close()
