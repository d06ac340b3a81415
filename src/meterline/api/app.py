"""``create_app(config)``: the HTTP face over ``bootstrap.build(config)``: routes, middleware, health."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from meterline.api import (
    admin,
    billing,
    corrections,
    customers,
    dashboard,
    entitlements,
    erasure,
    features,
    ingest,
    meter_top,
    meter_values,
    meters,
    notifications,
    ops,
    portal,
    reconcile,
    v2,
)
from meterline.api.auth import Authenticator
from meterline.api.backpressure import Admission, Backpressure
from meterline.api.context import Context
from meterline.api.freshness import FreshnessHeaders
from meterline.api.health import Health, HealthWatch, LatencyWindow
from meterline.api.incidents import IncidentLog
from meterline.api.problems import on_http_error, on_meterline_error, on_unexpected
from meterline.bootstrap import System, ingest_limits
from meterline.bootstrap_scale import ScaleNode, build_node
from meterline.config import Config
from meterline.domain.clock import Clock
from meterline.domain.errors import MeterlineError
from meterline.ports.reconciliation import ReconciliationCounts
from meterline.runtime.background import Ticker
from meterline.runtime.metrics import Metrics
from meterline.services.reconcile import Reconciler
from meterline.services.reconciliation import Reconciliation

log = logging.getLogger("meterline")

INGEST = ingest.IngestEndpoint()
ROUTES = [
    # the hot paths first: Starlette tries routes in order
    Route(ingest.PATH, INGEST, methods=["POST"]),
    Route("/api/v1/entitlements/check", entitlements.check, methods=["POST"]),
    Route("/healthz", ops.healthz),
    Route("/readyz", ops.readyz),
    Route("/metrics", ops.metrics),
    Route("/api/v1/openapi.yaml", ops.openapi),
    Route("/api/v1/events", ingest.list_events, methods=["GET"]),
    Route("/api/v1/events/{event}", corrections.get_event, methods=["GET"]),
    Route("/api/v1/events/{event}/void", corrections.void_event, methods=["POST"]),
    Route("/api/v1/events/{event}/amend", corrections.amend_event, methods=["POST"]),
    Route("/api/v1/backfills", corrections.backfill, methods=["POST"]),
    Route("/api/v1/erasures", erasure.erase, methods=["POST"]),
    Route("/api/v1/erasures", erasure.list_erasures, methods=["GET"]),
    Route("/api/v1/reconciliation", reconcile.reconciliation, methods=["GET"]),
    Route("/api/v1/meters", meters.create_meter, methods=["POST"]),
    Route("/api/v1/meters", meters.list_meters, methods=["GET"]),
    Route("/api/v1/meters/{meter}", meters.get_meter, methods=["GET"]),
    Route("/api/v1/meters/{meter}", meters.update_meter, methods=["PUT"]),
    Route("/api/v1/meters/{meter}", meters.delete_meter, methods=["DELETE"]),
    Route("/api/v1/meters/{meter}/query", meters.query_meter, methods=["GET", "POST"]),
    Route("/api/v1/meters/{meter}/top", meter_top.top_of_meter, methods=["GET"]),
    Route("/api/v1/meters/{meter}/subjects", meter_values.list_subjects, methods=["GET"]),
    Route("/api/v1/meters/{meter}/group-by/{groupByKey}/values", meter_values.list_group_by_values, methods=["GET"]),
    Route("/api/v1/dead-letters", admin.list_dead_letters, methods=["GET"]),
    Route("/api/v1/dead-letters", admin.purge_dead_letters, methods=["DELETE"]),
    Route("/api/v1/dead-letters/resubmit", admin.resubmit_dead_letters, methods=["POST"]),
    Route("/api/v1/keys", admin.create_api_key, methods=["POST"]),
    Route("/api/v1/keys", admin.list_api_keys, methods=["GET"]),
    Route("/api/v1/keys/{key}", admin.revoke_api_key, methods=["DELETE"]),
    Route("/api/v1/settings", customers.get_settings, methods=["GET"]),
    Route("/api/v1/settings", customers.put_settings, methods=["PUT"]),
    Route("/api/v1/quarantine", customers.list_quarantine, methods=["GET"]),
    Route("/api/v1/customers", customers.create_customer, methods=["POST"]),
    Route("/api/v1/customers", customers.list_customers, methods=["GET"]),
    Route("/api/v1/customers/{customer}", customers.get_customer, methods=["GET"]),
    Route("/api/v1/customers/{customer}", customers.replace_customer, methods=["PUT"]),
    Route("/api/v1/customers/{customer}", customers.delete_customer, methods=["DELETE"]),
    Route("/api/v1/customers/{customer}/entitlements", entitlements.create_entitlement, methods=["POST"]),
    Route("/api/v1/customers/{customer}/entitlements", entitlements.list_customer_entitlements, methods=["GET"]),
    Route("/api/v1/customers/{customer}/entitlements/{entitlement}", entitlements.get_entitlement, methods=["GET"]),
    Route(
        "/api/v1/customers/{customer}/entitlements/{entitlement}", entitlements.delete_entitlement, methods=["DELETE"]
    ),
    Route("/api/v1/customers/{customer}/entitlements/{entitlement}/value", entitlements.entitlement_value),
    Route("/api/v1/entitlements", entitlements.list_entitlements, methods=["GET"]),
    Route("/api/v1/entitlements/{entitlement}", entitlements.get_entitlement_by_id, methods=["GET"]),
    Route("/api/v1/features", features.create_feature, methods=["POST"]),
    Route("/api/v1/features", features.list_features, methods=["GET"]),
    Route("/api/v1/features/{feature}", features.get_feature, methods=["GET"]),
    Route("/api/v1/features/{feature}", features.delete_feature, methods=["DELETE"]),
    Route("/api/v1/grants", features.list_grants, methods=["GET"]),
    Route("/api/v1/grants/{grant}", features.void_grant, methods=["DELETE"]),
    Route("/api/v1/subjects", customers.upsert_subjects, methods=["POST"]),
    Route("/api/v1/subjects", customers.list_subjects, methods=["GET"]),
    Route("/api/v1/subjects/{subject}", customers.get_subject, methods=["GET"]),
    Route("/api/v1/subjects/{subject}", customers.delete_subject, methods=["DELETE"]),
    Route("/api/v1/subjects/{subject}/entitlements", entitlements.create_entitlement, methods=["POST"]),
    Route("/api/v1/subjects/{subject}/entitlements", entitlements.list_customer_entitlements, methods=["GET"]),
    Route("/api/v1/subjects/{subject}/entitlements/{entitlement}", entitlements.get_entitlement, methods=["GET"]),
    Route("/api/v1/subjects/{subject}/entitlements/{entitlement}", entitlements.delete_entitlement, methods=["DELETE"]),
    Route("/api/v1/subjects/{subject}/entitlements/{entitlement}/value", entitlements.entitlement_value),
    Route("/api/v1/subjects/{subject}/entitlements/{entitlement}/history", entitlements.entitlement_history),
    Route(
        "/api/v1/subjects/{subject}/entitlements/{entitlement}/reset",
        entitlements.reset_entitlement,
        methods=["POST"],
    ),
    Route(
        "/api/v1/subjects/{subject}/entitlements/{entitlement}/override",
        entitlements.override_entitlement,
        methods=["PUT"],
    ),
    Route("/api/v1/subjects/{subject}/entitlements/{entitlement}/grants", features.create_grant, methods=["POST"]),
    Route(
        "/api/v1/subjects/{subject}/entitlements/{entitlement}/grants",
        features.list_entitlement_grants,
        methods=["GET"],
    ),
    Route("/api/v1/notification/channels", notifications.create_channel, methods=["POST"]),
    Route("/api/v1/notification/channels", notifications.list_channels, methods=["GET"]),
    Route("/api/v1/notification/channels/{channel}", notifications.get_channel, methods=["GET"]),
    Route("/api/v1/notification/channels/{channel}", notifications.update_channel, methods=["PUT"]),
    Route("/api/v1/notification/channels/{channel}", notifications.delete_channel, methods=["DELETE"]),
    Route(
        "/api/v1/notification/channels/{channel}/rotate-secret", notifications.rotate_channel_secret, methods=["POST"]
    ),
    Route("/api/v1/notification/rules", notifications.create_rule, methods=["POST"]),
    Route("/api/v1/notification/rules", notifications.list_rules, methods=["GET"]),
    Route("/api/v1/notification/rules/{rule}", notifications.get_rule, methods=["GET"]),
    Route("/api/v1/notification/rules/{rule}", notifications.update_rule, methods=["PUT"]),
    Route("/api/v1/notification/rules/{rule}", notifications.delete_rule, methods=["DELETE"]),
    Route("/api/v1/notification/rules/{rule}/test", notifications.test_rule, methods=["POST"]),
    Route("/api/v1/notification/events", notifications.list_events, methods=["GET"]),
    Route("/api/v1/notification/events/{event}", notifications.get_event, methods=["GET"]),
    Route("/api/v1/notification/events/{event}/resend", notifications.resend_event, methods=["POST"]),
    Route("/api/v1/portal/tokens", portal.create_token, methods=["POST"]),
    Route("/api/v1/portal/tokens", portal.list_tokens, methods=["GET"]),
    Route("/api/v1/portal/tokens/invalidate", portal.invalidate_tokens, methods=["POST"]),
    Route("/api/v1/portal/meters/{meter}/query", portal.portal_query, methods=["GET"]),
    *billing.ROUTES,
    *v2.ROUTES,
]


def create_app(config: Config, clock: Clock | None = None) -> Starlette:
    system = build_node(config, clock)
    clock, monitor, store = system.clock, system.monitor, system.status
    metrics = Metrics()
    for name, help_text, read in system.gauges():
        metrics.gauge(name, help_text, read)
    metrics.gauge("meterline_dead_letters", "Events in the dead-letter store", system.catalog.dead_letters.count)
    metrics.background(monitor)
    incidents = IncidentLog()
    admission = Admission(
        config.server.max_requests_in_flight,
        config.server.max_body_bytes_in_flight,
        config.server.max_body_bytes,
        incidents,
    )
    metrics.gauge("meterline_requests_in_flight", "API requests being handled", lambda: admission.requests)
    metrics.gauge(
        "meterline_body_bytes_in_flight", "Request-body bytes held by requests in flight", lambda: admission.bytes
    )
    metrics.gauge(
        "meterline_requests_refused",
        "Requests refused with 503 overloaded by backpressure since start (METER-002)",
        lambda: admission.refused,
    )
    ctx = Context(
        config,
        clock,
        system.ledger,
        Authenticator(system.catalog.keys, config.auth.key_cache_seconds, config.server.tls_client_namespaces),
        metrics,
        ingest_limits(config),
        system.catalog,
        system.billing,
    )
    dispatcher = system.dispatcher
    ctx.dispatcher = dispatcher
    if isinstance(system, System):  # scale mode: the raw table's TTL, stated in docs/retention.md
        ctx.raw_events_from = system.raw_events_from
    watch = HealthWatch(
        config.health,
        LatencyWindow(metrics.latency),
        store.pending_backfill,
        monitor,
        system.lag_seconds,
    )
    blocked = system.retention_blocked if isinstance(system, System) else (lambda: None)
    deadline = system.erasure_deadline if isinstance(system, ScaleNode) else None
    late = None if deadline is None else deadline.problem
    unwritten = system.erasure_files if isinstance(system, ScaleNode) else None
    health = Health(
        store, monitor, watch, admission, retention_blocked=blocked, erasure_deadline=late, erasure_files=unwritten
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Everything built so far (modules, routes, caches, the entitlement index) lives as long
        # as the process: move it out of the collector's sight, so a full collection does not
        # walk it in the middle of a request (p99 of the check API: spikes to 11-14 ms without).
        gc.collect()
        gc.freeze()
        system.start()
        watch.start()
        job = getattr(app.state, "reconcile_job", None)
        if job is not None:
            job.start()
        yield
        if job is not None:
            job.close()
        watch.close()
        system.close()

    app = Starlette(
        routes=[*ROUTES, *dashboard.ROUTES],  # the browser pages under /ui: not part of the API document
        lifespan=lifespan,
        middleware=[
            Middleware(Backpressure, admission=admission, retry_after=config.server.retry_after),
            Middleware(FreshnessHeaders),
            Middleware(ingest.FastLane, endpoint=INGEST),
        ],
        exception_handlers={MeterlineError: on_meterline_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.ctx = ctx
    app.state.system = system  # for operators' tools and tests: the wired store and loops
    app.state.health = health
    app.state.incidents = incidents
    app.state.retry_after = config.server.retry_after
    app.state.dashboard = board = dashboard.Dashboard(ctx, system)
    if board.reconciliation is not None and system.counts is not None:  # else GET answers 501
        _reconcile(app, metrics, board.reconciliation, system.counts, config, clock)
    return app


def _reconcile(
    app: Starlette,
    metrics: Metrics,
    reconciliation: Reconciliation,
    counts: ReconciliationCounts,
    config: Config,
    clock: Clock,
) -> None:
    """The reconciler behind ``GET /api/v1/reconciliation``, its metric and its scheduled run."""
    settings = config.reconcile
    reconciler = Reconciler(
        reconciliation, counts, tolerance=settings.tolerance, quantity_tolerance=settings.quantity_tolerance
    )
    app.state.reconciler = reconciler
    metrics.gauge(
        "meterline_reconciliation_unexplained_events",
        "Events the last reconciliation of each namespace could not explain (rollups that disagree with the ledger)",
        reconciler.unexplained,
    )
    metrics.gauge(
        "meterline_reconciliation_unexplained_billed",
        "Meters of finalized billing windows whose billed quantity the last reconciliation of each namespace could"
        " not explain beyond reconcile.quantity_tolerance (neither late nor voided events since)",
        reconciler.unexplained_billed,
    )
    every = config.reconcile.interval
    if every is not None:
        lookback = config.reconcile.lookback
        # not watched for stalls: one run over a long range may read the ledger for minutes
        job = Ticker("reconcile", lambda: reconciler.run_all(clock, lookback), every.total_seconds)
        app.state.reconcile_job = job


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)
