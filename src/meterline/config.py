"""Configuration: typed sections, loaded from TOML with ``METERLINE_*`` environment overrides.

Precedence (highest first): command-line flags, environment variables
(``METERLINE_SERVER__PORT=9000``; the shortcuts ``METERLINE_HOST``, ``METERLINE_PORT`` and
``METERLINE_DATA_DIR`` also work), the TOML file (``--config`` or ``METERLINE_CONFIG``),
defaults. The whole configuration is validated at once and every problem is listed: a value
that would only fail later (a locale the HTML invoice cannot use, a duration that overflows a
timer or a timestamp, an invoice prefix that breaks URLs) is refused here, by ``check-config``
and at start, never at the first request that needs it.
``meterline.example.toml`` at the repository root documents every field and is checked by a
test to load.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meterline.domain.errors import ConfigError
from meterline.domain.identifiers import NAMESPACE_RULE, is_namespace
from meterline.domain.meters.model import MeterSpec, validate_spec

_CENTURY = timedelta(days=36_525)  # far below what overflows a datetime or a microsecond INTEGER
Duration = Annotated[timedelta, Field(gt=timedelta(0), le=_CENTURY)]
"""A positive duration of at most 100 years."""
Span = Annotated[timedelta, Field(ge=timedelta(0), le=_CENTURY)]
"""A duration of zero up to 100 years."""
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")  # RFC 1123


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    """Address to listen on: an IP address or a host name."""
    port: int = Field(8888, ge=1, le=65535)
    """TCP port."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above it)."""
    max_events_per_request: int = Field(10_000, ge=1)
    """Most events in one ingest request (413 above it)."""
    max_requests_in_flight: int = Field(1024, ge=1)
    """Backpressure: most API requests handled at once (health, readiness and metrics are not
    counted). Beyond it a request is answered 503 ``overloaded`` with Retry-After at once,
    before its body is read."""
    max_body_bytes_in_flight: int = Field(8 * 1024 * 1024, ge=1024)
    """Backpressure: most request-body bytes held at once, over all requests in flight (a decoded
    ingest body takes about 7 times its size in memory). At least ``max_body_bytes``."""
    retry_after: int = Field(1, ge=1, le=3600)
    """Seconds in the Retry-After header of every 503 answer (overloaded, storage unavailable)."""
    tls_cert: Path | None = None
    """PEM certificate (chain) the server presents. With it the server speaks HTTPS only
    (TLS 1.2 at least, 1.3 preferred); plain HTTP is refused."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert`` (omit when ``tls_cert`` holds it too)."""
    tls_client_ca: Path | None = None
    """PEM bundle of the CA(s) whose client certificates are accepted (mTLS). A client
    certificate that this CA did not sign, or that expired, fails the TLS handshake."""
    tls_client_auth: Literal["required", "optional"] = "required"
    """With ``tls_client_ca``: ``required`` refuses clients without a certificate; ``optional``
    lets them in (to authenticate with an API key as usual)."""
    tls_client_namespaces: dict[str, str] = {}
    """Certificate subject (RFC 4514, as ``openssl x509 -noout -subject -nameopt RFC2253``
    prints it, e.g. ``CN=billing,O=Example``) -> namespace. A client whose verified certificate
    has such a subject may ingest events (``POST /api/v1/events``, nothing else) into that
    namespace without an API key. Needs ``tls_client_ca``. In the environment: a JSON object."""

    @field_validator("tls_client_namespaces", mode="before")
    @classmethod
    def _namespaces_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("must be a table (in the environment: a JSON object)") from None
        return value

    @model_validator(mode="after")
    def _tls_usable(self) -> ServerConfig:
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key needs tls_cert")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert: client certificates are checked only over TLS")
        if self.tls_client_namespaces and not self.tls_client_ca:
            raise ValueError(
                "tls_client_namespaces needs tls_client_ca: only verified certificates may stand for a key"
            )
        bad = [ns for ns in self.tls_client_namespaces.values() if not is_namespace(ns)]
        if bad:
            raise ValueError(f"tls_client_namespaces: {bad[0]!r} is not a namespace ({NAMESPACE_RULE})")
        if self.tls_cert:
            import ssl

            from meterline.runtime.tls import server_ssl_context

            try:
                server_ssl_context(self.tls_cert, self.tls_key, self.tls_client_ca, self.tls_client_auth)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"the TLS files cannot be used: {exc}") from None
        return self

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> ServerConfig:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                "max_body_bytes_in_flight must be at least max_body_bytes (or no large body could ever be read)"
            )
        return self

    @field_validator("host")
    @classmethod
    def _host_valid(cls, host: str) -> str:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
        return host


class StorageConfig(_Section):
    engine: Literal["embedded", "scale"] = "embedded"
    """embedded: everything in one SQLite database under ``data_dir``. scale: the ledger on
    Kafka (``[kafka]``), events and usage in ClickHouse (``[clickhouse]``), the catalog and
    billing in PostgreSQL (``[postgres]``), counters and rate limits in Redis (``[redis]``)."""
    data_dir: Path = Path("./meterline-data")
    """Directory holding the embedded database."""
    fsync: Literal["full", "normal"] = "full"
    """full: every commit is synced to disk (survives power loss). normal: synced at
    checkpoints (survives a process crash, may lose the last commits on power loss)."""
    group_commit_max_requests: int = Field(512, ge=1)
    """Most requests that share one commit."""
    group_commit_max_events: int = Field(100_000, ge=1)
    """Most events in one commit (a request is never split). Bigger commits fold more rollup
    deltas and drain a backlog faster; this bounds a commit's time and memory when the
    backpressure budgets are raised (the default budget stays within one commit)."""
    max_queued_writes: int = Field(4096, ge=1)
    """Most write tasks waiting for the writer thread; beyond it a write is answered 503
    ``overloaded`` at once instead of queueing without bound."""


class IngestConfig(_Section):
    future_skew: Span = timedelta(minutes=5)
    """How far in the future an event's time may be (clock skew allowance)."""
    late_arrival_window: Duration | None = timedelta(days=90)
    """Oldest event time accepted, relative to now. Empty/none: no limit."""
    dedupe_window: Duration | None = None
    """How long after its first receipt an idempotency key makes a retry a duplicate; expired keys
    are deleted in the background an hour later. None (default): forever, nothing is deleted."""
    max_group_cardinality: int = Field(1000, ge=1)
    """Most distinct values per meter groupBy dimension; events beyond it are rejected."""
    unknown_subjects: Literal["accept", "quarantine", "reject"] = "accept"
    """Default for events whose subject belongs to no customer: accept (count it), quarantine
    (keep it uncounted until a customer claims the subject) or reject (dead letter). A namespace
    can override it with PUT /api/v1/settings."""
    unknown_subjects_cache: Span = timedelta(seconds=1)
    """Scale mode: how long an API node remembers a namespace's unknown-subject policy and the
    subjects it found claimed by a customer (0: ask PostgreSQL on every request). Changes made
    through the node itself apply at once; through another node, within this time."""


_SHORT_DURATION = re.compile(r"^\s*(\d{1,6})\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _retention_value(value: Any) -> Any:
    """``"forever"`` (or empty) is None; ``"90d"``, ``"12h"``, ``"2w"`` are durations; anything
    else goes to the timedelta parser (ISO 8601 ``"P90D"``, seconds)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "forever", "none")):
        return None
    if isinstance(value, str) and (m := _SHORT_DURATION.match(value)):
        return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    return value


class RetentionConfig(_Section):
    """How long raw events are kept beside the rollups (docs/retention.md)."""

    raw_events: Duration | None = None
    """How long a raw ledger event is kept after its time and its receipt (``"90d"``,
    ``"P90D"``, ``"forever"``). Older events are removed in the background; their rollups stay
    and their hashes stay in the chain. None / ``"forever"`` (default): nothing is removed.
    Needs ``ingest.dedupe_window`` and ``ingest.late_arrival_window``, both at most this long."""
    rollups: Literal["forever"] = "forever"
    """How long rollups are kept: ``"forever"``, the only value (totals and invoices of pruned
    periods rest on them)."""
    prune_batch: int = Field(500, ge=1, le=100_000)
    """Raw events removed per writer task (each task holds the writer about a millisecond)."""

    @field_validator("raw_events", mode="before")
    @classmethod
    def _raw_events_value(cls, value: Any) -> Any:
        return _retention_value(value)

    @field_validator("rollups", mode="before")
    @classmethod
    def _rollups_value(cls, value: Any) -> Any:
        if _retention_value(value) is not None:
            raise ValueError(
                'rollups are kept "forever" (the only value): totals and invoices of periods whose raw'
                " events were removed rest on them"
            )
        return "forever"


class AlertsConfig(_Section):
    webhook_timeout: float = Field(5.0, gt=0, le=600)
    """Seconds a webhook receiver has to answer one delivery attempt."""
    max_attempts: int = Field(10, ge=1)
    """Delivery attempts before a notification is marked failed (resend restarts it)."""
    backoff_initial: float = Field(1.0, gt=0, le=86_400)
    """Seconds before the first retry; each retry waits twice as long (with jitter)."""
    backoff_max: float = Field(600.0, gt=0, le=86_400)
    """Longest wait between two attempts."""
    baseline_days: int = Field(7, ge=1, le=366)
    """Days of a customer's own history that make the baseline of spike/drop rules."""
    anomaly_delay: float = Field(60.0, ge=0, le=3000)
    """Scale mode: seconds into each hour before the sink workers evaluate spike/drop rules on
    the hour just ended (time for them to apply its last events)."""
    allow_private_webhook_targets: bool = False
    """Let webhook channels reach loopback, private, link-local, multicast and unspecified
    addresses (checked when a channel is saved and again, on the resolved address, at every
    delivery). Off: webhooks go to public addresses only, so a namespace admin cannot make the
    server call into its own network. Turn on for receivers on this machine or your network."""


class QueryConfig(_Section):
    """Bounds on the answer to one usage query (meter queries, the customer portal, entitlement
    history), so that no query a caller can form makes the server's memory grow without limit."""

    max_windows: int = Field(50_000, ge=1, le=10_000_000)
    """Most windows one answer is cut into: a 30-day MINUTE query is 43,200, a 5-year HOUR
    query 43,824. A query asking for more is answered 400 ``too_many_windows``."""
    max_rows: int = Field(50_000, ge=1, le=10_000_000)
    """Most rows (window x subject x group) one answer may hold or read from the rollups. A
    query needing more is answered 400 ``too_many_rows``; the showback report counts its billing
    windows against it. Building an answer takes about 1 KB of memory per row while it lasts."""
    max_concurrent: int = Field(4, ge=1, le=256)
    """Most queries answered at the same time; more wait for a turn. Queries are CPU-bound
    Python, so more at once would only multiply their memory, not their speed."""


class AggregationConfig(_Section):
    """The aggregator: the background consumer of the ledger that keeps rollups, live
    entitlement counters and threshold alerts (an ingest answer means "in the ledger")."""

    max_wait: float = Field(5.0, ge=0, le=60)
    """Seconds a usage read (meter query, entitlement value and check, portal query, invoice
    preview, billing run) waits at most for the aggregator to apply the ledger as of the
    request, so a caller reads its own writes; after it the answer is given as it is. 0 never
    waits."""
    check_staleness: float = Field(0.0, ge=0, le=60)
    """Entitlement checks (the check API, and so the middleware) answer at once, without the
    wait above, while the aggregator has been behind the ledger for at most this many seconds:
    a check may then miss the caller's last few writes. 0: checks read their own writes like
    every usage read. Answers say which position they reflect (``Meterline-As-Of-Position``)."""
    chunk: int = Field(20_000, ge=1, le=1_000_000)
    """Most ledger events aggregated in one transaction (a backlog goes in chunks of this)."""
    gather: float = Field(0.05, ge=0, le=1)
    """Seconds the aggregator lets ingest commits accumulate after a wake-up before it applies
    them, so a stream of small commits is aggregated in fewer, larger transactions (fewer rows
    and statements per event). A read that waits for its writes wakes it at once; only reads
    with ``consistency=eventual``, checks within ``check_staleness``, live counters and alerts
    see usage this much later. 0: apply at once after every wake-up."""


class MeteringConfig(_Section):
    """Measures meterline keeps itself, beside the meters users define (docs/meters.md)."""

    ingested_bytes: bool = False
    """Keep the built-in meter ``ingested_bytes`` in every namespace: a SUM of the size of each
    accepted event (the bytes of its canonical JSON), over events of every type, queryable and
    billable like any meter, and read-only. Off by default, so meter lists stay exactly the
    meters users made (OpenMeter clients may compare them). Turning it on counts the events
    already in the ledger (a backfill); in embedded mode it also adds a (namespace, time)
    index to the ledger, and starting the server with it off deletes the meter and its usage
    (a CLI command with it off leaves them). In scale mode set it alike on every API node;
    turned off there, the meters made stay and keep counting."""


class PortalConfig(_Section):
    token_ttl: Duration = timedelta(hours=1)
    """Default lifetime of a portal token (at least one second, at most ``max_token_ttl``)."""
    max_token_ttl: Duration = timedelta(days=1)
    """Longest lifetime a caller may ask for."""

    @model_validator(mode="after")
    def _ttls_ordered(self) -> PortalConfig:
        if not timedelta(seconds=1) <= self.token_ttl <= self.max_token_ttl:
            raise ValueError("token_ttl must be at least 1 second and at most max_token_ttl")
        return self


class AuthConfig(_Section):
    bootstrap_admin_key: bool = True
    """On first start with no keys, create an admin key and print it once."""
    key_cache_seconds: float = Field(2.0, ge=0, le=3600)
    """How long a verified key is cached; revocations take effect within this time."""


class OidcRuleConfig(_Section):
    """Who gets in, and with what: the first rule whose conditions all hold decides."""

    namespace: str = "default"
    """The namespace the dashboard shows to whoever matches."""
    scopes: list[Literal["read", "admin"]] = ["read"]
    """read: every view; admin: also re-submitting dead letters and releasing quarantine."""
    email_domains: list[str] = []
    """The ``email`` claim at one of these domains, with ``email_verified`` true."""
    claims: dict[str, str] = {}
    """Claim name -> value: the claim equals it, or is a list holding it (``groups = "finance"``)."""

    @field_validator("namespace")
    @classmethod
    def _namespace_valid(cls, namespace: str) -> str:
        if not is_namespace(namespace):
            raise ValueError(f"namespace {NAMESPACE_RULE}")
        return namespace


class OidcConfig(_Section):
    """Optional single sign-on for the dashboard (OpenID Connect, authorization code + PKCE).
    Off while ``issuer`` is empty."""

    issuer: str = ""
    """The provider's issuer URL (its discovery document is ``<issuer>/.well-known/openid-configuration``):
    https, or http on a loopback address only."""
    client_id: str = ""
    """This dashboard's client id at the provider."""
    client_secret: str = ""
    """Its client secret (sent with HTTP Basic); empty for a public client (PKCE alone). Prefer
    ``METERLINE_OIDC__CLIENT_SECRET`` to writing it in the file."""
    scopes: list[str] = ["openid", "email", "profile"]
    """Scopes asked for; ``openid`` is always included."""
    redirect_url: str = ""
    """The callback URL registered at the provider; empty: ``<this server>/ui/sign-in/sso/callback``
    as the browser reached it (set it behind a proxy that changes the host or scheme)."""
    label: str = "single sign-on"
    """Shown on the sign-in button: "Sign in with <label>"."""
    rules: list[OidcRuleConfig] = []
    """Claims -> namespace and scopes, tried in order; an identity no rule matches is refused."""

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    @model_validator(mode="after")
    def _complete(self) -> OidcConfig:
        if not self.issuer:
            return self
        url = urlsplit(self.issuer)
        loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
        if not (url.scheme == "https" or (url.scheme == "http" and loopback)) or not url.hostname:
            raise ValueError("issuer must be an https URL (http only on a loopback address)")
        if not self.client_id:
            raise ValueError("client_id is needed when issuer is set")
        if not self.rules:
            raise ValueError("rules are needed when issuer is set: without one, nobody could sign in")
        return self


class HealthConfig(_Section):
    stuck_after: timedelta = Field(timedelta(minutes=2), gt=timedelta(0))
    """A background thread busy this long in one step without progress is reported stuck:
    /readyz answers 503 (METER-005)."""
    max_ingest_latency: float = Field(2.5, gt=0)
    """Seconds. When the 99th percentile of ingest latency over the last minute is above it,
    /readyz and the log warn METER-004 (the server stays ready). Judged at the latency
    histogram's bucket bounds."""
    max_rollup_lag: int = Field(1_000_000, ge=0)
    """Ledger events not yet applied to a meter (``meterline_rollup_lag_events``) above which
    /readyz and the log warn METER-004."""
    max_aggregation_lag: float = Field(30.0, gt=0)
    """Seconds the aggregator has been behind the ledger head without catching up
    (``meterline_aggregation_lag_seconds``) above which /readyz and the log warn METER-004."""
    check_interval: float = Field(5.0, gt=0)
    """Seconds between two checks of latency and lag (and between log lines about them)."""


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class MeterConfig(_Section):
    """A meter defined in the config file (created at start in ``namespace`` if missing)."""

    namespace: str = "default"
    slug: str
    event_type: str
    aggregation: str
    description: str | None = None
    value_property: str | None = None
    group_by: dict[str, str] = {}

    @field_validator("namespace")
    @classmethod
    def _namespace_valid(cls, namespace: str) -> str:
        if not is_namespace(namespace):
            raise ValueError(f"{namespace!r} is not a namespace ({NAMESPACE_RULE})")
        return namespace

    def spec(self) -> MeterSpec:
        import msgspec

        return msgspec.convert(
            {
                "slug": self.slug,
                "eventType": self.event_type,
                "aggregation": self.aggregation,
                "description": self.description,
                "valueProperty": self.value_property,
                "groupBy": self.group_by,
            },
            MeterSpec,
        )


class BillingConfig(_Section):
    scheduler_enabled: bool = True
    """Run due billing periods from inside the server, every ``scheduler_interval``."""
    scheduler_interval: timedelta = Field(timedelta(minutes=1), gt=timedelta(0), le=timedelta(days=1))
    """How often the server's scheduler looks for periods that ended and finalizes them (at most a
    day; for rarer runs turn the scheduler off and run ``meterline billing run`` from cron)."""
    grace_period: Span = timedelta(0)
    """How long after a period ends before it is invoiced (lets slightly late usage land on the
    invoice itself instead of the next one as an adjustment)."""
    adjustment_lookback: Span = timedelta(days=90)
    """How far back invoiced windows are checked for late usage (match the late arrival window)."""
    invoice_prefix: str = Field("INV-", max_length=16, pattern=r"^[A-Za-z0-9._-]*$")
    """Text before the sequential invoice number (INV-000001): letters, digits, '.', '_' and '-',
    so a number is safe in URLs and file names."""
    invoice_digits: int = Field(6, ge=1, le=12)
    """Digits of the zero-padded invoice number."""
    locale: str = "en_US"
    """Locale of the printable HTML invoice's money and dates (Babel/CLDR, e.g. de_DE)."""

    @field_validator("locale")
    @classmethod
    def _locale_known(cls, locale: str) -> str:
        from babel import Locale, UnknownLocaleError  # only when a locale is configured

        try:
            return str(Locale.parse(locale))
        except (UnknownLocaleError, ValueError, TypeError):
            raise ValueError(f"unknown locale {locale!r} (a CLDR locale such as en_US, de_DE or fr)") from None


class ReconcileConfig(_Section):
    tolerance: int = Field(0, ge=0)
    """Unexplained events one meter and period may have before a reconciliation fails
    (``meterline reconcile`` exits non-zero; ``withinTolerance`` is false)."""
    quantity_tolerance: Decimal = Field(Decimal(0), ge=0)
    """Unexplained quantity one meter of one finalized billing window may have (billed against
    metered now) before a reconciliation fails; beyond it, as beyond ``tolerance``."""
    interval: Duration | None = timedelta(hours=1)
    """How often the server reconciles every namespace by itself (empty or None: never); the total of
    unexplained events it found is the ``meterline_reconciliation_unexplained_events`` metric."""
    lookback: timedelta = Field(timedelta(days=35), gt=timedelta(0), le=timedelta(days=400))
    """The days (UTC) the scheduled reconciliation covers, up to now. It reads the ledger of that range."""

    @field_validator("interval", mode="before")
    @classmethod
    def _never(cls, value: object) -> object:
        """An empty value (TOML has no null; ``METERLINE_RECONCILE__INTERVAL=`` in the
        environment) turns the scheduled run off: in scale mode, on all but one API node."""
        return None if value == "" else value


class KafkaConfig(_Section):
    """The scale-mode ledger: a Kafka topic (any Kafka-protocol broker)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of brokers."""
    topic: str = Field("meterline-events", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """The events topic (created with ``partitions`` partitions when missing)."""
    partitions: int = Field(8, ge=1, le=10_000)
    """Partitions of a topic created here; events are keyed by namespace + customer, so a
    customer's events stay in one partition, in order. Sink workers scale up to this number."""
    replication_factor: int = Field(1, ge=1, le=16)
    """Replicas of a topic created here (3 on a production cluster)."""
    consumer_group: str = "meterline-workers"
    """The sink workers' consumer group."""
    session_timeout_ms: int = Field(10_000, ge=1000, le=300_000)
    """Consumer-group session timeout: how soon a dead worker's partitions move to another."""
    heartbeat_interval_ms: int = Field(1000, ge=100, le=60_000)
    """Consumer-group heartbeat interval (well below ``session_timeout_ms``)."""
    delivery_timeout: float = Field(30.0, gt=0, le=600)
    """Seconds an ingest request waits for every event's delivery report (acks=all) before it
    is answered 503 ``storage_unavailable``."""


class ClickHouseConfig(_Section):
    """The scale-mode event and usage store: ClickHouse over its HTTP interface."""

    url: str = "http://127.0.0.1:8123"
    """The HTTP interface (``http://`` or ``https://``, host and port)."""
    database: str = Field("meterline", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    """The database holding the tables (created with them at start when missing)."""
    user: str = "default"
    password: str = ""
    raw_retention: Duration | None = None
    """How long raw events are kept (a TTL on the raw table); None keeps them forever. Rollups
    are kept regardless."""
    dedupe_window: int = Field(10_000, ge=100, le=10_000_000)
    """Inserted blocks whose deduplication token every table remembers
    (``non_replicated_deduplication_window``): a re-consumed batch within this many later
    inserts is dropped, not counted again."""


class PostgresConfig(_Section):
    """The scale-mode catalog and billing store."""

    dsn: str = "postgresql://127.0.0.1:5432/meterline"
    """A libpq connection string or URL."""
    pool_size: int = Field(8, ge=1, le=1000)
    """Most connections one process holds open."""
    connect_timeout: float = Field(10.0, gt=0, le=3600)
    """Seconds to wait for the pool's first connection at start, and for a free connection later."""


class RedisConfig(_Section):
    """The scale-mode live counters and rate-limit windows."""

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "meterline:"
    """Prefix of every key meterline writes (several deployments can share one Redis)."""
    counters: bool = False
    """Scale mode: the sink workers keep live usage counters of SUM and COUNT meters here and
    API nodes answer entitlement values and checks from them instead of a ClickHouse query
    (docs/scale.md, "Live usage counters"). Workers and API nodes must agree."""
    timeout: float = Field(2.0, gt=0, le=60)
    """Seconds to wait for Redis before a counters read falls back to ClickHouse."""


class DedupeConfig(_Section):
    """Scale mode: the store API nodes claim idempotency keys in (docs/scale.md)."""

    backend: Literal["postgres", "redis"] = "postgres"
    """``postgres`` (``[postgres]``; durable with every commit; the default) or ``redis``
    (``[redis]``; durable only as far as that Redis persists). The window is
    ``ingest.dedupe_window``."""
    lease: Duration = timedelta(seconds=30)
    """How long a claim holds its key before a retry may take it over: longer than the slowest
    durable write of an API node (``kafka.delivery_timeout``)."""


class ErasureConfig(_Section):
    """Erasure of a subject (docs/erasure.md)."""

    max_delay: Duration = timedelta(days=30)
    """Scale mode: the longest an erased subject's records may stay in the Kafka topic (GDPR:
    one month). Each API node compares the topic's ``retention.ms`` + ``segment.ms`` with it at
    start and at each erasure: an unlimited, unknown or longer one is logged and shown as a
    ``/readyz`` warning (``METER-007``, check ``erasure_deadline``); readiness is kept."""
    redis_rewrite_wait: float = Field(30.0, ge=0, le=600)
    """Scale mode with Redis (``[dedupe] backend = "redis"`` or ``[redis] counters``): seconds an
    erasure waits for the ``BGREWRITEAOF`` and ``BGSAVE`` it asks Redis for (the sink workers
    stay held meanwhile); one not done by then is recorded ``unfinished``."""
    rewrite_lock_timeout: float = Field(0.5, gt=0, le=60)
    """Scale mode: seconds each ``VACUUM FULL`` of a catalog table after an erasure waits for
    the table's lock (reads and writes of that table queue behind it meanwhile); not granted:
    tried again (``rewrite_attempts``)."""
    rewrite_attempts: int = Field(4, ge=1, le=100)
    """Scale mode: tries per catalog table after an erasure while its lock is busy, the pause
    doubling from ``rewrite_backoff``; still busy: a ``/readyz`` warning (``METER-008``) and
    tried again every few seconds."""
    rewrite_backoff: float = Field(0.25, ge=0, le=60)
    """Scale mode: seconds before the second try of a busy table (doubled before each next)."""


class Config(_Section):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    ingest: IngestConfig = IngestConfig()
    auth: AuthConfig = AuthConfig()
    alerts: AlertsConfig = AlertsConfig()
    portal: PortalConfig = PortalConfig()
    oidc: OidcConfig = OidcConfig()
    health: HealthConfig = HealthConfig()
    query: QueryConfig = QueryConfig()
    aggregation: AggregationConfig = AggregationConfig()
    metering: MeteringConfig = MeteringConfig()
    log: LogConfig = LogConfig()
    billing: BillingConfig = BillingConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    kafka: KafkaConfig = KafkaConfig()
    clickhouse: ClickHouseConfig = ClickHouseConfig()
    postgres: PostgresConfig = PostgresConfig()
    redis: RedisConfig = RedisConfig()
    dedupe: DedupeConfig = DedupeConfig()
    retention: RetentionConfig = RetentionConfig()
    erasure: ErasureConfig = ErasureConfig()
    meters: list[MeterConfig] = []

    @model_validator(mode="after")
    def _retention_fits_ingest(self) -> Config:
        """Pruning must never change an answer: a resend of a pruned event must already be past
        the dedupe window, and no new event may land in an hour whose raw events are gone."""
        raw = self.retention.raw_events
        if raw is None:
            return self
        problems = []
        ch = self.clickhouse.raw_retention
        if ch is not None and ch != raw:
            problems.append("clickhouse.raw_retention differs from retention.raw_events: set only retention.raw_events")
        if self.reconcile.interval is not None and self.reconcile.lookback > raw:
            problems.append(
                f"retention.raw_events ({_days(raw)}) is shorter than reconcile.lookback"
                f" ({_days(self.reconcile.lookback)}): the scheduled reconciliation reads the raw events of its range"
            )
        if self.storage.engine == "scale":  # the dedupe store and the rollups never read raw events
            if problems:
                raise ValueError("; ".join(problems))
            return self
        window = self.ingest.dedupe_window
        if window is None or window > raw:
            problems.append(
                f"retention.raw_events ({_days(raw)}) needs ingest.dedupe_window set to at most as long"
                " (it is " + ("forever" if window is None else _days(window)) + "): a retry of a removed"
                " event would otherwise be counted again"
            )
        late = self.ingest.late_arrival_window
        if late is None or late > raw:
            problems.append(
                f"retention.raw_events ({_days(raw)}) needs ingest.late_arrival_window set to at most as"
                " long (it is " + ("unlimited" if late is None else _days(late)) + "): a late event could"
                " otherwise land in an hour whose raw events were removed"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("meters")
    @classmethod
    def _meters_valid(cls, meters: list[MeterConfig]) -> list[MeterConfig]:
        problems = []
        for m in meters:
            try:
                problems += [f"meter {m.slug!r}: {p}" for p in validate_spec(m.spec())]
            except Exception as exc:  # msgspec conversion errors name the field
                problems.append(f"meter {m.slug!r}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return meters


def _days(span: timedelta) -> str:
    return f"{span.days}d" if span == timedelta(days=span.days) else str(span)


_SHORTCUTS = {
    "METERLINE_HOST": ("server", "host"),
    "METERLINE_PORT": ("server", "port"),
    "METERLINE_DATA_DIR": ("storage", "data_dir"),
    "METERLINE_FSYNC": ("storage", "fsync"),
    "METERLINE_TLS_CERT": ("server", "tls_cert"),
    "METERLINE_TLS_KEY": ("server", "tls_key"),
    "METERLINE_TLS_CLIENT_CA": ("server", "tls_client_ca"),
}


def load_config(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Load and validate. Raises ConfigError listing every problem."""
    data: dict[str, Any] = {}
    path = path or (Path(os.environ["METERLINE_CONFIG"]) if os.environ.get("METERLINE_CONFIG") else None)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for section, values in _env_values().items():
        data.setdefault(section, {}).update(values)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems), problems=problems) from None


def _env_values() -> dict[str, dict[str, Any]]:
    """``METERLINE_<SECTION>__<FIELD>`` variables and the shortcuts, as sections."""
    out: dict[str, dict[str, Any]] = {}
    for env, (section, key) in _SHORTCUTS.items():
        if env in os.environ:
            out.setdefault(section, {})[key] = os.environ[env]
    for name, value in os.environ.items():
        if not name.startswith("METERLINE_") or "__" not in name:
            continue
        section, _, key = name[len("METERLINE_") :].lower().partition("__")
        out.setdefault(section, {})[key] = value
    return out
