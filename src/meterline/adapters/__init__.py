"""Adapters: implementations of ``meterline.ports`` for one storage engine each.

An adapter imports only ports and domain (never services, never another adapter) and
translates its driver's exceptions into ``meterline.domain.errors`` at its edge.
"""
