"""Unit names, unit state and change records. Pure and standard-library only.

The controller and the host both use it: ``systemctl list-units`` is read with ``LIST_UNITS`` and
``parse_list_units``; a ``Change`` says what writing or removing one file restarts (process
names, ``EVERY_PROCESS`` for all: homeserver.yaml, the shared worker config, the database pgpass;
a worker's own file restarts that worker only), reloads (``EVERY_PROCESS``: every Synapse unit,
e.g. the log config, re-read on SIGHUP; or a unit such as nginx) and whether it is a unit file
(``daemon-reload``). What a run does with them, in which order and in which restart waves, is the
restart planner's (``restarts.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .ownership import is_under

EVERY_PROCESS = "*"
MAIN = "main"
MAIN_UNIT = "matrix-synapse.service"
TARGET_UNIT = "matrix-synapse.target"
WORKER_UNIT_PREFIX = "matrix-synapse-worker@"
ACTIVE_STATES = frozenset({"active", "activating", "reloading"})
# Every synapse unit, loaded or enabled (a glob systemctl and the shell both understand).
UNIT_GLOB = "matrix-synapse*"
# ``systemctl list-units`` in one cheap call (``systemctl show`` asks systemd one unit at a time:
# seconds at 1,000 units); followed by unit names or globs, never none (that lists every unit).
LIST_UNITS = ("systemctl", "list-units", "--all", "--plain", "--no-legend", "--full")


def parse_list_units(lines: Iterable[str]) -> dict[str, tuple[str, str]]:
    """(load, active) state by unit from ``LIST_UNITS`` output (``UNIT LOAD ACTIVE SUB ...``)."""
    states = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def worker_unit(name: str) -> str:
    return f"{WORKER_UNIT_PREFIX}{name}.service"


def worker_name(unit: str) -> str | None:
    """The worker a unit runs, or None if it is not a worker instance."""
    if unit.startswith(WORKER_UNIT_PREFIX) and unit.endswith(".service"):
        name = unit[len(WORKER_UNIT_PREFIX) : -len(".service")]
        return name or None
    return None


@dataclass(frozen=True)
class UnitState:
    """What systemd says about one unit (``systemctl list-units``), plus whether it is enabled."""

    load_state: str = "not-found"
    active_state: str = "inactive"
    enabled: bool = False

    @property
    def active(self) -> bool:
        return self.active_state in ACTIVE_STATES


@dataclass(frozen=True)
class Change:
    """The change record of one file written or removed: what it restarts (process names,
    ``EVERY_PROCESS`` for all), whether it is a unit file (``daemon-reload``), what it reloads
    (unit names, ``EVERY_PROCESS`` for every Synapse unit).
    The controller builds one per planned file (``DesiredFile.change``) and ships them in the
    manifest; the journal stores them."""

    path: str
    restarts: frozenset[str] = frozenset()
    unit_file: bool = False
    reloads: frozenset[str] = frozenset()


def stale_change(path: str, systemd_dir: str) -> Change:
    """What removing an owned file the plan no longer has means: a unit file or drop-in needs a
    daemon-reload; a worker's own ``<name>.yaml`` concerns that (unplanned) worker only."""
    unit_file = is_under(path, systemd_dir)
    name = path.rsplit("/", 1)[-1]
    restarts = frozenset() if unit_file or not name.endswith(".yaml") else {name[: -len(".yaml")]}
    return Change(path, frozenset(restarts), unit_file)


def run_changes(written: Iterable[Change], stale: Iterable[str], systemd_dir: str) -> list[Change]:
    """Everything a run changes: the files it writes, then the stale files it removes."""
    return [*written, *(stale_change(path, systemd_dir) for path in stale)]
