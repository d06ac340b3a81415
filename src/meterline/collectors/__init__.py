"""Collectors: infrastructure signals turned into usage events, sent with the client SDK.

- ``prometheus``: counter increases and gauge values of selected series of /metrics endpoints;
- ``host``: CPU-seconds, memory GB-seconds, disk and network bytes of processes (psutil) and
  cgroup v2 groups (containers), attributed to customers by a configured mapping.

Both keep a state file so that a restarted collector never counts anything twice, and give
their events deterministic ids. ``meterline collect prometheus|host`` runs them (``cli``).
They import the client SDK and their libraries, nothing of the server.
"""
