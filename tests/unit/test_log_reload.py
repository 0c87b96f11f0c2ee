"""A log-config change reloads every Synapse process (SIGHUP), never restarts one.

Synapse re-reads its log config on SIGHUP (synapse/config/logger.py registers
``_reload_logging_config`` with synapse/app/_base.py's SIGHUP handling), and the units'
``ExecReload`` sends it."""

from __future__ import annotations

from pathlib import Path

from deploys.core.drift import change_of
from deploys.core.plan import build_plan
from deploys.core.render import desired_state, paths_for
from deploys.core.settings import parse_settings
from deploys.host.restarts import RestartPlan, RestartSpec, Topology, plan_restarts
from deploys.host.units import (
    EVERY_PROCESS,
    MAIN_UNIT,
    TARGET_UNIT,
    Change,
    UnitState,
    worker_unit,
)
from deploys.operations.synapse import reloaded
from tests.support.settings_data import make_data

REPO = Path(__file__).resolve().parents[2]
WORKERS = ["generic-0", "generic-1", "pusher-0"]
UP = UnitState("loaded", "active", enabled=True)
LOG = Change("/etc/matrix-synapse/log.yaml", reloads=frozenset({EVERY_PROCESS}))


SPEC = RestartSpec(
    strategy="rolling",
    batch_percent=20,
    classes={"generic-0": "generic", "generic-1": "generic", "pusher-0": "pusher"},
    topology=Topology(pushers=("pusher-0",)),
    topology_file="/etc/matrix-synapse/conf.d/workers.yaml",
)


def all_up() -> dict[str, UnitState]:
    return {MAIN_UNIT: UP, TARGET_UNIT: UP, **{worker_unit(w): UP for w in WORKERS}}


def plan_service_actions(
    changes: list[Change], workers: list[str], units: dict[str, UnitState]
) -> RestartPlan:
    """The restart planner with the topology unchanged."""
    return plan_restarts(changes, SPEC, workers, units, SPEC.topology)


def restarted(plan: RestartPlan) -> list[str]:
    return [u for w in plan.waves for u in w.restart]


def started(plan: RestartPlan) -> list[str]:
    return [u for w in plan.waves for u in w.start]


def test_the_log_config_reloads_every_synapse_process_and_restarts_none() -> None:
    settings = parse_settings(
        make_data(matrix_synapse_workers_enabled=True, matrix_synapse_workers_preset="one-of-each")
    )
    desired = desired_state(settings, build_plan(settings, "host-a"))
    record = change_of(desired.files[paths_for(settings).log_config])
    assert record == Change(paths_for(settings).log_config, reloads=frozenset({EVERY_PROCESS}))
    # Every file restarting every process is one Synapse reads only at start.
    restart_everyone = {p for p, f in desired.files.items() if EVERY_PROCESS in f.restarts}
    assert paths_for(settings).log_config not in restart_everyone
    assert paths_for(settings).homeserver in restart_everyone
    # The fact asks systemd about nginx, never about a unit called "*".
    assert reloaded(desired) == ["nginx.service"]


def test_both_units_send_sighup_on_reload() -> None:
    for unit in ("matrix-synapse.service", "matrix-synapse-worker@.service"):
        text = (REPO / "templates/systemd" / f"{unit}.j2").read_text()
        assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in text, unit


def test_a_log_change_is_one_reload_of_main_and_every_worker() -> None:
    actions = plan_service_actions([LOG], WORKERS, all_up())
    assert actions.commands() == [["systemctl", "reload", MAIN_UNIT, *map(worker_unit, WORKERS)]]
    assert actions.waves == ()


def test_processes_this_run_restarts_or_starts_are_not_also_reloaded() -> None:
    units = all_up()
    del units[worker_unit("pusher-0")]  # new: started with the new log config
    own = Change("/etc/matrix-synapse/workers/generic-1.yaml", frozenset({"generic-1"}))
    actions = plan_service_actions([LOG, own], WORKERS, units)
    assert restarted(actions) == [worker_unit("generic-1")]
    assert started(actions) == [worker_unit("pusher-0")]
    assert actions.reload == (MAIN_UNIT, worker_unit("generic-0"))
    everyone = Change("/etc/matrix-synapse/homeserver.yaml", frozenset({EVERY_PROCESS}))
    all_restart = plan_service_actions([LOG, everyone], WORKERS, all_up())
    assert restarted(all_restart)[0] == MAIN_UNIT and len(restarted(all_restart)) == 4
    assert all_restart.reload == ()


def test_a_process_still_starting_is_restarted_not_sent_a_sighup() -> None:
    # Synapse installs its SIGHUP handler once started: a SIGHUP before that would kill it.
    units = all_up()
    units[worker_unit("generic-0")] = UnitState("loaded", "activating", enabled=True)
    units[worker_unit("generic-1")] = UnitState("loaded", "failed", enabled=True)
    actions = plan_service_actions([LOG], WORKERS, units)
    assert restarted(actions) == [worker_unit("generic-0")]
    assert started(actions) == [worker_unit("generic-1")]
    assert actions.reload == (MAIN_UNIT, worker_unit("pusher-0"))


def test_a_log_change_alongside_nginx_reloads_both() -> None:
    nginx = Change("/etc/nginx/conf.d/x.conf", reloads=frozenset({"nginx.service"}))
    units = {**all_up(), "nginx.service": UP}
    actions = plan_service_actions([LOG, nginx], WORKERS, units)
    assert actions.commands() == [
        ["systemctl", "reload", MAIN_UNIT, *map(worker_unit, WORKERS), "nginx.service"]
    ]
