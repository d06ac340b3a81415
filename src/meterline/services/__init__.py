"""Services: the rules of metering and billing, written against ports.

Each service owns one stage (ingest, aggregation, queries, customers, entitlements, counters,
alerts, billing runs, scheduling, notification delivery). Services import domain and ports,
never an adapter; ``meterline.bootstrap`` hands them the adapters the config chose.
"""
