"""meterline's Python client: record usage events from a producer app, never losing them.

    from meterline.client import Client, AsyncClient, ClientOptions, TLSOptions

It depends on httpx, msgspec and python-ulid only and imports nothing else of meterline, so
it can be installed without the server (``pip install ./clients/python``, the
``meterline-client`` distribution built from this repository). Modules: ``client`` (the
faces), ``stores`` + ``spool`` (where events wait), ``worker`` (batches and retries),
``transport`` (one POST, TLS, backoff), ``replay`` (sending a dead producer's spool),
``stats`` (the accounting), ``options``.

Exceptions: ``ClientConfigError`` (a ValueError) for options that cannot work;
``SpoolError`` / ``SpoolLocked`` for a spool that cannot be opened. Nothing else is raised
by ``record`` except ``TypeError`` for data JSON cannot hold.
"""

from meterline.client.client import AsyncClient, Client
from meterline.client.options import ClientConfigError, ClientOptions, TLSOptions
from meterline.client.replay import ReplayReport, pending_in, replay
from meterline.client.spool import SpoolError, SpoolLocked, TornRecord
from meterline.client.stats import DROP_REASONS, ClientStats

__all__ = [
    "DROP_REASONS",
    "AsyncClient",
    "Client",
    "ClientConfigError",
    "ClientOptions",
    "ClientStats",
    "ReplayReport",
    "SpoolError",
    "SpoolLocked",
    "TLSOptions",
    "TornRecord",
    "pending_in",
    "replay",
]
