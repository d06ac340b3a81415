"""In-memory adapters: the reference implementations of the ledger, usage, catalog and billing ports.

They keep everything in dicts behind one lock per store, pass the same contract suite as the
SQLite adapters (``tests/contract/``) and back the services' fast unit tests. They import only
ports and domain.
"""
