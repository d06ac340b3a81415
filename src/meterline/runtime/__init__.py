"""Process plumbing shared by every layer above the domain: supervised background loops and
the Prometheus metrics registry."""
