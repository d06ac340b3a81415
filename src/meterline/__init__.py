"""meterline: exactly-once usage metering.

Packages (layers are one-way, enforced by import-linter in the test command):

- ``meterline.events``, ``meterline.meters``, ``meterline.auth``: the domain — nouns, ports,
  validation and pure functions. They import nothing from storage, api or cli.
- ``meterline.storage``: adapters (embedded SQLite) implementing the domain ports.
- ``meterline.api``, ``meterline.cli``: the outside — HTTP and the command line.
"""

__version__ = "0.1.0"
