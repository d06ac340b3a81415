"""Every ``extra=`` of a logging call uses keys that cannot collide with ``LogRecord``'s own.

``logging`` raises ``KeyError`` when an ``extra`` key names a ``LogRecord`` attribute (``created``,
``name``, ``msg``, ``module``, ``process``, ...) or ``message``/``asctime`` -- and only when the
level is enabled, so a collision hides in tests that log at WARNING and kills a thread in
production. This test reads the source of the whole repository: every logging call's ``extra``
must be a dict literal with constant string keys (so it can be checked here), none of them a
reserved name.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ("src", "tests", "benchmarks", "examples")
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}
RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def extra_problems(source: str, filename: str) -> tuple[int, list[str]]:
    """(logging calls with ``extra`` seen, problems) in one module's source."""
    seen, problems = 0, []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in LOG_METHODS:
            continue
        for kw in node.keywords:
            if kw.arg != "extra":
                continue
            seen += 1
            where = f"{filename}:{node.lineno}"
            if not isinstance(kw.value, ast.Dict) or any(k is None for k in kw.value.keys):
                problems.append(f"{where}: extra must be a dict literal (no variables, no ** spreads)")
                continue
            for key in kw.value.keys:
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    problems.append(f"{where}: extra keys must be string literals")
                elif key.value in RESERVED:
                    problems.append(f"{where}: extra key {key.value!r} is a LogRecord attribute")
    return seen, problems


def test_no_logging_extra_key_collides_with_a_log_record_attribute() -> None:
    seen, problems = 0, []
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            n, found = extra_problems(path.read_text(), str(path.relative_to(ROOT)))
            seen, problems = seen + n, problems + found
    assert problems == []
    assert seen >= 5  # the scan does see the logging calls (billing, writer, alerts, api, meters)


def test_the_scan_catches_collisions_and_unchecked_extras() -> None:
    source = (
        "log.info('run', extra={'created': 1})\n"
        "logger.exception('x', extra={'module': 'm', 'ok': 1})\n"
        "log.log(20, 'y', extra=fields)\n"
        "log.warning('z', extra={**fields, 'a': 1})\n"
        "log.error('fine', extra={'invoices_created': 1})\n"
        "config(extra='forbid')\n"
    )
    seen, problems = extra_problems(source, "m.py")
    assert seen == 5
    assert [p.split(": ", 1)[0] for p in problems] == ["m.py:1", "m.py:2", "m.py:3", "m.py:4"]
    assert "'created' is a LogRecord attribute" in problems[0]
    # and the reserved names are what logging really refuses
    for key in ("created", "name", "msg", "args", "module", "filename", "lineno", "message", "process", "thread"):
        assert key in RESERVED
        try:
            logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, "m", (), None, extra={key: 1})
        except KeyError:
            continue
        raise AssertionError(f"logging accepted the reserved extra key {key!r}")
