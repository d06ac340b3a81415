"""The on-disk spool: append-only segment files of checksummed records, and a cursor.

Layout of a spool directory (one per producer process at a time; see ``slots``)::

    lock                      flock()ed by the process that owns the spool
    cursor                    "<segment> <offset>": everything before it was acknowledged
    0000000000000001.seg      b"MLSPOOL1", then records: u32 length, u32 CRC-32, payload
    0000000000000002.seg      ...

Guarantees, in order:

1. ``append`` returns only after the whole record was handed to the kernel in one
   ``write()``: a ``kill -9`` of the producer after ``append`` returned loses nothing. The
   fsync policy (``ClientOptions.spool_fsync``) decides what survives a power loss.
2. A process that opens a spool never appends to an existing segment: it starts a new one,
   so a record torn by a crash is never followed by good data in the same file.
3. Records are read in the order they were appended. A record whose length runs past the end
   of its file, or whose checksum does not match, is a *torn tail*: it is reported
   (``torn``) and never read; reading goes on with the next segment.
4. ``ack`` moves the cursor (written to a temporary file and renamed over the old one, so a
   crash leaves the old or the new cursor) and deletes segments wholly behind it. A crash
   between a delivery and its ``ack`` sends that batch again; the events keep their ids, so
   meterline counts each once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("meterline.client")

MAGIC = b"MLSPOOL1"
_HEAD = struct.Struct(">II")
MAX_RECORD = 16 * 1024 * 1024


class SpoolError(Exception):
    """The spool cannot be used (locked by another live process, unreadable, not a spool)."""


class SpoolLocked(SpoolError):
    """Another live process owns this spool directory."""


@dataclass(frozen=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class TornRecord:
    """Bytes at the end of a segment that are not a whole, intact record (never sent)."""

    segment: Path
    offset: int
    size: int
    reason: str


@dataclass(frozen=True)
class Batch:
    payloads: list[bytes]
    end: Position


class Spool:
    """One spool directory, owned by this process while open (an exclusive ``flock``)."""

    def __init__(self, path: Path, *, segment_bytes: int = 8 * 1024 * 1024, max_bytes: int = 1 << 30) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.torn: list[TornRecord] = []
        self._lock = threading.Lock()
        path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(path / "lock")
        try:
            self._cursor = self._read_cursor()
            self._pending, self._bytes = self._scan()
            self._active_seq = max([*self._segments(), self._cursor.segment]) + 1
            self._fd, self._size = self._new_segment(self._active_seq)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._unsynced = False

    # -- writing ---------------------------------------------------------------------------

    def append(self, payload: bytes) -> str | None:
        """Append one record; None when written, else why not (``spool_full``, ``too_large``)."""
        if len(payload) > MAX_RECORD:
            return "too_large"
        record = _HEAD.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._bytes + len(record) > self.max_bytes:
                return "spool_full"
            if self._size >= self.segment_bytes:
                self._rotate()
            _write_all(self._fd, record)
            self._size += len(record)
            self._bytes += len(record)
            self._pending += 1
            self._unsynced = True
        return None

    def sync(self) -> None:
        """fsync the segment being written, if anything was written since the last sync. The
        write lock is held only to duplicate the descriptor, so appends never wait for a disk."""
        with self._lock:
            if not self._unsynced:
                return
            self._unsynced = False
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        os.fsync(self._fd)  # a finished segment is always durable before the next one starts
        os.close(self._fd)
        self._active_seq += 1
        self._fd, self._size = self._new_segment(self._active_seq)

    def _new_segment(self, seq: int) -> tuple[int, int]:
        fd = os.open(self._segment_path(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _write_all(fd, MAGIC)
        _fsync_dir(self.path)
        self._bytes += len(MAGIC)
        return fd, len(MAGIC)

    # -- reading and acknowledging ---------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records appended (also by earlier processes) and not yet acknowledged."""
        with self._lock:
            return self._pending

    def read(self, max_records: int, max_bytes: int) -> Batch:
        """Up to ``max_records`` records or about ``max_bytes`` (at least one record if any are
        pending) from the cursor, in order. Moves nothing: ``ack`` does."""
        payloads: list[bytes] = []
        size, pos = 0, self._cursor
        while len(payloads) < max_records and size < max_bytes:
            with self._lock:
                active, limit = self._active_seq, self._size
            path = self._segment_path(pos.segment)
            if pos.segment >= active:
                got, pos, _ = self._read_from(path, pos, limit, max_records - len(payloads), max_bytes - size)
                payloads += got
                break
            if not path.exists():
                pos = Position(pos.segment + 1, len(MAGIC))
                continue
            got, pos, exhausted = self._read_from(path, pos, None, max_records - len(payloads), max_bytes - size)
            payloads += got
            size += sum(len(p) for p in got)
            if exhausted:
                pos = Position(pos.segment + 1, len(MAGIC))
        return Batch(payloads, pos)

    def _read_from(
        self, path: Path, pos: Position, end: int | None, max_records: int, max_bytes: int
    ) -> tuple[list[bytes], Position, bool]:
        """Records of one segment from ``pos``: up to ``end`` (the active segment, whose bytes
        beyond it are still being written) or to the end of the file (a closed segment, where
        anything that is not a whole record is a torn tail). Also: whether it was read to its end."""
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                self._report(path, 0, path.stat().st_size, "not a spool segment")
                return [], pos, True
            f.seek(pos.offset)
            data = f.read() if end is None else f.read(max(0, end - pos.offset))
        payloads: list[bytes] = []
        offset, size = 0, 0
        while offset < len(data) and len(payloads) < max_records and (size < max_bytes or not payloads):
            record, why = _decode(data, offset)
            if record is None:
                if end is None:
                    self._report(path, pos.offset + offset, len(data) - offset, why)
                    return payloads, Position(pos.segment, pos.offset + offset), True
                break
            payloads.append(record)
            offset += _HEAD.size + len(record)
            size += len(record)
        return payloads, Position(pos.segment, pos.offset + offset), offset >= len(data)

    def ack(self, batch: Batch) -> None:
        """Everything up to ``batch.end`` was delivered (or given up on): move the cursor past it."""
        self._write_cursor(batch.end)
        freed = 0
        for seq in self._segments():
            if seq < batch.end.segment and seq != self._active_seq:
                path = self._segment_path(seq)
                freed += path.stat().st_size
                path.unlink()
        with self._lock:
            self._cursor = batch.end
            self._pending -= len(batch.payloads)
            self._bytes -= freed

    # -- opening, closing ------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        os.close(self._lock_fd)

    def _scan(self) -> tuple[int, int]:
        """Count the records left by earlier processes (and report their torn tails)."""
        pending, size = 0, 0
        for seq in self._segments():
            path = self._segment_path(seq)
            size += path.stat().st_size
            if seq < self._cursor.segment:
                continue
            start = self._cursor.offset if seq == self._cursor.segment else 0
            got, _, _ = self._read_from(path, Position(seq, max(start, len(MAGIC))), None, 1 << 62, 1 << 62)
            pending += len(got)
        return pending, size

    def _report(self, path: Path, offset: int, size: int, reason: str) -> None:
        torn = TornRecord(path, offset, size, reason)
        if torn not in self.torn:
            self.torn.append(torn)
            log.warning("spool %s: %d torn bytes at offset %d (%s); not sent", path, size, offset, reason)

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.path.glob("*.seg") if p.stem.isdigit())

    def _segment_path(self, seq: int) -> Path:
        return self.path / f"{seq:016d}.seg"

    def _read_cursor(self) -> Position:
        try:
            seg, off = (self.path / "cursor").read_text().split()
            return Position(int(seg), int(off))
        except FileNotFoundError:
            first = self._segments()
            return Position(first[0] if first else 1, len(MAGIC))
        except ValueError:
            raise SpoolError(f"{self.path / 'cursor'} is not a spool cursor") from None

    def _write_cursor(self, pos: Position) -> None:
        tmp = self.path / "cursor.tmp"
        tmp.write_text(f"{pos.segment} {pos.offset}\n")
        os.replace(tmp, self.path / "cursor")  # not fsynced: losing it only resends (duplicates)


def _decode(data: bytes, offset: int) -> tuple[bytes | None, str]:
    if len(data) - offset < _HEAD.size:
        return None, "incomplete record header"
    length, crc = _HEAD.unpack_from(data, offset)
    if length > MAX_RECORD:
        return None, "record length out of range"
    start = offset + _HEAD.size
    if start + length > len(data):
        return None, "record runs past the end of the file"
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch"
    return payload, ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"spool {path.parent} is in use by another running process") from None
    return fd
