"""A collector's memory between runs: the last reading per series, in one JSON file.

Written to a temporary file, fsynced and renamed over the old one after the events of a
reading were handed to the client (spooled): a crash before the rename repeats that reading's
events with the same deterministic ids (meterline reports them as duplicates); a crash after
it starts from that reading. Either way nothing is counted twice or skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class State:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                raise ValueError(f"collector state {path} is not JSON; move it away to start afresh") from None

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(self.data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
