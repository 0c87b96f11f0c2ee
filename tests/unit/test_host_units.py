"""The pure mapping from "what changed" to systemd actions (deploys/host/units.py)."""

from __future__ import annotations

from deploys.host.units import (
    EVERY_PROCESS,
    MAIN_UNIT,
    TARGET_UNIT,
    Change,
    UnitState,
    plan_service_actions,
    stale_change,
    worker_unit,
)

WORKERS = ["generic-0", "generic-1", "pusher-0"]
UP = UnitState("loaded", "active", enabled=True)


def all_up(*extra: str) -> dict[str, UnitState]:
    units = {MAIN_UNIT: UP, TARGET_UNIT: UP, **{worker_unit(w): UP for w in WORKERS}}
    units.update({u: UP for u in extra})
    return units


def test_nothing_changed_means_no_action() -> None:
    actions = plan_service_actions([], WORKERS, all_up())
    assert not actions and actions.commands() == []


def test_a_workers_own_file_restarts_only_that_worker() -> None:
    actions = plan_service_actions(
        [Change("/w/generic-1.yaml", frozenset({"generic-1"}))], WORKERS, all_up()
    )
    assert actions.commands() == [["systemctl", "restart", worker_unit("generic-1")]]


def test_shared_config_restarts_main_first_then_every_worker_in_one_command() -> None:
    actions = plan_service_actions(
        [Change("/hs.yaml", frozenset({EVERY_PROCESS}))], WORKERS, all_up()
    )
    assert actions.commands() == [
        ["systemctl", "restart", MAIN_UNIT],
        ["systemctl", "restart", *map(worker_unit, WORKERS)],
    ]


def test_a_unit_file_change_reloads_systemd_before_restarting() -> None:
    template = Change(
        "/etc/systemd/system/matrix-synapse-worker@.service", frozenset(WORKERS), unit_file=True
    )
    commands = plan_service_actions([template], WORKERS, all_up()).commands()
    assert commands[0] == ["systemctl", "daemon-reload"]
    assert commands[1] == ["systemctl", "restart", *map(worker_unit, WORKERS)]


def test_new_workers_are_enabled_and_started_and_stale_ones_stopped_and_disabled() -> None:
    units = all_up(worker_unit("old-0"))
    del units[worker_unit("pusher-0")]  # new: unknown to systemd yet
    actions = plan_service_actions([], WORKERS, units)
    assert actions.stop == (worker_unit("old-0"),)
    assert actions.disable == (worker_unit("old-0"),)
    assert actions.daemon_reload
    assert actions.enable == (worker_unit("pusher-0"),)
    assert actions.start == (worker_unit("pusher-0"),)
    assert not actions.restart_workers and not actions.restart_main


def test_a_not_found_stale_unit_is_disabled_but_not_stopped() -> None:
    units = all_up()
    units[worker_unit("ghost")] = UnitState("not-found", "inactive", enabled=True)
    actions = plan_service_actions([], WORKERS, units)
    assert actions.stop == () and actions.disable == (worker_unit("ghost"),)


def test_nginx_is_reloaded_when_running_and_started_otherwise() -> None:
    change = Change("/etc/nginx/conf.d/x.conf", reloads=frozenset({"nginx.service"}))
    running = plan_service_actions([change], WORKERS, all_up("nginx.service"))
    assert running.commands() == [["systemctl", "reload", "nginx.service"]]
    stopped = plan_service_actions([change], WORKERS, all_up())
    assert stopped.commands() == [["systemctl", "start", "nginx.service"]]


def test_a_stopped_main_is_started_not_restarted() -> None:
    units = all_up()
    units[MAIN_UNIT] = UnitState("loaded", "failed", enabled=True)
    actions = plan_service_actions([Change("/hs.yaml", frozenset({EVERY_PROCESS}))], WORKERS, units)
    assert actions.commands()[0] == ["systemctl", "start", MAIN_UNIT]


def test_stale_change_rules() -> None:
    assert stale_change("/etc/mx/workers/generic-9.yaml", "/etc/systemd/system") == Change(
        "/etc/mx/workers/generic-9.yaml", frozenset({"generic-9"}), False
    )
    dropin = "/etc/systemd/system/matrix-synapse-worker@g.service.d/50-pyinfra-synapse-limits.conf"
    assert stale_change(dropin, "/etc/systemd/system/") == Change(dropin, frozenset(), True)
    assert stale_change("/etc/mx/secrets/database.pgpass", "/etc/systemd/system") == Change(
        "/etc/mx/secrets/database.pgpass", frozenset(), False
    )
