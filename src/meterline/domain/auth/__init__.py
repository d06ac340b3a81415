"""API keys and scopes: what a key is, how it is made and checked. Storage keeps only hashes."""
