"""The restart planner: "what changed" -> ordered restart waves. Pure and standard-library only.

The controller runs it on the fact it read (to decide whether there is anything to do, and for
the ``--dry --diff`` preview and the run's log), and the host runs the very same function under
the deploy lock on the unit states it finds there (``host/apply.py``), so both show and do the
same waves.

Inputs: the change records of what a run writes and removes (``units.Change``: process names or
``EVERY_PROCESS``, unit files, reloads), the planned workers with their class, the new shared
topology and the one the host last applied (``Topology``, kept in ``RestartSpec.state_path``),
and the state of every unit.

Rules (Synapse reads its shared settings only at start; element-hq/synapse docs/workers.md):

- nothing is restarted unless a change concerns it; planned units not active are started;
- ``rolling`` (the default): main, when a change concerns it (its own unit or a shared file it
  reads: homeserver.yaml carries the version, so a new pin is one), goes FIRST and alone and is
  ready before any worker restarts (an upgrade migrates the schema there). Every other process
  rolls per class (worker type; stream writers per stream): a class restarts in batches of
  ``batch_size`` (fewer than the whole class when it has two or more), new workers of a class
  before its running ones; classes are independent, so wave *i* holds batch *i* of every class.
  Each wave must be ready before the next starts (``host/apply.py``);
- coupled groups, applied when the shared worker config (``topology_file``) changed and the
  topology differs from the applied one (an unknown applied topology counts as changed):
  event persisters (``stream_writers.events``) changed -> every process stops, then starts, in
  one wave; ``federation_sender_instances`` changed -> every federation sender (old ones
  included) stops, then they start, in one wave; ``pusher_instances`` changed -> main and every
  pusher in main's wave;
- a cluster that is not running (main and every worker inactive) starts in two waves: main, then
  every worker (there is no one to keep serving);
- ``all-at-once``: every wave above merged into one (main's command still runs first);
- stale workers (not planned, still loaded or enabled) are disabled before the waves. A stale
  member of a changed coupled group stops in that group's wave; another stale worker stops
  before the waves when the shared worker config changed (it may hold a duty the plan now gives
  another process, so two must never run), otherwise after the waves and after nginx reloaded
  without it (it holds no shared duty, only routed requests);
- ``daemon-reload`` only when a unit file or drop-in changed or was removed, or a unit was
  disabled; planned units not enabled are enabled; both before the first wave;
- reloads (``Change.reloads``; ``EVERY_PROCESS`` there means every Synapse unit, e.g. for the
  log config) after the waves: a Synapse unit is reloaded (SIGHUP) only when it runs and no wave
  (re)started it, and one still starting (``activating``: no SIGHUP handler yet) is restarted
  instead; another unit (nginx) is reloaded when active, started otherwise; a unit whose file
  of ours was removed (``RestartSpec.reload_on_removal``: nginx on a host that no longer runs
  main) is reloaded when active, never started;
- nothing at all when nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .units import (
    EVERY_PROCESS,
    MAIN,
    MAIN_UNIT,
    TARGET_UNIT,
    Change,
    UnitState,
    worker_name,
    worker_unit,
)

ROLLING = "rolling"
ALL_AT_ONCE = "all-at-once"
STRATEGIES = (ROLLING, ALL_AT_ONCE)
# Where the host keeps the topology it last applied (written when a run's services are ready).
STATE_PATH = "/var/lib/pyinfra-synapse/applied-topology.json"


@dataclass(frozen=True)
class Topology:
    """The shared settings Synapse's coupling rules depend on, in their configured order."""

    event_persisters: tuple[str, ...] = ()  # stream_writers.events
    federation_senders: tuple[str, ...] = ()  # federation_sender_instances
    pushers: tuple[str, ...] = ()  # pusher_instances


@dataclass(frozen=True)
class RestartSpec:
    """What the planner needs besides the changes and the unit states; shipped in the manifest.

    ``classes`` maps every planned worker to its class (workers of one class are
    interchangeable: one never restarts together with all the others); ``topology_file`` is the
    shared worker config the topology is written in (conf.d/workers.yaml).
    """

    strategy: str
    batch_percent: int
    classes: dict[str, str]
    topology: Topology
    topology_file: str
    state_path: str = STATE_PATH
    # False on a cluster's workers host or a retired one: main runs on another machine, so it
    # is never started here (a main unit found running, e.g. on a former main host, is stale).
    runs_main: bool = True
    # path -> unit reloaded (when active, never started) once that file of ours is removed:
    # nginx's routing file on a host that no longer runs main, so nginx stops serving it.
    reload_on_removal: dict[str, str] = field(default_factory=dict)


def batch_size(class_size: int, percent: int) -> int:
    """Processes of a class of ``class_size`` restarted per wave: ``percent`` of it rounded down,
    at least 1, and fewer than the whole class when it has two or more."""
    size = max(1, class_size * percent // 100)
    return min(size, class_size - 1) if class_size >= 2 else 1


@dataclass(frozen=True)
class Wave:
    """Units acted on together; the next wave starts only once these are ready.

    Commands run in this order: stop ``stop_start`` and ``stop`` (stale units) together, then
    main's own command (restart or start), then restart the other ``restart`` units, then start
    the other ``stop_start`` and ``start`` units. ``reasons`` says why, per unit.
    """

    restart: tuple[str, ...] = ()
    stop_start: tuple[str, ...] = ()  # a coupled group: all stopped, then all started
    start: tuple[str, ...] = ()  # new or not running
    stop: tuple[str, ...] = ()  # stale members of a coupled group
    reasons: Mapping[str, str] = field(default_factory=dict)

    def ready_units(self) -> list[str]:
        """The units that must be ready before the next wave: everything (re)started."""
        return [*self.restart, *self.stop_start, *self.start]

    def stopping(self) -> list[str]:
        """The processes this wave stops (restarted ones included), by name: what nginx must
        stop sending requests to first (``host/drain.py``)."""
        return [
            MAIN if u == MAIN_UNIT else worker_name(u) or u
            for u in (*self.restart, *self.stop_start, *self.stop)
        ]

    def commands(self) -> list[list[str]]:
        commands: list[list[str]] = []
        if self.stop_start or self.stop:
            commands.append(["systemctl", "stop", *self.stop_start, *self.stop])
        started = [*self.stop_start, *self.start]
        if MAIN_UNIT in self.restart:
            commands.append(["systemctl", "restart", MAIN_UNIT])
        elif MAIN_UNIT in started:
            commands.append(["systemctl", "start", MAIN_UNIT])
        others = [u for u in self.restart if u != MAIN_UNIT]
        if others:
            commands.append(["systemctl", "restart", *others])
        others = [u for u in started if u != MAIN_UNIT]
        if others:
            commands.append(["systemctl", "start", *others])
        return commands

    def describe(self) -> str:
        """``restart matrix-synapse.service (homeserver.yaml changed); start ...``."""
        parts = []
        for verb, group in (
            ("stop", self.stop),
            ("stop then start", self.stop_start),
            ("restart", self.restart),
            ("start", self.start),
        ):
            by_reason: dict[str, list[str]] = {}
            for unit in group:
                by_reason.setdefault(self.reasons.get(unit, ""), []).append(unit)
            for reason, unit_list in by_reason.items():
                parts.append(f"{verb} {', '.join(unit_list)}" + (f" ({reason})" if reason else ""))
        return "; ".join(parts)


@dataclass(frozen=True)
class RestartPlan:
    """Every systemd action of a run, in order: ``before``, each wave, ``after``."""

    stop: tuple[str, ...] = ()  # stale units stopped before the waves
    disable: tuple[str, ...] = ()  # stale units still enabled
    daemon_reload: bool = False
    enable: tuple[str, ...] = ()
    waves: tuple[Wave, ...] = ()
    start_after: tuple[str, ...] = ()  # the target and reloaded units not active (nginx)
    reload: tuple[str, ...] = ()  # active units whose config changed and that reload
    stop_after: tuple[str, ...] = ()  # stale routed workers, once nginx no longer sends to them
    topology_changed: tuple[str, ...] = ()  # the coupled groups that changed, for the log

    def __bool__(self) -> bool:
        return bool(
            self.stop
            or self.disable
            or self.daemon_reload
            or self.enable
            or self.waves
            or self.start_after
            or self.reload
            or self.stop_after
        )

    def before_commands(self) -> list[list[str]]:
        commands: list[list[str]] = []
        if self.stop:
            commands.append(["systemctl", "stop", *self.stop])
        if self.disable:
            commands.append(["systemctl", "disable", "--no-reload", *self.disable])
        if self.daemon_reload:
            commands.append(["systemctl", "daemon-reload"])
        if self.enable:
            commands.append(["systemctl", "enable", "--no-reload", *self.enable])
        return commands

    def after_commands(self) -> list[list[str]]:
        """After the waves: start and reload (then, after a grace, ``stop_after_commands``)."""
        commands: list[list[str]] = []
        if self.start_after:
            commands.append(["systemctl", "start", *self.start_after])
        if self.reload:
            commands.append(["systemctl", "reload", *self.reload])
        return commands

    def stop_after_commands(self) -> list[list[str]]:
        return [["systemctl", "stop", *self.stop_after]] if self.stop_after else []

    def commands(self) -> list[list[str]]:
        """Every ``systemctl`` command, in the order they run."""
        return [
            *self.before_commands(),
            *(c for wave in self.waves for c in wave.commands()),
            *self.after_commands(),
            *self.stop_after_commands(),
        ]

    def after_ready_units(self) -> list[str]:
        """Units started after the waves that must be ready too (nginx, when it was stopped)."""
        return [u for u in self.start_after if u.endswith(".service")]

    def synapse_restarted(self) -> bool:
        """Whether a Synapse process was (re)started (then Redis must count every process)."""
        return any(is_synapse(u) for w in self.waves for u in w.ready_units())

    def describe(self) -> list[str]:
        """One line per wave, as the preview and the run's log print them."""
        lines = []
        count = len(self.waves)
        for number, wave in enumerate(self.waves, 1):
            lines.append(f"Wave {number}/{count}: {wave.describe()}")
        return lines

    def summary(self) -> list[dict[str, object]]:
        """The waves as JSON-able objects (the host's summary line)."""
        return [
            {
                "wave": number,
                "restart": list(w.restart),
                "stop_start": list(w.stop_start),
                "start": list(w.start),
                "stop": list(w.stop),
            }
            for number, w in enumerate(self.waves, 1)
        ]


def is_synapse(unit: str) -> bool:
    return unit == MAIN_UNIT or worker_name(unit) is not None


def unit_of(name: str) -> str:
    return MAIN_UNIT if name == MAIN else worker_unit(name)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def plan_restarts(
    changes: Iterable[Change],
    spec: RestartSpec,
    planned_workers: Sequence[str],
    units: Mapping[str, UnitState],
    applied: Topology | None,
) -> RestartPlan:
    """Plan every systemd action of one run as ordered waves.

    Args:
        changes: files written or removed by this run (and owed by an interrupted one).
        spec: strategy, batch size, each planned worker's class, the new topology.
        planned_workers: every planned worker, in plan order (batches follow it).
        units: state of every ``matrix-synapse*`` unit systemd knows or has enabled, and of the
            units reloaded on a change (nginx).
        applied: the topology the host last applied; None when unknown.

    Returns:
        The plan; falsy when there is nothing to do.
    """
    changes = list(changes)
    planned = list(dict.fromkeys(planned_workers))

    def state(unit: str) -> UnitState:
        return units.get(unit, UnitState())

    planned_units = {worker_unit(n) for n in planned}
    stale = sorted(u for u in units if worker_name(u) and u not in planned_units)
    mains = [MAIN] if spec.runs_main else []
    if not spec.runs_main:
        # The target last: stopping it stops its workers, which systemd cannot find by name
        # once their template unit file is gone (a retired host).
        target = [] if planned else [TARGET_UNIT]
        stale = [u for u in (MAIN_UNIT, *stale, *target) if u in units]
    running_stale = [
        u
        for u in stale
        if state(u).active
        or (state(u).load_state == "loaded" and state(u).active_state == "failed")
    ]
    disable = tuple(u for u in stale if state(u).enabled)

    # Why each process restarts: the first change that concerns it.
    reason: dict[str, str] = {}
    for change in changes:
        names = [*planned, *mains] if EVERY_PROCESS in change.restarts else change.restarts
        for name in names:
            reason.setdefault(name, f"{_basename(change.path)} changed")
    for change in changes:
        if EVERY_PROCESS in change.reloads:
            # Synapse handles SIGHUP only once started (before, it would kill it): restart a
            # process still starting instead, it may have read the old file.
            for name in (*mains, *planned):
                if state(unit_of(name)).active_state == "activating":
                    reason.setdefault(name, f"{_basename(change.path)} changed while it started")

    # The topology is written in the shared worker config: unless it changed, no group did.
    shared_changed = any(c.path == spec.topology_file for c in changes)
    new, old = spec.topology, applied
    events = shared_changed and (old is None or old.event_persisters != new.event_persisters)
    senders = shared_changed and (old is None or old.federation_senders != new.federation_senders)
    pushers = shared_changed and (old is None or old.pushers != new.pushers)
    changed_groups = tuple(
        name
        for name, hit in (
            ("stream_writers.events", events),
            ("federation_sender_instances", senders),
            ("pusher_instances", pushers),
        )
        if hit
    )

    main_active = state(MAIN_UNIT).active and spec.runs_main
    running = {n for n in planned if state(worker_unit(n)).active}
    cold = not main_active and not running

    # What each planned process needs: "restart" (running, concerned), "start" (not running).
    def need(name: str) -> str | None:
        if name == MAIN and not spec.runs_main:
            return None
        active = main_active if name == MAIN else name in running
        if not active:
            return "start"
        if name in reason:
            return "restart"
        return None

    def why(name: str, action: str) -> str:
        if action == "start":
            if name == MAIN or state(worker_unit(name)).load_state == "loaded":
                return "not running"
            return "new worker"
        return reason[name]

    waves: list[Wave] = []
    stop_before = list(running_stale)
    stop_after: list[str] = []
    if not shared_changed and running_stale:
        # No shared duty moved: the stale workers only served routed requests.
        stop_before, stop_after = [], list(running_stale)
    old_members = {
        "events": set(old.event_persisters) if old else set(),
        "senders": set(old.federation_senders) if old else set(),
        "pushers": set(old.pushers) if old else set(),
    }

    def stale_members(group: str) -> list[str]:
        members = [u for u in stop_before if worker_name(u) in old_members[group]]
        for u in members:
            stop_before.remove(u)
        return members

    if cold:
        first = Wave(start=(MAIN_UNIT,), reasons={MAIN_UNIT: why(MAIN, "start")})
        rest = tuple(worker_unit(n) for n in planned)
        waves = ([first] if spec.runs_main else []) + (
            [Wave(start=rest, reasons={worker_unit(n): why(n, "start") for n in planned})]
            if rest
            else []
        )
    elif events:
        # Adding or removing event persisters: every process stops, then every process starts.
        wave = _WaveBuilder()
        for group in ("events", "senders", "pushers"):
            for unit in stale_members(group):
                wave.stop.append(unit)
                wave.reasons[unit] = "no longer planned; stream_writers.events changed"
        for name in (*mains, *planned):
            unit = unit_of(name)
            if need(name) == "start":
                wave.add(unit, "start", why(name, "start"))
            else:
                wave.stop_start.append(unit)
                wave.reasons[unit] = (
                    "stream_writers.events changed: every process restarts together"
                )
        waves = [wave.build()]
    else:
        waves = _rolling_waves(planned, spec, need, why, senders, pushers, stale_members)
    if spec.strategy == ALL_AT_ONCE and len(waves) > 1:
        waves = [_merge(waves)]

    # Reloads: a Synapse unit gets a SIGHUP only when it runs and no wave (re)starts it.
    touched = {u for w in waves for u in (*w.ready_units(), *w.stop)}
    asked = {u for c in changes for u in c.reloads}
    synapse = [*map(unit_of, mains), *(worker_unit(n) for n in planned)]
    if EVERY_PROCESS not in asked:
        synapse = [u for u in synapse if u in asked]
    others = sorted(u for u in asked - {EVERY_PROCESS} if not is_synapse(u))
    removed = {spec.reload_on_removal[c.path] for c in changes if c.path in spec.reload_on_removal}
    reload = tuple(
        u
        for u in (*synapse, *others, *sorted(removed - set(others)))
        if state(u).active_state == "active" and u not in touched
    )
    target = [TARGET_UNIT] if spec.runs_main or planned else []
    start_after = tuple(u for u in (*target, *others) if not state(u).active)
    enable = tuple(
        u
        for u in (*map(unit_of, mains), *target, *(worker_unit(n) for n in planned))
        if not state(u).enabled
    )
    return RestartPlan(
        stop=tuple(stop_before),
        disable=disable,
        daemon_reload=any(c.unit_file for c in changes) or bool(disable),
        enable=enable,
        waves=tuple(w for w in waves if w.ready_units() or w.stop),
        start_after=start_after,
        reload=reload,
        stop_after=tuple(stop_after),
        topology_changed=changed_groups,
    )


def _rolling_waves(planned, spec, need, why, senders, pushers, stale_members) -> list[Wave]:
    """Main's wave (with every pusher when pusher_instances changed), then batch i of every
    class in wave i (with every federation sender stopped then started in the first)."""
    waves: list[Wave] = []
    pusher_names = set(spec.topology.pushers)
    sender_names = set(spec.topology.federation_senders)

    main_need = need(MAIN) or ("restart" if pushers and spec.runs_main else None)
    first = _WaveBuilder()
    if main_need:
        reason = why(MAIN, main_need) if need(MAIN) else "pusher_instances changed"
        first.add(MAIN_UNIT, main_need, reason)
    if pushers:
        for unit in stale_members("pushers"):
            first.stop.append(unit)
            first.reasons[unit] = "no longer planned; pusher_instances changed"
        for name in planned:
            if name in pusher_names:
                action = need(name) or "restart"
                first.add(
                    worker_unit(name),
                    action,
                    "pusher_instances changed: restarts with main"
                    if action == "restart"
                    else why(name, action),
                )
    if first:
        waves.append(first.build())

    coupled = _WaveBuilder()
    if senders:
        for unit in stale_members("senders"):
            coupled.stop.append(unit)
            coupled.reasons[unit] = "no longer planned; federation_sender_instances changed"
        for name in planned:
            if name in sender_names:
                action = need(name)
                unit = worker_unit(name)
                if action == "start":
                    coupled.add(unit, "start", why(name, "start"))
                else:
                    coupled.stop_start.append(unit)
                    coupled.reasons[unit] = (
                        "federation_sender_instances changed: every sender stops, then starts"
                    )

    done = {
        n for n in planned if (pushers and n in pusher_names) or (senders and n in sender_names)
    }
    by_class: dict[str, list[str]] = {}
    for name in planned:
        by_class.setdefault(spec.classes.get(name, name), []).append(name)
    batches_by_class = []
    for members in by_class.values():
        todo = [n for n in members if n not in done and need(n)]
        # New workers first: the running ones keep serving until the new ones are ready.
        todo.sort(key=lambda n: need(n) != "start")
        size = batch_size(len(members), spec.batch_percent)
        batches_by_class.append([todo[i : i + size] for i in range(0, len(todo), size)])
    rounds = max((len(b) for b in batches_by_class), default=0)
    for i in range(max(rounds, 1 if coupled else 0)):
        wave = coupled if i == 0 else _WaveBuilder()
        for batches in batches_by_class:
            if i < len(batches):
                for name in batches[i]:
                    action = need(name)
                    wave.add(worker_unit(name), action, why(name, action))
        if wave:
            waves.append(wave.build())
    return waves


class _WaveBuilder:
    def __init__(self) -> None:
        self.restart: list[str] = []
        self.stop_start: list[str] = []
        self.start: list[str] = []
        self.stop: list[str] = []
        self.reasons: dict[str, str] = {}

    def add(self, unit: str, action: str, reason: str) -> None:
        (self.restart if action == "restart" else self.start).append(unit)
        self.reasons[unit] = reason

    def __bool__(self) -> bool:
        return bool(self.restart or self.stop_start or self.start or self.stop)

    def build(self) -> Wave:
        return Wave(
            tuple(self.restart),
            tuple(self.stop_start),
            tuple(self.start),
            tuple(self.stop),
            dict(self.reasons),
        )


def _merge(waves: list[Wave]) -> Wave:
    """One wave doing what ``waves`` do (the all-at-once strategy)."""
    reasons: dict[str, str] = {}
    for w in waves:
        reasons.update(w.reasons)
    return Wave(
        restart=tuple(u for w in waves for u in w.restart),
        stop_start=tuple(u for w in waves for u in w.stop_start),
        start=tuple(u for w in waves for u in w.start),
        stop=tuple(u for w in waves for u in w.stop),
        reasons=reasons,
    )


# --- The applied topology on the host ------------------------------------------------------------


def parse_topology(text: str | None) -> Topology | None:
    """The applied topology from its JSON (the state file or the host fact's line); None when
    absent or unreadable (then the coupling rules assume every group changed)."""
    if not text:
        return None
    import json

    try:
        data = json.loads(text)
        return Topology(
            event_persisters=_names(data["event_persisters"]),
            federation_senders=_names(data["federation_senders"]),
            pushers=_names(data["pushers"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of names")
    return tuple(value)


def topology_json(topology: Topology) -> str:
    """One line (the host fact reads it as one)."""
    import json

    return json.dumps(
        {
            "event_persisters": list(topology.event_persisters),
            "federation_senders": list(topology.federation_senders),
            "pushers": list(topology.pushers),
        },
        sort_keys=True,
    )
