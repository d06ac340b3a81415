"""OpenMeter's documented API paths (its OpenAPI document, v1 and v2), with their methods.

A request for one of these that meterline does not serve is answered 501 ``not_supported``
naming the OpenMeter operation (``problems.on_http_error``), never a bare 404: a client of
OpenMeter learns at once that the call is unsupported here rather than mistyped."""

from __future__ import annotations

import re

PATHS: dict[str, tuple[str, ...]] = {
    "/api/v1/addons": ("GET", "POST"),
    "/api/v1/addons/{addonId}": ("DELETE", "GET", "PUT"),
    "/api/v1/addons/{addonId}/archive": ("POST",),
    "/api/v1/addons/{addonId}/publish": ("POST",),
    "/api/v1/apps": ("GET",),
    "/api/v1/apps/custom-invoicing/{invoiceId}/draft/synchronized": ("POST",),
    "/api/v1/apps/custom-invoicing/{invoiceId}/issuing/synchronized": ("POST",),
    "/api/v1/apps/custom-invoicing/{invoiceId}/payment/status": ("POST",),
    "/api/v1/apps/{id}": ("DELETE", "GET", "PUT"),
    "/api/v1/apps/{id}/stripe/api-key": ("PUT",),
    "/api/v1/apps/{id}/stripe/webhook": ("POST",),
    "/api/v1/billing/customers": ("GET",),
    "/api/v1/billing/customers/{customerId}": ("DELETE", "GET", "PUT"),
    "/api/v1/billing/customers/{customerId}/invoices/pending-lines": ("POST",),
    "/api/v1/billing/customers/{customerId}/invoices/simulate": ("POST",),
    "/api/v1/billing/invoices": ("GET",),
    "/api/v1/billing/invoices/invoice": ("POST",),
    "/api/v1/billing/invoices/{invoiceId}": ("DELETE", "GET", "PUT"),
    "/api/v1/billing/invoices/{invoiceId}/advance": ("POST",),
    "/api/v1/billing/invoices/{invoiceId}/approve": ("POST",),
    "/api/v1/billing/invoices/{invoiceId}/retry": ("POST",),
    "/api/v1/billing/invoices/{invoiceId}/snapshot-quantities": ("POST",),
    "/api/v1/billing/invoices/{invoiceId}/taxes/recalculate": ("POST",),
    "/api/v1/billing/invoices/{invoiceId}/void": ("POST",),
    "/api/v1/billing/profiles": ("GET", "POST"),
    "/api/v1/billing/profiles/{id}": ("DELETE", "GET", "PUT"),
    "/api/v1/customers": ("GET", "POST"),
    "/api/v1/customers/{customerIdOrKey}": ("DELETE", "GET", "PUT"),
    "/api/v1/customers/{customerIdOrKey}/access": ("GET",),
    "/api/v1/customers/{customerIdOrKey}/apps": ("GET", "PUT"),
    "/api/v1/customers/{customerIdOrKey}/apps/{appId}": ("DELETE",),
    "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value": ("GET",),
    "/api/v1/customers/{customerIdOrKey}/stripe": ("GET", "PUT"),
    "/api/v1/customers/{customerIdOrKey}/stripe/portal": ("POST",),
    "/api/v1/customers/{customerIdOrKey}/subscriptions": ("GET",),
    "/api/v1/debug/metrics": ("GET",),
    "/api/v1/entitlements": ("GET",),
    "/api/v1/entitlements/{entitlementId}": ("GET",),
    "/api/v1/events": ("GET", "POST"),
    "/api/v1/features": ("GET", "POST"),
    "/api/v1/features/{featureId}": ("DELETE", "GET"),
    "/api/v1/grants": ("GET",),
    "/api/v1/grants/{grantId}": ("DELETE",),
    "/api/v1/info/currencies": ("GET",),
    "/api/v1/info/progress/{id}": ("GET",),
    "/api/v1/marketplace/listings": ("GET",),
    "/api/v1/marketplace/listings/{type}": ("GET",),
    "/api/v1/marketplace/listings/{type}/install": ("POST",),
    "/api/v1/marketplace/listings/{type}/install/apikey": ("POST",),
    "/api/v1/marketplace/listings/{type}/install/oauth2": ("GET",),
    "/api/v1/marketplace/listings/{type}/install/oauth2/authorize": ("GET",),
    "/api/v1/meters": ("GET", "POST"),
    "/api/v1/meters/{meterIdOrSlug}": ("DELETE", "GET", "PUT"),
    "/api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values": ("GET",),
    "/api/v1/meters/{meterIdOrSlug}/query": ("GET", "POST"),
    "/api/v1/meters/{meterIdOrSlug}/subjects": ("GET",),
    "/api/v1/notification/channels": ("GET", "POST"),
    "/api/v1/notification/channels/{channelId}": ("DELETE", "GET", "PUT"),
    "/api/v1/notification/events": ("GET",),
    "/api/v1/notification/events/{eventId}": ("GET",),
    "/api/v1/notification/events/{eventId}/resend": ("POST",),
    "/api/v1/notification/rules": ("GET", "POST"),
    "/api/v1/notification/rules/{ruleId}": ("DELETE", "GET", "PUT"),
    "/api/v1/notification/rules/{ruleId}/test": ("POST",),
    "/api/v1/plans": ("GET", "POST"),
    "/api/v1/plans/{planIdOrKey}/next": ("POST",),
    "/api/v1/plans/{planId}": ("DELETE", "GET", "PUT"),
    "/api/v1/plans/{planId}/addons": ("GET", "POST"),
    "/api/v1/plans/{planId}/addons/{planAddonId}": ("DELETE", "GET", "PUT"),
    "/api/v1/plans/{planId}/archive": ("POST",),
    "/api/v1/plans/{planId}/publish": ("POST",),
    "/api/v1/portal/meters/{meterSlug}/query": ("GET",),
    "/api/v1/portal/tokens": ("GET", "POST"),
    "/api/v1/portal/tokens/invalidate": ("POST",),
    "/api/v1/stripe/checkout/sessions": ("POST",),
    "/api/v1/subjects": ("GET", "POST"),
    "/api/v1/subjects/{subjectIdOrKey}": ("DELETE", "GET"),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements": ("GET", "POST"),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": ("GET", "POST"),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": ("PUT",),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": ("GET",),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}": ("DELETE", "GET"),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/history": ("GET",),
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/reset": ("POST",),
    "/api/v1/subscriptions": ("POST",),
    "/api/v1/subscriptions/{subscriptionId}": ("DELETE", "GET", "PATCH"),
    "/api/v1/subscriptions/{subscriptionId}/addons": ("GET", "POST"),
    "/api/v1/subscriptions/{subscriptionId}/addons/{subscriptionAddonId}": ("GET", "PATCH"),
    "/api/v1/subscriptions/{subscriptionId}/cancel": ("POST",),
    "/api/v1/subscriptions/{subscriptionId}/change": ("POST",),
    "/api/v1/subscriptions/{subscriptionId}/migrate": ("POST",),
    "/api/v1/subscriptions/{subscriptionId}/restore": ("POST",),
    "/api/v1/subscriptions/{subscriptionId}/unschedule-cancelation": ("POST",),
    "/api/v2/customers/{customerIdOrKey}/entitlements": ("GET", "POST"),
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}": ("DELETE", "GET"),
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": ("GET", "POST"),
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/history": ("GET",),
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": ("PUT",),
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/reset": ("POST",),
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": ("GET",),
    "/api/v2/entitlements": ("GET",),
    "/api/v2/entitlements/{entitlementId}": ("GET",),
    "/api/v2/events": ("GET",),
    "/api/v2/grants": ("GET",),
}

_COMPILED = [
    (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"), template, methods)
    for template, methods in PATHS.items()
]


def openmeter_path(path: str) -> tuple[str, tuple[str, ...]] | None:
    """The OpenMeter path template ``path`` matches and its methods, or None."""
    for pattern, template, methods in _COMPILED:
        if pattern.match(path):
            return template, methods
    return None
