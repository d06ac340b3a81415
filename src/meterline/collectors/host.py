"""The host collector: CPU, memory, disk and network use of processes and cgroups, per customer.

Every ``interval`` seconds (aligned to multiples of it, in UTC) it reads, for each configured
``[[process]]`` rule, the processes whose command line matches (psutil: CPU user+system
seconds, resident memory, disk read/write bytes; network bytes of the process's network
namespace from ``/proc/PID/net/dev`` with ``network = true``, which is the container's when
it runs in one), and for each ``[[cgroup]]`` a cgroup v2 directory (``cpu.stat`` usage,
``memory.current``, ``io.stat`` bytes; network as above for its first process).

Each customer gets one event per interval (type ``event_type``, default ``host_usage``) whose
data holds ``cpu_seconds``, ``memory_gb_seconds`` (memory x time, the mean of two readings
times the seconds between them), ``disk_read_bytes``, ``disk_write_bytes``, ``net_rx_bytes``,
``net_tx_bytes``: increases since the previous reading of the same process (pid and start
time) or cgroup, so a process that restarted starts from zero and one that ended is simply gone.
Ids are UUIDs of (host, customer, interval start), readings are saved as pending before
recording and committed after, as the Prometheus collector does: nothing is counted twice.
"""

from __future__ import annotations

import math
import re
import socket
import tomllib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterline.client import Client
from meterline.collectors.state import State

_IDS = uuid.UUID("0b6c1f0e-3d55-5b1a-8c2e-7f9a4e2d1c33")
FIELDS = ("cpu_seconds", "memory_gb_seconds", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes")
_GB = Decimal(1_000_000_000)


@dataclass(frozen=True)
class ProcessRule:
    match: str
    """Regular expression searched in the command line (arguments joined by spaces)."""
    subject: str | None = None
    """The customer; or a named group ``(?P<subject>...)`` in ``match`` gives it per process."""
    network: bool = False


@dataclass(frozen=True)
class CgroupRule:
    path: str
    subject: str
    network: bool = False


@dataclass(frozen=True)
class HostConfig:
    processes: list[ProcessRule]
    cgroups: list[CgroupRule]
    interval: float = 60.0
    event_type: str = "host_usage"
    host: str = ""
    """Name of this host in event ids and sources (default: its host name)."""


def load_host_config(path: Path) -> HostConfig:
    raw = tomllib.loads(path.read_text())
    processes = [ProcessRule(**p) for p in raw.pop("process", [])]
    cgroups = [CgroupRule(**c) for c in raw.pop("cgroup", [])]
    config = HostConfig(processes, cgroups, **raw)
    problems = []
    for rule in processes:
        try:
            pattern = re.compile(rule.match)
        except re.error as exc:
            problems.append(f"process match {rule.match!r}: {exc}")
            continue
        if rule.subject is None and "subject" not in pattern.groupindex:
            problems.append(f"process match {rule.match!r}: set subject or a (?P<subject>...) group")
    if not processes and not cgroups:
        problems.append("no [[process]] or [[cgroup]] rule")
    if not config.interval > 0:
        problems.append("interval must be > 0")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return config


def read_processes(rules: list[ProcessRule]) -> dict[str, dict[str, Any]]:
    """Counters of every matching process: ``proc:<pid>:<start>`` -> subject and readings."""
    import psutil

    compiled = [(re.compile(r.match), r) for r in rules]
    found: dict[str, dict[str, Any]] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        for pattern, rule in compiled:
            m = pattern.search(cmdline)
            if m is None:
                continue
            subject = rule.subject or m.groupdict().get("subject")
            if not subject:
                continue
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    io = proc.io_counters()
                    rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                break
            reading = {
                "subject": subject,
                "cpu_seconds": str(Decimal(repr(cpu.user)) + Decimal(repr(cpu.system))),
                "memory_bytes": rss,
                "disk_read_bytes": io.read_bytes,
                "disk_write_bytes": io.write_bytes,
                **(_net(proc.info["pid"]) if rule.network else {}),
            }
            found[f"proc:{proc.info['pid']}:{proc.info['create_time']}"] = reading
            break
    return found


def read_cgroups(rules: list[CgroupRule]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for rule in rules:
        base = Path(rule.path)
        try:
            usage_us = int(_kv(base / "cpu.stat")["usage_usec"])
            memory = int((base / "memory.current").read_text())
            rbytes = wbytes = 0
            for line in (base / "io.stat").read_text().splitlines():
                fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                rbytes += int(fields.get("rbytes", 0))
                wbytes += int(fields.get("wbytes", 0))
            pids = (base / "cgroup.procs").read_text().split()
        except (OSError, KeyError, ValueError):
            continue  # gone, or not a cgroup v2 directory: nothing to read this time
        reading = {
            "subject": rule.subject,
            "cpu_seconds": str(Decimal(usage_us) / 1_000_000),
            "memory_bytes": memory,
            "disk_read_bytes": rbytes,
            "disk_write_bytes": wbytes,
            **(_net(int(pids[0])) if rule.network and pids else {}),
        }
        found[f"cgroup:{rule.path}"] = reading
    return found


def _kv(path: Path) -> dict[str, str]:
    return dict(line.split(None, 1) for line in path.read_text().splitlines() if line.strip())


def _net(pid: int) -> dict[str, int]:
    """Bytes received and sent on the interfaces (but loopback) of the process's network namespace."""
    rx = tx = 0
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        cols = rest.split()
        rx, tx = rx + int(cols[0]), tx + int(cols[8])
    return {"net_rx_bytes": rx, "net_tx_bytes": tx}


def usage_events(
    config: HostConfig, readings: dict[str, dict[str, Any]], last: dict[str, Any], at: datetime
) -> list[dict[str, Any]]:
    """One event per customer with the increases since the ``last`` readings (new ones are baselines)."""
    start = datetime.fromtimestamp(math.floor(at.timestamp() / config.interval) * config.interval, UTC)
    totals: dict[str, dict[str, Decimal]] = {}
    for key, now in readings.items():
        before = last.get(key)
        if before is None or before["subject"] != now["subject"]:
            continue
        seconds = Decimal(repr(at.timestamp() - before["at"]))
        t = totals.setdefault(now["subject"], dict.fromkeys(FIELDS, Decimal(0)))
        t["cpu_seconds"] += max(Decimal(0), Decimal(now["cpu_seconds"]) - Decimal(before["cpu_seconds"]))
        mean_bytes = (Decimal(now["memory_bytes"]) + Decimal(before["memory_bytes"])) / 2
        t["memory_gb_seconds"] += (mean_bytes / _GB * seconds).quantize(Decimal("0.000001"))
        for name in FIELDS[2:]:
            if name in now and name in before:
                t[name] += max(0, now[name] - before[name])
    host = config.host or socket.gethostname()
    return [
        {
            "specversion": "1.0",
            "id": str(uuid.uuid5(_IDS, f"{host}|{subject}|{start.isoformat()}")),
            "source": f"meterline-collect-host/{host}",
            "type": config.event_type,
            "subject": subject,
            "time": start.isoformat().replace("+00:00", "Z"),
            "data": {k: str(v) for k, v in t.items()},
        }
        for subject, t in sorted(totals.items())
    ]


def collect_once(config: HostConfig, client: Client, state: State, at: datetime | None = None) -> int:
    """Read, record and commit one interval (see the module docstring); the number of events."""
    at = at or datetime.now(UTC)
    mine = state.get("host") or {"last": {}, "pending": None}
    resent = _commit(client, state, mine) if mine["pending"] is not None else 0
    readings = {**read_processes(config.processes), **read_cgroups(config.cgroups)}
    for reading in readings.values():
        reading["at"] = at.timestamp()
    events = usage_events(config, readings, mine["last"], at)
    mine["pending"] = {"events": events, "readings": readings}
    state.put("host", mine)
    state.save()
    return resent + _commit(client, state, mine)


def _commit(client: Client, state: State, mine: dict[str, Any]) -> int:
    pending = mine["pending"]
    n = sum(1 for event in pending["events"] if client.submit(event))
    mine["last"] = pending["readings"]  # processes that ended are forgotten
    mine["pending"] = None
    state.put("host", mine)
    state.save()
    return n
