"""The domain: nouns, pure rules, validation, errors, decimals and periods.

Knows nothing of storage, HTTP or the command line; everything else depends on it.
"""
