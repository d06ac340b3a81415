"""The ``meterline`` command line."""
