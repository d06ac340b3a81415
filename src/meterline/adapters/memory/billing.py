"""Billing stores in memory: plan versions, subscriptions and credits (invoices and the
finalizing unit of work: ``billing_invoices``; usage and the directory: ``billing_usage``).

Every store of one :class:`MemoryBillingState` shares its lock. A write runs on a copy of the
state's containers and swaps the copy in only when it returned (the values inside are
immutable), so a write that raises leaves nothing behind: the same all-or-nothing a SQLite
transaction gives.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

import msgspec

from meterline.domain.billing import PlanVersion
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import InvoiceWindow
from meterline.domain.billing.money import sub, total
from meterline.domain.billing.records import StoredSubscription
from meterline.domain.clock import to_us
from meterline.domain.errors import Conflict, NotFound
from meterline.ports.billing_subscriptions import Change

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    id: int
    namespace: str
    number: str
    customer_id: str
    subscription: str
    period_start_us: int
    period_end_us: int
    replaces: str
    issued_us: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Void:
    reason: str
    voided_us: int
    replaced_by: str | None


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    id: int
    namespace: str
    customer_id: str
    subscription: str
    start_us: int
    end_us: int
    invoice: int
    origin: int
    window: InvoiceWindow


@dataclass(frozen=True, slots=True)
class Grant:
    terms: GrantTerms
    voided_us: int | None


@dataclass(frozen=True, slots=True)
class Burn:
    namespace: str
    customer_id: str
    grant: str
    invoice: int
    amount: Decimal


@dataclass
class Tables:
    plans: dict[tuple[str, str, int], PlanVersion] = field(default_factory=dict)
    subscriptions: dict[str, StoredSubscription] = field(default_factory=dict)
    invoices: list[StoredInvoice] = field(default_factory=list)
    voids: dict[int, Void] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    snapshots: list[StoredSnapshot] = field(default_factory=list)
    grants: dict[tuple[str, str, str], Grant] = field(default_factory=dict)
    burns: list[Burn] = field(default_factory=list)

    def copy(self) -> Tables:
        return Tables(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})


class MemoryBillingState:
    """The tables every memory billing store of one deployment shares."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tables = Tables()

    def read(self, fn: Callable[[Tables], T]) -> T:
        with self._lock:
            return fn(self._tables)

    def write(self, fn: Callable[[Tables], T]) -> T:
        """Run ``fn`` on a copy; keep the copy only if ``fn`` returned."""
        with self._lock:
            draft = self._tables.copy()
            result = fn(draft)
            self._tables = draft
            return result


class MemoryPlans:
    def __init__(self, state: MemoryBillingState) -> None:
        self._state = state

    def add(self, namespace: str, plan: str, build: Callable[[int], PlanVersion]) -> PlanVersion:
        def write(t: Tables) -> PlanVersion:
            latest = max((v for ns, p, v in t.plans if ns == namespace and p == plan), default=0)
            stored = build(latest)
            key = (namespace, stored.plan, stored.version)
            if key in t.plans:
                raise Conflict(
                    f"plan {stored.plan!r} version {stored.version} already exists", code="plan_version_exists"
                )
            t.plans[key] = stored
            return stored

        return self._state.write(write)

    def update(
        self, namespace: str, plan: str, version: int, change: Callable[[PlanVersion], PlanVersion]
    ) -> PlanVersion:
        def write(t: Tables) -> PlanVersion:
            updated = change(_plan(t, namespace, plan, version))
            t.plans[(namespace, plan, version)] = updated
            return updated

        return self._state.write(write)

    def versions(self, namespace: str, plan: str | None = None) -> builtins.list[PlanVersion]:
        def read(t: Tables) -> builtins.list[PlanVersion]:
            keys = sorted(k for k in t.plans if k[0] == namespace and (plan is None or k[1] == plan))
            return [t.plans[k] for k in keys]

        return self._state.read(read)

    def get(self, namespace: str, plan: str, version: int) -> PlanVersion:
        return self._state.read(lambda t: _plan(t, namespace, plan, version))


def _plan(t: Tables, namespace: str, plan: str, version: int) -> PlanVersion:
    found = t.plans.get((namespace, plan, version))
    if found is None:
        raise NotFound(f"no plan {plan!r} version {version}", code="plan_not_found")
    return found


class MemorySubscriptions:
    def __init__(self, state: MemoryBillingState) -> None:
        self._state = state

    def add(
        self, new: StoredSubscription, check: Callable[[builtins.list[StoredSubscription]], None]
    ) -> StoredSubscription:
        def write(t: Tables) -> StoredSubscription:
            check(_of(t, new.namespace, new.customer_id))
            t.subscriptions[new.id] = new
            return new

        return self._state.write(write)

    def update(self, namespace: str, id_: str, change: Change) -> tuple[StoredSubscription, StoredSubscription | None]:
        def write(t: Tables) -> tuple[StoredSubscription, StoredSubscription | None]:
            old = _subscription(t, namespace, id_)
            terms, successor = change(old)
            t.subscriptions[id_] = updated = msgspec.structs.replace(old, subscription=terms)
            if successor is not None:
                t.subscriptions[successor.id] = successor
            return updated, successor

        return self._state.write(write)

    def get(self, namespace: str, id_: str) -> StoredSubscription:
        return self._state.read(lambda t: _subscription(t, namespace, id_))

    def list(self, namespace: str, customer_id: str | None = None) -> builtins.list[StoredSubscription]:
        return self._state.read(lambda t: _of(t, namespace, customer_id))

    def open(self, namespace: str | None, starting_before_us: int | None = None) -> builtins.list[StoredSubscription]:
        def read(t: Tables) -> builtins.list[StoredSubscription]:
            found = [
                s
                for s in t.subscriptions.values()
                if (namespace is None or s.namespace == namespace)
                and s.open
                and (starting_before_us is None or to_us(s.subscription.start) < starting_before_us)
            ]
            return sorted(found, key=lambda s: (s.namespace, *_order(s)))

        return self._state.read(read)

    def billed_through(self, namespace: str | None) -> dict[str, int]:
        return self._state.read(
            lambda t: {
                s.id: s.billed_through_us
                for s in t.subscriptions.values()
                if namespace is None or s.namespace == namespace
            }
        )


def _order(s: StoredSubscription) -> tuple[str, int, str]:
    return (s.customer_id, to_us(s.subscription.start), s.id)


def _of(t: Tables, namespace: str, customer_id: str | None) -> builtins.list[StoredSubscription]:
    found = [
        s
        for s in t.subscriptions.values()
        if s.namespace == namespace and (customer_id is None or s.customer_id == customer_id)
    ]
    return sorted(found, key=_order)


def _subscription(t: Tables, namespace: str, id_: str) -> StoredSubscription:
    found = t.subscriptions.get(id_)
    if found is None or found.namespace != namespace:
        raise NotFound(f"no subscription {id_!r}", code="subscription_not_found")
    return found


class MemoryCredits:
    def __init__(self, state: MemoryBillingState) -> None:
        self._state = state

    def add(self, namespace: str, customer_id: str, grant: GrantTerms, at_us: int) -> None:
        def write(t: Tables) -> None:
            key = (namespace, customer_id, grant.key)
            if key in t.grants:  # a voided grant keeps its key
                raise Conflict(f"credit grant {grant.key!r} already exists", code="credit_grant_exists")
            t.grants[key] = Grant(grant, None)

        self._state.write(write)

    def void(self, namespace: str, customer_id: str, key: str, at_us: int) -> None:
        def write(t: Tables) -> None:
            found = t.grants.get((namespace, customer_id, key))
            if found is None or found.voided_us is not None:
                raise NotFound(f"no live credit grant {key!r}", code="credit_grant_not_found")
            t.grants[(namespace, customer_id, key)] = Grant(found.terms, at_us)

        self._state.write(write)

    def balances(self, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
        return self._state.read(lambda t: balances(t, namespace, customer_id))


def balances(t: Tables, namespace: str, customer_id: str) -> builtins.list[tuple[GrantTerms, Decimal]]:
    """Every live grant of the customer (by key) with its amount less what was burned of it."""
    burned: dict[str, list[Decimal]] = {}
    for b in t.burns:
        if (b.namespace, b.customer_id) == (namespace, customer_id):
            burned.setdefault(b.grant, []).append(b.amount)
    live = sorted(
        (k[2], g.terms) for k, g in t.grants.items() if k[:2] == (namespace, customer_id) and g.voided_us is None
    )
    return [(terms, sub(terms.amount, total(burned.get(key, [])))) for key, terms in live]
