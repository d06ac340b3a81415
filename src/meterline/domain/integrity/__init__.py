"""Integrity of the ledger: the hash chain over its entries and the heads exported from it."""
