"""The web dashboard, served by the API process under ``/ui``.

Server-rendered pages (Jinja2) over the same services the API calls, with htmx for live
refresh and forms and uPlot for time series charts, both vendored under ``static/vendor``
(see ``VENDORED.md`` there). Views: executive, on-call, debug (events, customers, dead letters,
quarantine), reconciliation, and the customer portal page (opened with a portal token, not a
session). Sign-in, the session cookie and CSRF: ``session``. Every number says how fresh it is.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from meterline.api.dashboard import oncall, signin
from meterline.api.dashboard.oncall import Sampler
from meterline.api.dashboard.session import Sessions

__all__ = ["ROUTES", "Sampler", "Sessions"]

ROUTES: list[BaseRoute] = [
    Route("/", signin.to_dashboard, methods=["GET"]),
    Route("/dashboard", signin.to_dashboard, methods=["GET"]),
    Route("/ui", signin.to_dashboard, methods=["GET"]),
    Route("/ui/", signin.home, methods=["GET"]),
    Route("/ui/sign-in", signin.sign_in_form, methods=["GET"]),
    Route("/ui/sign-in", signin.sign_in, methods=["POST"]),
    Route("/ui/sign-out", signin.sign_out, methods=["POST"]),
    Route("/ui/oncall", oncall.oncall, methods=["GET"]),
    Mount("/ui/static", app=StaticFiles(packages=[("meterline.api.dashboard", "static")]), name="dashboard-static"),
]
