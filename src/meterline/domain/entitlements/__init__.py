"""Features, entitlements and grants: what a customer may use, and how much is left."""
