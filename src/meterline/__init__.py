"""meterline: exactly-once usage metering.

Layers, top to bottom (one-way; import-linter holds them in the test command):

- ``meterline.cli``, ``meterline.api``: the faces — parse, call a service, render.
- ``meterline.bootstrap``: config in, adapters and services out; the only place that picks adapters.
- ``meterline.services``: the rules of each pipeline stage, written against ports.
- ``meterline.adapters``: port implementations (embedded SQLite today).
- ``meterline.ports``: the Protocols between services and adapters.
- ``meterline.runtime``: background loops and metrics.
- ``meterline.domain``: nouns, pure rules, validation, errors, decimals, periods.

``meterline.sdk`` (the middleware) depends only on the domain.
"""

__version__ = "0.1.0"
