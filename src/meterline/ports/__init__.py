"""Ports: what the services need from storage and the outside world, as ``typing.Protocol``s.

Each port is narrow (1-8 methods) and speaks only in domain types: no connection, cursor or
driver type crosses it. Every adapter of a port (``meterline.adapters.sqlite``, ``.memory``, the
scale adapters) passes the same contract suite in ``tests/contract/``.
"""
