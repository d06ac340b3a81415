"""The web dashboard, served by the API process under ``/ui``.

Server-rendered pages (Jinja2) over the same services the API calls, with htmx for live
refresh and forms and uPlot for time series charts, both vendored under ``static/vendor``
(see ``VENDORED.md`` there). Views: executive, on-call, debug (events, customers, dead letters,
quarantine), reconciliation, and the customer portal page (opened with a portal token, not a
session). Sign-in, the session cookie and CSRF: ``session``; single sign-on (OIDC): ``sso``.
Every number says how fresh it is.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from meterline.api.context import Context
from meterline.api.dashboard import customers, debug, executive, oncall, portal_page, reconciliation, signin, sso
from meterline.api.dashboard.oncall import Sampler
from meterline.api.dashboard.session import Sessions
from meterline.api.meter_query import limits_of
from meterline.bootstrap import Node, identity_provider
from meterline.services.customer_report import CustomerReports
from meterline.services.insights import Insights
from meterline.services.reconciliation import Reconciliation

__all__ = ["ROUTES", "Dashboard"]


class Dashboard:
    """What the pages use, built once per app from the app's services."""

    def __init__(self, ctx: Context, system: Node) -> None:
        c, b, limits = ctx.catalog, ctx.billing, limits_of(ctx.config)
        self.sessions = Sessions(ctx)
        self.identity = identity_provider(ctx.config, ctx.clock)
        """The single sign-on provider (None: SSO is off)."""
        self.sampler = Sampler()
        self.insights = Insights(c.meters, c.usage, c.customers, c.features, b.invoices, limits, c.ranking)
        self.reports = CustomerReports(
            c.customers, c.meters, c.usage, c.features, c.entitlements, c.values, c.notifications, b.invoices,
            b.credits, limits,
        )  # fmt: skip
        self.resubmission = c.resubmission
        self.reconciliation = (
            None if system.counts is None else Reconciliation(system.counts, self.insights, b.invoices)
        )
        """None when the store offers no reconciliation counts (the view is a 501); both storage
        modes offer them."""


ROUTES: list[BaseRoute] = [
    Route("/", signin.to_dashboard, methods=["GET"]),
    Route("/dashboard", signin.to_dashboard, methods=["GET"]),
    Route("/ui", signin.to_dashboard, methods=["GET"]),
    Route("/ui/", signin.home, methods=["GET"]),
    Route("/ui/sign-in", signin.sign_in_form, methods=["GET"]),
    Route("/ui/sign-in", signin.sign_in, methods=["POST"]),
    Route("/ui/sign-out", signin.sign_out, methods=["POST"]),
    Route("/ui/sign-in/sso", sso.start, methods=["GET"]),
    Route("/ui/sign-in/sso/callback", sso.callback, methods=["GET"]),
    Route("/ui/executive", executive.executive, methods=["GET"]),
    Route("/ui/oncall", oncall.oncall, methods=["GET"]),
    Route("/ui/events", debug.events, methods=["GET"]),
    Route("/ui/customers", customers.customers, methods=["GET"]),
    Route("/ui/customers/{customer}", customers.customer, methods=["GET"]),
    Route("/ui/dead-letters", debug.dead_letters, methods=["GET"]),
    Route("/ui/dead-letters/resubmit", debug.resubmit, methods=["POST"]),
    Route("/ui/quarantine", debug.quarantine, methods=["GET"]),
    Route("/ui/quarantine/release", debug.release, methods=["POST"]),
    Route("/ui/reconciliation", reconciliation.reconciliation, methods=["GET"]),
    Route("/ui/portal", portal_page.portal, methods=["GET"]),
    Mount("/ui/static", app=StaticFiles(packages=[("meterline.api.dashboard", "static")]), name="dashboard-static"),
    Route("/ui/{rest:path}", signin.not_found, methods=["GET", "POST"]),
]
