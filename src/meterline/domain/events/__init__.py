"""Usage events: the CloudEvents envelope, validation, outcomes and the Ledger port.

This package owns what an event *is* and which events are acceptable. It knows nothing of
HTTP or SQLite; ``meterline.adapters`` implements :class:`~meterline.domain.events.ports.Ledger`.
"""
