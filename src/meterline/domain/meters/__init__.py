"""Meters: what to count (definitions), how to read it from an event, and how windows are cut.

Pure domain code: definitions and validation (``model``), JSONPath reading (``paths``),
per-event evaluation (``evaluate``), window grids in any IANA zone (``windows``) and the query
inputs and merge rules (``query``). Storage adapters keep the rollups.
"""
