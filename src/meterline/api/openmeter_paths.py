"""OpenMeter's documented API paths (its OpenAPI document, v1 and v2), with the operation id of
each method.

A request for one of these operations that meterline does not serve is answered 501
``not_supported`` naming the OpenMeter operation (``problems.on_http_error``), never a bare 404
or 405: a client of OpenMeter learns at once that the call is unsupported here rather than
mistyped."""

from __future__ import annotations

import re

PATHS: dict[str, dict[str, str]] = {
    "/api/v1/addons": {"GET": "listAddons", "POST": "createAddon"},
    "/api/v1/addons/{addonId}": {"DELETE": "deleteAddon", "GET": "getAddon", "PUT": "updateAddon"},
    "/api/v1/addons/{addonId}/archive": {"POST": "archiveAddon"},
    "/api/v1/addons/{addonId}/publish": {"POST": "publishAddon"},
    "/api/v1/apps": {"GET": "listApps"},
    "/api/v1/apps/custom-invoicing/{invoiceId}/draft/synchronized": {"POST": "appCustomInvoicingDraftSynchronized"},
    "/api/v1/apps/custom-invoicing/{invoiceId}/issuing/synchronized": {"POST": "appCustomInvoicingIssuingSynchronized"},
    "/api/v1/apps/custom-invoicing/{invoiceId}/payment/status": {"POST": "appCustomInvoicingUpdatePaymentStatus"},
    "/api/v1/apps/{id}": {"DELETE": "uninstallApp", "GET": "getApp", "PUT": "updateApp"},
    "/api/v1/apps/{id}/stripe/api-key": {"PUT": "updateStripeAPIKey"},
    "/api/v1/apps/{id}/stripe/webhook": {"POST": "appStripeWebhook"},
    "/api/v1/billing/customers": {"GET": "listBillingProfileCustomerOverrides"},
    "/api/v1/billing/customers/{customerId}": {
        "DELETE": "deleteBillingProfileCustomerOverride",
        "GET": "getBillingProfileCustomerOverride",
        "PUT": "upsertBillingProfileCustomerOverride",
    },
    "/api/v1/billing/customers/{customerId}/invoices/pending-lines": {"POST": "createPendingInvoiceLine"},
    "/api/v1/billing/customers/{customerId}/invoices/simulate": {"POST": "simulateInvoice"},
    "/api/v1/billing/invoices": {"GET": "listInvoices"},
    "/api/v1/billing/invoices/invoice": {"POST": "invoicePendingLinesAction"},
    "/api/v1/billing/invoices/{invoiceId}": {"DELETE": "deleteInvoice", "GET": "getInvoice", "PUT": "updateInvoice"},
    "/api/v1/billing/invoices/{invoiceId}/advance": {"POST": "advanceInvoiceAction"},
    "/api/v1/billing/invoices/{invoiceId}/approve": {"POST": "approveInvoiceAction"},
    "/api/v1/billing/invoices/{invoiceId}/retry": {"POST": "retryInvoiceAction"},
    "/api/v1/billing/invoices/{invoiceId}/snapshot-quantities": {"POST": "snapshotQuantitiesInvoiceAction"},
    "/api/v1/billing/invoices/{invoiceId}/taxes/recalculate": {"POST": "recalculateInvoiceTaxAction"},
    "/api/v1/billing/invoices/{invoiceId}/void": {"POST": "voidInvoiceAction"},
    "/api/v1/billing/profiles": {"GET": "listBillingProfiles", "POST": "createBillingProfile"},
    "/api/v1/billing/profiles/{id}": {
        "DELETE": "deleteBillingProfile",
        "GET": "getBillingProfile",
        "PUT": "updateBillingProfile",
    },
    "/api/v1/customers": {"GET": "listCustomers", "POST": "createCustomer"},
    "/api/v1/customers/{customerIdOrKey}": {"DELETE": "deleteCustomer", "GET": "getCustomer", "PUT": "updateCustomer"},
    "/api/v1/customers/{customerIdOrKey}/access": {"GET": "getCustomerAccess"},
    "/api/v1/customers/{customerIdOrKey}/apps": {"GET": "listCustomerAppData", "PUT": "upsertCustomerAppData"},
    "/api/v1/customers/{customerIdOrKey}/apps/{appId}": {"DELETE": "deleteCustomerAppData"},
    "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value": {"GET": "getCustomerEntitlementValue"},
    "/api/v1/customers/{customerIdOrKey}/stripe": {
        "GET": "getCustomerStripeAppData",
        "PUT": "upsertCustomerStripeAppData",
    },
    "/api/v1/customers/{customerIdOrKey}/stripe/portal": {"POST": "createCustomerStripePortalSession"},
    "/api/v1/customers/{customerIdOrKey}/subscriptions": {"GET": "listCustomerSubscriptions"},
    "/api/v1/debug/metrics": {"GET": "getDebugMetrics"},
    "/api/v1/entitlements": {"GET": "listEntitlements"},
    "/api/v1/entitlements/{entitlementId}": {"GET": "getEntitlementById"},
    "/api/v1/events": {"GET": "listEvents", "POST": "ingestEvents"},
    "/api/v1/features": {"GET": "listFeatures", "POST": "createFeature"},
    "/api/v1/features/{featureId}": {"DELETE": "deleteFeature", "GET": "getFeature"},
    "/api/v1/grants": {"GET": "listGrants"},
    "/api/v1/grants/{grantId}": {"DELETE": "voidGrant"},
    "/api/v1/info/currencies": {"GET": "listCurrencies"},
    "/api/v1/info/progress/{id}": {"GET": "getProgress"},
    "/api/v1/marketplace/listings": {"GET": "listMarketplaceListings"},
    "/api/v1/marketplace/listings/{type}": {"GET": "getMarketplaceListing"},
    "/api/v1/marketplace/listings/{type}/install": {"POST": "marketplaceAppInstall"},
    "/api/v1/marketplace/listings/{type}/install/apikey": {"POST": "marketplaceAppAPIKeyInstall"},
    "/api/v1/marketplace/listings/{type}/install/oauth2": {"GET": "marketplaceOAuth2InstallGetURL"},
    "/api/v1/marketplace/listings/{type}/install/oauth2/authorize": {"GET": "marketplaceOAuth2InstallAuthorize"},
    "/api/v1/meters": {"GET": "listMeters", "POST": "createMeter"},
    "/api/v1/meters/{meterIdOrSlug}": {"DELETE": "deleteMeter", "GET": "getMeter", "PUT": "updateMeter"},
    "/api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values": {"GET": "listMeterGroupByValues"},
    "/api/v1/meters/{meterIdOrSlug}/query": {"GET": "queryMeter", "POST": "queryMeterPost"},
    "/api/v1/meters/{meterIdOrSlug}/subjects": {"GET": "listMeterSubjects"},
    "/api/v1/notification/channels": {"GET": "listNotificationChannels", "POST": "createNotificationChannel"},
    "/api/v1/notification/channels/{channelId}": {
        "DELETE": "deleteNotificationChannel",
        "GET": "getNotificationChannel",
        "PUT": "updateNotificationChannel",
    },
    "/api/v1/notification/events": {"GET": "listNotificationEvents"},
    "/api/v1/notification/events/{eventId}": {"GET": "getNotificationEvent"},
    "/api/v1/notification/events/{eventId}/resend": {"POST": "resendNotificationEvent"},
    "/api/v1/notification/rules": {"GET": "listNotificationRules", "POST": "createNotificationRule"},
    "/api/v1/notification/rules/{ruleId}": {
        "DELETE": "deleteNotificationRule",
        "GET": "getNotificationRule",
        "PUT": "updateNotificationRule",
    },
    "/api/v1/notification/rules/{ruleId}/test": {"POST": "testNotificationRule"},
    "/api/v1/plans": {"GET": "listPlans", "POST": "createPlan"},
    "/api/v1/plans/{planIdOrKey}/next": {"POST": "nextPlan"},
    "/api/v1/plans/{planId}": {"DELETE": "deletePlan", "GET": "getPlan", "PUT": "updatePlan"},
    "/api/v1/plans/{planId}/addons": {"GET": "listPlanAddons", "POST": "createPlanAddon"},
    "/api/v1/plans/{planId}/addons/{planAddonId}": {
        "DELETE": "deletePlanAddon",
        "GET": "getPlanAddon",
        "PUT": "updatePlanAddon",
    },
    "/api/v1/plans/{planId}/archive": {"POST": "archivePlan"},
    "/api/v1/plans/{planId}/publish": {"POST": "publishPlan"},
    "/api/v1/portal/meters/{meterSlug}/query": {"GET": "queryPortalMeter"},
    "/api/v1/portal/tokens": {"GET": "listPortalTokens", "POST": "createPortalToken"},
    "/api/v1/portal/tokens/invalidate": {"POST": "invalidatePortalTokens"},
    "/api/v1/stripe/checkout/sessions": {"POST": "createStripeCheckoutSession"},
    "/api/v1/subjects": {"GET": "listSubjects", "POST": "upsertSubject"},
    "/api/v1/subjects/{subjectIdOrKey}": {"DELETE": "deleteSubject", "GET": "getSubject"},
    "/api/v1/subjects/{subjectIdOrKey}/entitlements": {"GET": "listSubjectEntitlements", "POST": "createEntitlement"},
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": {
        "GET": "listEntitlementGrants",
        "POST": "createGrant",
    },
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": {
        "PUT": "overrideEntitlement"
    },
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": {"GET": "getEntitlementValue"},
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}": {
        "DELETE": "deleteEntitlement",
        "GET": "getEntitlement",
    },
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/history": {"GET": "getEntitlementHistory"},
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/reset": {"POST": "resetEntitlementUsage"},
    "/api/v1/subscriptions": {"POST": "createSubscription"},
    "/api/v1/subscriptions/{subscriptionId}": {
        "DELETE": "deleteSubscription",
        "GET": "getSubscription",
        "PATCH": "editSubscription",
    },
    "/api/v1/subscriptions/{subscriptionId}/addons": {
        "GET": "listSubscriptionAddons",
        "POST": "createSubscriptionAddon",
    },
    "/api/v1/subscriptions/{subscriptionId}/addons/{subscriptionAddonId}": {
        "GET": "getSubscriptionAddon",
        "PATCH": "updateSubscriptionAddon",
    },
    "/api/v1/subscriptions/{subscriptionId}/cancel": {"POST": "cancelSubscription"},
    "/api/v1/subscriptions/{subscriptionId}/change": {"POST": "changeSubscription"},
    "/api/v1/subscriptions/{subscriptionId}/migrate": {"POST": "migrateSubscription"},
    "/api/v1/subscriptions/{subscriptionId}/restore": {"POST": "restoreSubscription"},
    "/api/v1/subscriptions/{subscriptionId}/unschedule-cancelation": {"POST": "unscheduleCancelation"},
    "/api/v2/customers/{customerIdOrKey}/entitlements": {
        "GET": "listCustomerEntitlementsV2",
        "POST": "createCustomerEntitlementV2",
    },
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}": {
        "DELETE": "deleteCustomerEntitlementV2",
        "GET": "getCustomerEntitlementV2",
    },
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": {
        "GET": "listCustomerEntitlementGrantsV2",
        "POST": "createCustomerEntitlementGrantV2",
    },
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/history": {
        "GET": "getCustomerEntitlementHistoryV2"
    },
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": {
        "PUT": "overrideCustomerEntitlementV2"
    },
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/reset": {
        "POST": "resetCustomerEntitlementUsageV2"
    },
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": {
        "GET": "getCustomerEntitlementValueV2"
    },
    "/api/v2/entitlements": {"GET": "listEntitlementsV2"},
    "/api/v2/entitlements/{entitlementId}": {"GET": "getEntitlementByIdV2"},
    "/api/v2/events": {"GET": "listEventsV2"},
    "/api/v2/grants": {"GET": "listGrantsV2"},
}

_COMPILED = [
    (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"), template, methods)
    for template, methods in PATHS.items()
]


def openmeter_operation(method: str, path: str) -> tuple[str, str] | None:
    """OpenMeter's path template and operation id for ``method`` on ``path``, or None."""
    for pattern, template, methods in _COMPILED:
        if pattern.match(path) and method in methods:
            return template, methods[method]
    return None
