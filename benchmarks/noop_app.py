"""The ceiling for ``ingest_http``: meterline's own server with a ledger that stores nothing.

This is ``meterline serve`` itself (the same ``create_app``, server settings, middleware,
admission control, API-key check, decoding, validation, metrics and answers), except that the
ledger's ``append`` answers at once, every valid event "accepted", without the writer thread,
SQLite or fsync. So the gap between this and meterline is what storing costs, and this is as
fast as ingest can get on the chosen HTTP stack. Run it against another checkout (PYTHONPATH)
and it is that checkout's ceiling.

Run by ``ingest_http.py``; by hand:
``.venv/bin/python benchmarks/noop_app.py --data-dir DIR --port 9000`` (a key must exist in DIR).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from meterline.api.app import create_app
from meterline.config import load_config
from meterline.domain.events.model import Candidate, Outcome, Status


def append_nothing(namespace: str, candidates: Sequence[Candidate]) -> Future[list[Outcome]]:
    """Each valid event accepted, each invalid one rejected, nothing stored: already resolved."""
    done: Future[list[Outcome]] = Future()
    done.set_result(
        [
            Outcome(c.index, c.id, c.source, Status.ACCEPTED)
            if c.rejection is None
            else Outcome(c.index, c.id, c.source, Status.REJECTED, c.rejection.reason, c.rejection.message)
            for c in candidates
        ]
    )
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    config = load_config(None, {"storage": {"data_dir": args.data_dir}, "server": {"port": args.port}})
    app = create_app(config)
    app.state.ctx.ledger.append = append_nothing
    try:
        from meterline.cli.store_cmds import run_http
    except ImportError:  # a checkout older than run_http: the settings ``meterline serve`` used then
        import uvicorn

        settings = {"log_config": None, "access_log": False, "loop": "uvloop", "http": "httptools"}
        uvicorn.run(app, host="127.0.0.1", port=args.port, timeout_graceful_shutdown=5, **settings)
        return
    run_http(app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
