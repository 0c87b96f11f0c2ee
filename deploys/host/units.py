"""Unit names, unit state, change records, and the map from "what changed" to systemd actions.
Pure and standard-library only.

The controller runs it on the fact it read (to decide whether there is anything to do and to
preview), and the host runs the very same module under the deploy lock on the state it finds
there (deploys/host/apply.py), so a concurrent run can never make it act on a stale view. Both
sides read ``systemctl list-units`` with ``LIST_UNITS`` and ``parse_list_units``.

Rules (Synapse reads its shared settings only at start):
- ``daemon-reload`` only when a unit file or drop-in changed or was removed, or a unit was disabled;
- a change to a file restarting every process (homeserver.yaml, shared worker config, database
  pgpass) restarts main and every worker; a worker's own file restarts that worker only;
- a file every Synapse process re-reads on SIGHUP (the log config: ``reloads`` holds
  ``EVERY_PROCESS``) reloads every active Synapse unit this run does not (re)start; a unit still
  activating is restarted instead (Synapse handles SIGHUP only once started, and may have read
  the old file);
- planned units that are not enabled get enabled, planned units that are not active get started;
- a unit that reloads its config (nginx) is reloaded, never restarted, when its file changed;
- stale worker units (enabled or loaded, not planned) are stopped and disabled;
- main is (re)started, and ready (``Type=notify``), before any worker command runs;
- one ``systemctl`` command per action over all its units; nothing at all when nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


@dataclass(frozen=True)
class ServiceActions:
    stop: tuple[str, ...] = ()  # stale units still loaded
    disable: tuple[str, ...] = ()  # stale units still enabled
    daemon_reload: bool = False
    enable: tuple[str, ...] = ()
    restart_main: bool = False
    start_main: bool = False
    restart_workers: tuple[str, ...] = ()
    start: tuple[str, ...] = ()  # planned workers and the target that are not active
    reload: tuple[str, ...] = ()  # active units whose config changed and reload (nginx, Synapse)

    def __bool__(self) -> bool:
        return bool(
            self.stop
            or self.disable
            or self.daemon_reload
            or self.enable
            or self.restart_main
            or self.start_main
            or self.restart_workers
            or self.start
            or self.reload
        )

    def commands(self) -> list[list[str]]:
        """``systemctl`` argument lists, in the order they must run."""
        commands: list[list[str]] = []
        if self.stop:
            commands.append(["systemctl", "stop", *self.stop])
        if self.disable:
            commands.append(["systemctl", "disable", "--no-reload", *self.disable])
        if self.daemon_reload:
            commands.append(["systemctl", "daemon-reload"])
        if self.enable:
            commands.append(["systemctl", "enable", "--no-reload", *self.enable])
        if self.restart_main:
            commands.append(["systemctl", "restart", MAIN_UNIT])
        elif self.start_main:
            commands.append(["systemctl", "start", MAIN_UNIT])
        if self.restart_workers:
            commands.append(["systemctl", "restart", *self.restart_workers])
        if self.start:
            commands.append(["systemctl", "start", *self.start])
        if self.reload:
            commands.append(["systemctl", "reload", *self.reload])
        return commands


def plan_service_actions(
    changes: Iterable[Change],
    planned_workers: Iterable[str],
    units: Mapping[str, UnitState],
) -> ServiceActions:
    """Decide the systemd actions for one host.

    Args:
        changes: files written or removed on this run.
        planned_workers: the names of every planned worker.
        units: state of every ``matrix-synapse*`` unit systemd knows or has enabled.

    Returns:
        The actions; falsy when there is nothing to do.
    """
    changes = list(changes)
    planned = list(dict.fromkeys(planned_workers))
    planned_units = {worker_unit(n) for n in planned}
    stale = sorted(u for u in units if worker_name(u) and u not in planned_units)
    stop = tuple(
        u
        for u in stale
        if units[u].active
        or (units[u].load_state == "loaded" and units[u].active_state == "failed")
    )
    disable = tuple(u for u in stale if units[u].enabled)

    restart_all = any(EVERY_PROCESS in c.restarts for c in changes)
    restarted = {name for c in changes for name in c.restarts}
    reloads = sorted({u for c in changes for u in c.reloads} - {EVERY_PROCESS})
    reload_synapse = any(EVERY_PROCESS in c.reloads for c in changes)
    # Before it is ready Synapse has no SIGHUP handler (a SIGHUP would kill it): restart it.
    if reload_synapse:
        restarted |= {
            n
            for n, u in ((MAIN, MAIN_UNIT), *((n, worker_unit(n)) for n in planned))
            if units.get(u, UnitState()).active_state == "activating"
        }
    main_state = units.get(MAIN_UNIT, UnitState())
    restart_main = (restart_all or MAIN in restarted) and main_state.active
    start_main = not main_state.active
    restart_workers = tuple(
        n
        for n in planned
        if (restart_all or n in restarted) and units.get(worker_unit(n), UnitState()).active
    )
    synapse_reloads: list[str] = []
    if reload_synapse:
        untouched = [MAIN_UNIT] if main_state.active and not restart_main else []
        untouched += [worker_unit(n) for n in planned if n not in restart_workers]
        synapse_reloads = [u for u in untouched if units.get(u, UnitState()).active]
    start = tuple(
        u
        for u in (*(worker_unit(n) for n in planned), TARGET_UNIT, *reloads)
        if not units.get(u, UnitState()).active
    )
    enable = tuple(
        u
        for u in (MAIN_UNIT, TARGET_UNIT, *(worker_unit(n) for n in planned))
        if not units.get(u, UnitState()).enabled
    )
    return ServiceActions(
        stop=stop,
        disable=disable,
        daemon_reload=any(c.unit_file for c in changes) or bool(disable),
        enable=enable,
        restart_main=restart_main,
        start_main=start_main,
        restart_workers=tuple(worker_unit(n) for n in restart_workers),
        start=start,
        reload=(*synapse_reloads, *(u for u in reloads if units.get(u, UnitState()).active)),
    )
