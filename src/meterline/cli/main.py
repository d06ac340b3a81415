"""``meterline``: serve, keys, ingest, usage, meters, rebuild, check-config.

Commands that work on the data directory (serve, keys, rebuild, check-config) take
``--data-dir``/``--config``; commands that talk to a running server (ingest, usage, meters,
billing, customers, ...) take ``--url``/``--api-key``/``--timeout`` (or ``METERLINE_URL``,
``METERLINE_API_KEY``, ``METERLINE_TIMEOUT``) and share one client (``cli.client``), so every
failure to reach or understand the server is one line on stderr and exit status 2.

Start-up stays light: the command modules import the server stack (configuration, storage,
the ASGI app) and heavy libraries (httpx, rich) only inside the commands that use them; a test
holds that line.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from meterline.cli import (
    alert_cmds,
    billing_cmds,
    client_cmds,
    correction_cmds,
    customer_cmds,
    dead_letter_cmds,
    entitlement_cmds,
    erasure_cmds,
    integrity_cmds,
    migrate_cmds,
    producer_cmds,
    reconcile_cmds,
    store_cmds,
    top_cmds,
)
from meterline.domain.errors import MeterlineError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeterlineError as exc:
            click.echo(f"error: {exc.detail}", err=True)
            sys.exit(2)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            raise  # the reader of stdout went away (``| head``): click stops quietly, status 1
        except Exception as exc:
            # Never a traceback for the user: most often an answer of an unexpected shape (a
            # server of another version, or no meterline at --url). METERLINE_DEBUG shows it.
            if os.environ.get("METERLINE_DEBUG"):
                raise
            click.echo(
                f"error: unexpected failure ({type(exc).__name__}: {str(exc)[:200]}); if this command talks to a"
                " server, check that --url / METERLINE_URL is a meterline server of this version;"
                " set METERLINE_DEBUG=1 to see the traceback",
                err=True,
            )
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="meterline")
def cli() -> None:
    """meterline: exactly-once usage metering."""


for command in (
    *store_cmds.COMMANDS,
    *integrity_cmds.COMMANDS,
    *client_cmds.COMMANDS,
    *billing_cmds.COMMANDS,
    *correction_cmds.COMMANDS,
    *customer_cmds.COMMANDS,
    *dead_letter_cmds.COMMANDS,
    *erasure_cmds.COMMANDS,
    *entitlement_cmds.COMMANDS,
    *alert_cmds.COMMANDS,
    *producer_cmds.COMMANDS,
    *reconcile_cmds.COMMANDS,
    *top_cmds.COMMANDS,
    migrate_cmds.migrate,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="meterline")


if __name__ == "__main__":
    main()
