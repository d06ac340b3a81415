"""Step 9 of a scale-mode erasure (services/log_erasure.py): the catalog's tables rewritten after
the finish, each retried with a doubling pause while its lock is busy, the outcome recorded and
a table left not rewritten reported (``problem``, the ``/readyz`` METER-008 warning) and tried
again at the next look. The catalog and the tables are fakes here; test_scale_erasure_pg_files.py
runs it over a real PostgreSQL cluster and searches its files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from meterline.domain.erasure import ErasureRecord
from meterline.ports.erasure import TableRewriter
from meterline.services.log_erasure import LogErasures, RewriteSettings


class Catalog:
    def __init__(self, due: list[ErasureRecord]) -> None:
        self.due = due
        self.recorded: list[tuple[int, dict[str, str], bool]] = []

    def unfinished(self) -> list[Any]:
        return []

    def unrewritten(self) -> list[ErasureRecord]:
        return list(self.due)

    def rewritten(self, record: ErasureRecord, files: Mapping[str, str], done: bool) -> ErasureRecord:
        self.recorded.append((record.id, dict(files), done))
        if done:
            self.due = [r for r in self.due if r.id != record.id]
        return ErasureRecord(record.id, record.namespace, 0, "a", "r", record.pseudonym, postgres_files=dict(files))


class Tables:
    """Each table answers its scripted outcomes in order (the last one for ever)."""

    def __init__(self, script: dict[str, list[str]], free: bool = True) -> None:
        self.script = script
        self.free = free
        self.calls: list[tuple[str, float]] = []

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.script)

    @contextmanager
    def rewriting(self) -> Iterator[TableRewriter | None]:
        yield self if self.free else None

    def rewrite(self, table: str, lock_timeout: float) -> str:
        self.calls.append((table, lock_timeout))
        answers = self.script[table]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def erasures(catalog: Catalog, tables: Tables, sleeps: list[float]) -> LogErasures:
    def hold(wait: bool) -> Any:
        raise AssertionError("no erasure is unfinished: nothing is held")

    return LogErasures(
        catalog,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        list,
        heads=dict,
        applied=dict,
        hold=hold,
        unfinished=lambda seconds: [],
        max_wait=1.0,
        tables=tables,
        rewrite=RewriteSettings(lock_timeout=0.3, attempts=4, backoff=0.25),
        sleep=sleeps.append,
    )


RECORD = ErasureRecord(7, "ns", 0, "actor", "reason", "erased-1")


def test_a_busy_table_is_tried_again_with_a_doubling_pause_then_reported() -> None:
    catalog = Catalog([RECORD])
    tables = Tables({"quarantine": ["busy", "held", "rewritten"], "dead_letters": ["busy"], "x": ["failed: 42501 no"]})
    sleeps: list[float] = []
    node = erasures(catalog, tables, sleeps)
    node.resume()
    assert [t for t, _ in tables.calls] == ["quarantine"] * 3 + ["dead_letters"] * 4 + ["x"]
    assert {timeout for _, timeout in tables.calls} == {0.3}
    assert sleeps == [0.25, 0.5, 0.25, 0.5, 1.0]  # quarantine, dead_letters: none after the last try or a failure
    outcome = {"quarantine": "rewritten", "dead_letters": "busy", "x": "failed: 42501 no"}
    assert catalog.recorded == [(7, outcome, False)]
    problem = node.problem()
    assert problem is not None and "erasure 7" in problem
    assert "dead_letters (busy), x (failed: 42501 no)" in problem and "quarantine" not in problem
    # the next look (every node's resume) tries again; all rewritten: done, the warning clears
    tables.script = {"quarantine": ["rewritten"], "dead_letters": ["rewritten"], "x": ["rewritten"]}
    node.resume()
    assert catalog.recorded[-1] == (7, {"quarantine": "rewritten", "dead_letters": "rewritten", "x": "rewritten"}, True)
    assert node.problem() is None and catalog.due == []


def test_another_process_rewriting_leaves_the_records_to_it() -> None:
    catalog = Catalog([RECORD])
    tables = Tables({"quarantine": ["rewritten"]}, free=False)
    node = erasures(catalog, tables, [])
    node.resume()
    assert tables.calls == [] and catalog.recorded == [] and node.problem() is None


def test_a_warning_clears_when_another_node_rewrote_the_tables() -> None:
    catalog = Catalog([RECORD])
    tables = Tables({"dead_letters": ["busy"]})
    node = erasures(catalog, tables, [])
    node.resume()
    assert node.problem() is not None
    catalog.due = []  # rewritten by another node since
    node.resume()
    assert node.problem() is None
