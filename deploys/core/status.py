"""The status report: what runs on a machine compared with what the plan says should run there.
Pure: it reads the status probe's output (``deploys/host/status_probe.py``) and the planned units
and health URLs (``deploys/core/render.py``), and returns rows; ``deploys/core/status_table.py``
prints them.

A planned process is **ready** by the deploy's own readiness criterion: its unit is active and its
health URL (``render.health_urls``, on an address its listener binds) answers 200. A unit of ours
(``matrix-synapse*``) that systemd has loaded or running and the plan does not have is
**unplanned**; the target (``matrix-synapse.target``) is planned but runs no process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from deploys.host.units import TARGET_UNIT, parse_list_units

# How long each /health GET may take: a process that answers slower is not ready.
HEALTH_TIMEOUT: Final = 2.0
_SS_PID = re.compile(r"pid=(\d+)")


@dataclass(frozen=True)
class UnitProcesses:
    """A unit's processes as its cgroup holds them."""

    pid: int  # the main process: the one whose parent is outside the unit
    uptime: int  # seconds since the main process started
    rss: int  # resident memory of all the unit's processes, bytes
    pids: tuple[int, ...]


@dataclass
class StatusReading:
    """What the probe read on one host, as it read it (``parse_probe_output``)."""

    units: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # load, active, sub
    processes: dict[str, UnitProcesses] = field(default_factory=dict)
    listening: dict[int, tuple[str, ...]] = field(default_factory=dict)  # pid -> "addr:port"
    health: dict[str, str | None] = field(default_factory=dict)  # unit -> None (200) or why not
    errors: list[str] = field(default_factory=list)


def parse_probe_output(lines: Iterable[str]) -> StatusReading:
    """The probe's tagged lines (see ``deploys/host/status_probe.py``) as a ``StatusReading``."""
    reading = StatusReading()
    unit_lines: list[str] = []
    listening: dict[int, list[str]] = {}
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "U":
            unit_lines.append(rest)
        elif tag == "P":
            unit, pid, uptime, rss, pids = rest.split(" ")
            reading.processes[unit] = UnitProcesses(
                int(pid), int(uptime), int(rss), tuple(int(p) for p in pids.split(","))
            )
        elif tag == "L":
            parts = rest.split()
            if len(parts) >= 4:  # State Recv-Q Send-Q Local Peer Process
                for pid in _SS_PID.findall(rest):
                    listening.setdefault(int(pid), []).append(parts[3])
        elif tag == "H":
            unit, _, result = rest.partition(" ")
            reading.health[unit] = None if result == "OK" else result
        elif tag == "E":
            reading.errors.append(rest)
    subs = {p[0]: p[3] for p in (line.split() for line in unit_lines) if len(p) > 3}
    for unit, (load, active) in parse_list_units(unit_lines).items():
        reading.units[unit] = (load, active, subs.get(unit, ""))
    reading.listening = {
        pid: tuple(dict.fromkeys(addresses)) for pid, addresses in listening.items()
    }
    return reading


@dataclass(frozen=True)
class ProcessStatus:
    """One row of the report: a planned process, or a unit of ours the plan does not have."""

    unit: str
    planned: bool
    load_state: str
    active_state: str
    sub_state: str
    pid: int | None
    uptime: int | None
    rss: int | None
    listening: tuple[str, ...]  # "addr:port" of every listening TCP socket of its processes
    problem: str | None  # why a planned process is not ready; None when it is

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def ready(self) -> bool:
        return self.planned and self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "planned": self.planned,
            "load": self.load_state,
            "active": self.active_state,
            "sub": self.sub_state,
            "pid": self.pid,
            "uptime_seconds": self.uptime,
            "rss_bytes": self.rss,
            "listening": list(self.listening),
            "ready": self.ready,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class HostStatus:
    machine: str
    planned: tuple[ProcessStatus, ...]  # in plan order: main first
    unplanned: tuple[ProcessStatus, ...]
    errors: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        active = sum(row.active for row in self.planned)
        ready = sum(row.ready for row in self.planned)
        return (
            f"{len(self.planned)} planned, {active} active, {ready} ready, "
            f"{len(self.unplanned)} unplanned"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "summary": self.summary,
            "planned": [row.as_dict() for row in self.planned],
            "unplanned": [row.as_dict() for row in self.unplanned],
            "errors": list(self.errors),
        }


def host_status(
    machine: str,
    planned_units: Sequence[str],
    health_urls: Mapping[str, str],
    reading: StatusReading,
) -> HostStatus:
    """Compare what the probe read with the plan.

    Args:
        machine: the inventory host.
        planned_units: every planned process's unit, in plan order.
        health_urls: unit -> the URL that must answer 200 (``render.health_urls``).
        reading: what the probe read.

    Returns:
        A row per planned process and per unplanned unit of ours that is loaded or active.
    """
    planned = tuple(_row(unit, True, health_urls, reading) for unit in planned_units)
    known = {*planned_units, TARGET_UNIT}
    unplanned = tuple(
        _row(unit, False, health_urls, reading)
        for unit, (load, active, _) in sorted(reading.units.items())
        if unit not in known and (load == "loaded" or active != "inactive")
    )
    return HostStatus(machine, planned, unplanned, tuple(reading.errors))


def _row(
    unit: str, planned: bool, health_urls: Mapping[str, str], reading: StatusReading
) -> ProcessStatus:
    load, active, sub = reading.units.get(unit, ("not-found", "inactive", "dead"))
    processes = reading.processes.get(unit)
    listening: tuple[str, ...] = ()
    if processes is not None:
        listening = tuple(
            dict.fromkeys(a for pid in processes.pids for a in reading.listening.get(pid, ()))
        )
    problem = None
    if planned:
        if load != "loaded":
            problem = f"unit {load}"
        elif active != "active":
            problem = f"unit {active} ({sub})"
        elif unit in health_urls:
            problem = reading.health.get(unit, "/health not probed")
    return ProcessStatus(
        unit=unit,
        planned=planned,
        load_state=load,
        active_state=active,
        sub_state=sub,
        pid=processes.pid if processes else None,
        uptime=processes.uptime if processes else None,
        rss=processes.rss if processes else None,
        listening=listening,
        problem=problem,
    )
