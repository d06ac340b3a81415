"""The catalog repositories over one PostgreSQL database, opened together."""

from __future__ import annotations

from collections.abc import Callable

from meterline.adapters.postgres.customers import PgCustomers
from meterline.adapters.postgres.database import PgDatabase
from meterline.adapters.postgres.dead_letters import PgDeadLetters
from meterline.adapters.postgres.entitlements import PgEntitlements, PgFeatures, PgGrants
from meterline.adapters.postgres.group_values import PgGroupValues
from meterline.adapters.postgres.keys import PgKeys
from meterline.adapters.postgres.meters import PgMeters
from meterline.adapters.postgres.notifications import PgNotifications
from meterline.adapters.postgres.portal import PgPortal
from meterline.adapters.postgres.quarantine import PgQuarantine


class PgCatalog:
    """Customers (also the namespace settings), the quarantine, keys, meters, features,
    entitlements, grants, notifications (also the delivery store), portal tokens, dead letters
    and the group values meters admitted."""

    def __init__(self, db: PgDatabase, now_us: Callable[[], int]) -> None:
        self.db = db
        self.customers = PgCustomers(db, now_us)
        self.keys = PgKeys(db)
        self.meters = PgMeters(db, now_us)
        self.features = PgFeatures(db)
        self.entitlements = PgEntitlements(db)
        self.grants = PgGrants(db)
        self.notifications = PgNotifications(db, now_us)
        self.portal = PgPortal(db)
        self.dead_letters = PgDeadLetters(db)
        self.quarantine = PgQuarantine(db, now_us)
        self.group_values = PgGroupValues(db)

    @classmethod
    def open(cls, dsn: str, now_us: Callable[[], int], *, pool_size: int = 8, timeout: float = 10.0) -> PgCatalog:
        """Connect, migrate the schema, and build the repositories."""
        return cls(PgDatabase(dsn, max_size=pool_size, timeout=timeout), now_us)

    def probe(self) -> None:
        """One round trip; ``StorageUnavailable`` when the database does not answer."""
        with self.db.tx() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self.db.close()
