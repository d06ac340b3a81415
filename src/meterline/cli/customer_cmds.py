"""``meterline customers | settings | quarantine | portal``: who the usage belongs to, what
happens to events of unknown subjects, and customer-portal tokens.

Every command talks to a running server (``--url``/``--api-key``, or ``METERLINE_URL`` /
``METERLINE_API_KEY``); customer input is validated locally before it is sent.
"""

from __future__ import annotations

from typing import Any

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_fields, print_json, print_table
from meterline.cli.values import pairs
from meterline.domain.customers.model import CustomerInput, UnknownSubjects, validate

# -- customers ------------------------------------------------------------------------------


@click.group()
def customers() -> None:
    """Create, list, show, update and delete customers."""


@customers.command("list")
@with_api
@click.option("--include-deleted", is_flag=True, help="list deleted customers too, with when they were deleted")
@json_option
def customers_list(api: Api, include_deleted: bool, as_json: bool) -> None:
    """Every customer of the key's namespace (live ones; deleted ones too with --include-deleted)."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:  # OpenMeter's pages: {totalCount, page, pageSize, items}
        params = [("page", str(page)), ("pageSize", "1000")]
        answer = api.get("/api/v1/customers", params + ([("includeDeleted", "true")] if include_deleted else []))
        items += answer["items"]
        if not answer["items"] or len(items) >= answer["totalCount"]:
            break
        page += 1
    if as_json:
        print_json(items)
        return
    head = ("key", "name", "subjects", "timezone", "metadata", "id") + (("deleted",) if include_deleted else ())
    rows = [_row(c, include_deleted) for c in items]
    print_table(head, rows, "no customers")


def _row(c: dict[str, Any], deleted: bool) -> tuple[Any, ...]:
    """A customer's line of the list (``metadata`` is absent when it has none)."""
    row = (c["key"], c["name"], c["subjectKeys"], c["timezone"], c.get("metadata"), c["id"])
    return row + ((c.get("deletedAt"),) if deleted else ())


@customers.command("create")
@with_api
@click.argument("key")
@click.option("--name", help="display name")
@click.option(
    "--subject", "subjects", multiple=True, help="a subject whose events are its usage (repeatable; default KEY)"
)
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone its periods are cut in")
@click.option("--metadata", multiple=True, callback=pairs, metavar="K=V", help="repeatable")
@json_option
def customers_create(
    api: Api,
    key: str,
    name: str | None,
    subjects: tuple[str, ...],
    timezone: str,
    metadata: dict[str, str],
    as_json: bool,
) -> None:
    """Create customer KEY; quarantined events of its subjects are released to it."""
    inp = validate(CustomerInput(key, name, list(subjects) or None, timezone, metadata or None))
    _print_saved(api.post("/api/v1/customers", inp), "created", as_json)


@customers.command("show")
@with_api
@click.argument("key")
@json_option
def customers_show(api: Api, key: str, as_json: bool) -> None:
    """One customer."""
    c = api.get(f"/api/v1/customers/{key}")
    if as_json:
        print_json(c)
        return
    labels = {"subjectKeys": "subjects", "createdAt": "created", "updatedAt": "updated", "deletedAt": "deleted"}
    keys = ("key", "name", "subjectKeys", "timezone", "metadata", "id", "createdAt", "updatedAt")
    shown = keys + (("deletedAt",) if "deletedAt" in c else ())
    print_fields((labels.get(k, k), c.get(k)) for k in shown)


@customers.command("update")
@with_api
@click.argument("key")
@click.option("--name", help="new display name")
@click.option("--subject", "subjects", multiple=True, help="replace the subjects with these (repeatable)")
@click.option("--timezone", help="new IANA zone")
@click.option("--metadata", multiple=True, callback=pairs, metavar="K=V", help="set a metadata entry (repeatable)")
@click.option("--remove-metadata", multiple=True, metavar="K", help="remove a metadata entry (repeatable)")
@json_option
def customers_update(
    api: Api,
    key: str,
    name: str | None,
    subjects: tuple[str, ...],
    timezone: str | None,
    metadata: dict[str, str],
    remove_metadata: tuple[str, ...],
    as_json: bool,
) -> None:
    """Change some of customer KEY's fields; the others stay as they are."""
    if name is None and not subjects and timezone is None and not metadata and not remove_metadata:
        raise click.UsageError("nothing to change: give --name, --subject, --timezone or --metadata")
    c = api.get(f"/api/v1/customers/{key}")
    merged = {k: v for k, v in (c.get("metadata") or {}).items() if k not in remove_metadata} | metadata
    inp = CustomerInput(
        key,
        c["name"] if name is None else name,
        list(subjects or c["subjectKeys"]),
        timezone or c["timezone"],
        merged or None,
    )
    _print_saved(api.put(f"/api/v1/customers/{key}", validate(inp)), "updated", as_json)


@customers.command("delete")
@with_api
@click.argument("key")
def customers_delete(api: Api, key: str) -> None:
    """Delete customer KEY (its subjects become unknown again)."""
    api.delete(f"/api/v1/customers/{key}")
    click.echo(f"deleted customer {key}")


def _print_saved(c: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        print_json(c)
        return
    click.echo(f"{verb} customer {c['key']} ({c['id']}), subjects: {', '.join(c['subjectKeys'])}")
    released = c.get("released") or {}
    if released.get("accepted") or released.get("rejected"):
        click.echo(
            f"released {released['accepted']} quarantined events to it ({released['rejected']} could not be counted)"
        )


# -- settings and quarantine ----------------------------------------------------------------


@click.group()
def settings() -> None:
    """Namespace settings: what ingest does with events of unknown subjects."""


@settings.command("show")
@with_api
@json_option
def settings_show(api: Api, as_json: bool) -> None:
    """The key's namespace settings."""
    body = api.get("/api/v1/settings")
    if as_json:
        print_json(body)
        return
    print_fields([("unknown subjects", body["unknownSubjects"])])


@settings.command("set")
@with_api
@click.option(
    "--unknown-subjects",
    required=True,
    type=click.Choice([u.value for u in UnknownSubjects]),
    help="accept (count them), quarantine (keep until a customer claims the subject) or reject (dead-letter)",
)
def settings_set(api: Api, unknown_subjects: str) -> None:
    """Change the namespace settings."""
    body = api.put("/api/v1/settings", {"unknownSubjects": unknown_subjects})
    click.echo(f"unknown subjects: {body['unknownSubjects']}")


@click.group()
def quarantine() -> None:
    """Events held because their subject belongs to no customer."""


@quarantine.command("list")
@with_api
@click.option("--subject", help="only this subject")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--after", type=click.IntRange(0), help="continue after this quarantine id")
@json_option
def quarantine_list(api: Api, subject: str | None, limit: int, after: int | None, as_json: bool) -> None:
    """Quarantined events, oldest first."""
    params = [("limit", str(limit))] + [(k, str(v)) for k, v in (("subject", subject), ("after", after)) if v]
    body = api.get("/api/v1/quarantine", params)
    if as_json:
        print_json(body)
        return
    rows = [
        (e["id"], e["subject"], e["type"], e["source"], e["eventId"], e["time"], e["receivedAt"]) for e in body["items"]
    ]
    print_table(("#", "subject", "type", "source", "event id", "time", "received"), rows, "no quarantined events")
    if body["next"] is not None:
        click.echo(f"more: --after {body['next']}", err=True)


# -- portal ---------------------------------------------------------------------------------


@click.group()
def portal() -> None:
    """Tokens that let a customer read its own usage (GET /api/v1/portal/meters/{meter}/query)."""


@portal.command("token")
@with_api
@click.argument("customer")
@click.option("--meter", "meters", multiple=True, metavar="SLUG", help="only these meters (repeatable; default all)")
@click.option("--ttl", type=click.IntRange(1), metavar="SECONDS", help="lifetime (default: the server's)")
@json_option
def portal_token(api: Api, customer: str, meters: tuple[str, ...], ttl: int | None, as_json: bool) -> None:
    """Issue a portal token for CUSTOMER (a customer or subject key) and print it."""
    body = {"subject": customer, "allowedMeterSlugs": list(meters) or None, "expiresIn": ttl}
    token = api.post("/api/v1/portal/tokens", body)
    if as_json:
        print_json(token)
        return
    click.echo(token["token"])
    scope = ", ".join(token.get("allowedMeterSlugs") or ["all meters"])
    click.echo(f"token {token['id']} for {token['subject']} ({scope}), expires {token['expiresAt']}", err=True)


@portal.command("list")
@with_api
@click.option("--limit", default=25, show_default=True, type=click.IntRange(1, 1000))
@json_option
def portal_list(api: Api, limit: int, as_json: bool) -> None:
    """Recently issued portal tokens (never the tokens themselves)."""
    items = api.get("/api/v1/portal/tokens", [("limit", str(limit))])
    if as_json:
        print_json(items)
        return
    rows = [
        (t["id"], t["subject"], t.get("allowedMeterSlugs") or "all", t["createdAt"], t["expiresAt"], t["expired"])
        for t in items
    ]
    print_table(("id", "subject", "meters", "created", "expires", "expired"), rows, "no portal tokens")


@portal.command("invalidate")
@with_api
@click.option("--id", "token_id", help="one token")
@click.option("--subject", help="every token of this customer or subject")
def portal_invalidate(api: Api, token_id: str | None, subject: str | None) -> None:
    """Invalidate one token (--id) or every token of a subject (--subject)."""
    if (token_id is None) == (subject is None):
        raise click.UsageError("give exactly one of --id or --subject")
    api.post("/api/v1/portal/tokens/invalidate", {"id": token_id, "subject": subject})
    click.echo(f"invalidated token {token_id}" if token_id else f"invalidated every token of {subject}")


COMMANDS = [customers, settings, quarantine, portal]
