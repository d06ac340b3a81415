"""What a client is told: where meterline is, how events travel, where they wait."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class ClientConfigError(ValueError):
    """The options cannot work; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid meterline client options: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TLSOptions:
    """How the client checks the server and proves who it is (all optional)."""

    ca_file: Path | str | None = None
    """PEM bundle of the CA(s) that signed the server's certificate (default: the system's)."""
    cert_file: Path | str | None = None
    """PEM client certificate (chain) for mTLS; the server may map its subject to a namespace."""
    key_file: Path | str | None = None
    """PEM private key of ``cert_file`` (omit when ``cert_file`` holds it too)."""


@dataclass(frozen=True)
class ClientOptions:
    """Batching, retries and the spool. Every field has a docstring; ``validate`` lists problems."""

    source: str = "meterline-client"
    """CloudEvents ``source`` of recorded events (with the id, the idempotency key)."""
    spool_dir: Path | str | None = None
    """Directory of the on-disk spool. Set: every recorded event is written there before
    ``record`` returns and stays until meterline acknowledged it, so events survive a restart,
    a crash and an outage of any length within ``spool_max_bytes``. None: a bounded memory queue."""
    spool_fsync: Literal["always", "interval", "never"] = "interval"
    """``always``: each record is fsynced before ``record`` returns (survives power loss; about
    a disk flush per event). ``interval``: the background thread fsyncs the spool at most
    ``spool_fsync_interval`` seconds after a write (a power loss may lose that last interval; a
    crash or ``kill -9`` of the producer loses nothing). ``never``: the OS writes back when it will."""
    spool_fsync_interval: float = 1.0
    """Seconds between two fsyncs with ``spool_fsync = "interval"``."""
    spool_max_bytes: int = 1 << 30
    """Disk budget of the spool; a record beyond it is dropped (reason ``spool_full``)."""
    spool_segment_bytes: int = 8 << 20
    """Size at which a segment file is closed and a new one started; acknowledged segments are deleted."""
    max_queue: int = 10_000
    """Without a spool: events held in memory at most. When full, the newest event is dropped
    (reason ``queue_full``)."""
    max_batch: int = 500
    """Events per POST at most."""
    max_batch_bytes: int = 1 << 20
    """Bytes of events per POST at most (a single larger event still goes alone)."""
    max_delay: float = 0.5
    """Seconds the first waiting event waits for a batch to fill before it is sent anyway."""
    max_attempts: int | None = None
    """Tries per batch before it is given up (dropped, reason ``attempts_exhausted``). None:
    retry until delivered (with a spool, an outage of any length is waited out)."""
    backoff_base: float = 0.1
    """First retry waits about this many seconds; each later one doubles, with jitter."""
    backoff_max: float = 30.0
    """Longest wait between two tries of our own choosing, in seconds."""
    max_retry_after: float = 3600.0
    """A server's ``Retry-After`` is honoured up to this many seconds."""
    request_timeout: float = 10.0
    """Timeout of each POST, in seconds."""
    close_timeout: float = 5.0
    """``close()`` (and the exit hook) waits at most this long for waiting events to be sent;
    with a spool, what is left stays there for the next start or ``meterline replay``."""
    tls: TLSOptions = TLSOptions()

    def validate(self) -> list[str]:
        """Every problem with these options (empty when they can work)."""
        problems = [f"{n} must be >= 1" for n in ("max_queue", "max_batch", "max_batch_bytes") if getattr(self, n) < 1]
        if self.max_attempts is not None and self.max_attempts < 1:
            problems.append("max_attempts must be >= 1 or None")
        times = ("max_delay", "backoff_base", "backoff_max", "max_retry_after", "close_timeout")
        problems += [f"{n} must be >= 0" for n in times if getattr(self, n) < 0]
        problems += [f"{n} must be > 0" for n in ("request_timeout", "spool_fsync_interval") if getattr(self, n) <= 0]
        if self.spool_fsync not in ("always", "interval", "never"):
            problems.append(f"spool_fsync must be always, interval or never, not {self.spool_fsync!r}")
        if self.spool_segment_bytes < 4096 or self.spool_max_bytes < self.spool_segment_bytes:
            problems.append("spool_segment_bytes must be >= 4096 and spool_max_bytes >= spool_segment_bytes")
        if self.tls.key_file and not self.tls.cert_file:
            problems.append("tls.key_file needs tls.cert_file")
        return problems
