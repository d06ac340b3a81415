"""One error hierarchy with stable codes.

    MeterlineError                 code            HTTP
    ├── InvalidInput               invalid_input   400  (also subclasses with own codes)
    │   └── UnalignedRange         unaligned_range 400
    ├── Unauthorized               unauthorized    401  METER-003
    ├── Forbidden                  forbidden       403
    ├── NotFound                   not_found       404
    ├── Conflict                   conflict        409
    ├── PayloadTooLarge            payload_too_large 413
    ├── UnsupportedMediaType       unsupported_media_type 415
    ├── ConfigError                invalid_config  (CLI only)
    ├── NotSupported               not_supported   501  (extra: mode)
    ├── Backfilling                meter_backfilling 503
    ├── StorageUnavailable         storage_unavailable 503  METER-001
    │   └── ErasureInProgress      erasure_in_progress 503  METER-001
    └── Overloaded                 overloaded      503  METER-002

The HTTP layer maps ``status`` and ``code`` to problem+json in one place
(``meterline.api.problems``); the CLI prints ``str(exc)`` and exits non-zero. Messages are
written for the caller: they never contain internal exception text.

Operational failures also carry an :class:`OpsCode` (``operational_code``): a short, stable
incident code that operators find in problem bodies (``operationalCode``), in the JSON log and
in ``/readyz``. Every 503 answer carries ``Retry-After``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class OpsCode(StrEnum):
    """Incident codes for operators; docs/operations.md has what each means and what to run."""

    STORAGE_UNAVAILABLE = "METER-001"
    """A commit failed (disk full, I/O error) or the store cannot be read."""
    OVERLOADED = "METER-002"
    """The ingest buffer is full: requests in flight or their bytes are at the configured bound."""
    AUTHENTICATION_FAILED = "METER-003"
    """A request carried no valid API key or portal token."""
    LAGGING = "METER-004"
    """Request latency or aggregation lag is above its configured threshold."""
    BACKGROUND_STALLED = "METER-005"
    """A background thread (writer, backfill, dispatcher, scanner, scheduler) is dead or stuck."""
    LEDGER_MISMATCH = "METER-006"
    """Retention stopped at a ledger entry that does not match the hash chain (run verify)."""
    ERASURE_DEADLINE = "METER-007"
    """Scale mode: the Kafka topic may keep an erased subject's records longer than
    ``erasure.max_delay`` (unlimited, longer or unknown retention)."""
    ERASURE_FILES = "METER-008"
    """Scale mode: a PostgreSQL table an erasure changed could not be rewritten yet (its lock
    stayed busy, or an open transaction still sees old rows): its files may still hold what the
    erasure deleted until a later try succeeds."""


class MeterlineError(Exception):
    """Base of every error meterline raises on purpose."""

    code = "internal_error"
    status = 500
    title = "Internal error"
    operational_code: OpsCode | None = None

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidInput(MeterlineError):
    code = "invalid_input"
    status = 400
    title = "Invalid input"


class UnalignedRange(InvalidInput):
    code = "unaligned_range"
    title = "Query range is not aligned"


class Unauthorized(MeterlineError):
    code = "unauthorized"
    status = 401
    title = "Unauthorized"
    operational_code = OpsCode.AUTHENTICATION_FAILED


class Forbidden(MeterlineError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(MeterlineError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(MeterlineError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PayloadTooLarge(MeterlineError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(MeterlineError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class ConfigError(MeterlineError):
    code = "invalid_config"
    status = 500
    title = "Invalid configuration"


class NotSupported(MeterlineError):
    """What this storage mode does not offer (yet); the problem names the mode (``mode``)."""

    code = "not_supported"
    status = 501
    title = "Not supported in this storage mode"


class Backfilling(MeterlineError):
    """A meter's usage is still being derived from the ledger (a new meter, or one whose
    ``groupBy`` changed) and did not finish within the read's wait: answering would give part
    of its usage as if it were all (extra: ``applied``, ``to``)."""

    code = "meter_backfilling"
    status = 503
    title = "Meter usage is being derived"


class StorageUnavailable(MeterlineError):
    code = "storage_unavailable"
    status = 503
    title = "Storage unavailable"
    operational_code = OpsCode.STORAGE_UNAVAILABLE


class ErasureInProgress(StorageUnavailable):
    """Scale mode: an erasure of a subject is unfinished (its usage may stand under the subject
    and its pseudonym side by side) and did not finish within the read's wait: answering could
    count that usage twice."""

    code = "erasure_in_progress"
    status = 503
    title = "An erasure of a subject is in progress"


class ProviderUnavailable(MeterlineError):
    """The single sign-on provider could not be reached or answered nonsense."""

    code = "sso_unavailable"
    status = 502
    title = "Identity provider unavailable"


class Overloaded(MeterlineError):
    """Backpressure: the server holds as much work as it is configured to; retry later."""

    code = "overloaded"
    status = 503
    title = "Overloaded"
    operational_code = OpsCode.OVERLOADED


# Billing (meterline.domain.billing): pricing, plans, subscriptions, invoices.
#
#     InvalidInput
#     ├── UnknownCurrency          unknown_currency        400
#     ├── InvalidPlan              invalid_plan            400  (extra: problems=[...])
#     ├── InvalidSubscription      invalid_subscription    400  (extra: problems=[...])
#     └── CurrencyMismatch         currency_mismatch       400
#     Conflict
#     └── PlanVersionPublished     plan_version_published  409


class UnknownCurrency(InvalidInput):
    code = "unknown_currency"
    title = "Unknown currency"


class InvalidPlan(InvalidInput):
    code = "invalid_plan"
    title = "Invalid price plan"


class InvalidSubscription(InvalidInput):
    code = "invalid_subscription"
    title = "Invalid subscription"


class CurrencyMismatch(InvalidInput):
    code = "currency_mismatch"
    title = "Currencies do not match"


class PlanVersionPublished(Conflict):
    code = "plan_version_published"
    title = "Published plan versions never change"


# Notifications and the customer portal (meterline.domain.notify.signing, meterline.domain.auth.portal).
#
#     Unauthorized
#     ├── WebhookVerificationError webhook_signature_invalid 401  (extra: reason=...)
#     └── PortalTokenInvalid       portal_token_invalid      401  (extra: reason=...)


class WebhookVerificationError(Unauthorized):
    """A webhook's Standard Webhooks headers or signature did not check out (``extra["reason"]`` says which)."""

    code = "webhook_signature_invalid"
    title = "Webhook signature invalid"


class PortalTokenInvalid(Unauthorized):
    """A customer portal token is malformed, forged, expired or not for us; the message never echoes it."""

    code = "portal_token_invalid"
    title = "Portal token invalid"
