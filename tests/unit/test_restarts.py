"""The restart planner (deploys/host/restarts.py): which processes restart together, in which wave.

Every rule of the module docstring has a test here, on the same function the host apply and the
controller preview call. Plans come from real settings (``restart_spec`` of a real plan) where the
topology matters, and from hand-written classes where only the batching does.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from deploys.core.plan import build_plan
from deploys.core.restarts import restart_spec
from deploys.core.settings import SettingsError, parse_settings
from deploys.host.restarts import (
    ALL_AT_ONCE,
    RestartPlan,
    RestartSpec,
    Topology,
    Wave,
    batch_size,
    parse_topology,
    plan_restarts,
    topology_json,
)
from deploys.host.units import (
    EVERY_PROCESS,
    MAIN,
    MAIN_UNIT,
    TARGET_UNIT,
    Change,
    UnitState,
    stale_change,
    worker_unit,
)
from tests.support.settings_data import make_data

UP = UnitState("loaded", "active", enabled=True)
SHARED = "/etc/matrix-synapse/conf.d/workers.yaml"
HOMESERVER = Change("/etc/matrix-synapse/homeserver.yaml", frozenset({EVERY_PROCESS}))
WORKERS_YAML = Change(SHARED, frozenset({EVERY_PROCESS}))
NGINX = "nginx.service"


def spec_for(**overrides: Any) -> tuple[RestartSpec, list[str]]:
    """The planner's inputs from real settings (workers on), and the planned workers."""
    only_asked = {  # without a preset asked for: no worker but the ones a test asks for
        "matrix_synapse_workers_preset": "little-federation-helper",
        "matrix_synapse_workers_federation_sender_workers_count": 0,
    }
    if (
        "matrix_synapse_workers_preset" in overrides
        or "matrix_synapse_workers_enabled_list" in overrides
    ):
        only_asked = {}
    settings = parse_settings(
        make_data(matrix_synapse_workers_enabled=True, **{**only_asked, **overrides})
    )
    plan = build_plan(settings, "host-a")
    return restart_spec(settings, plan), [w.name for w in plan.workers]


def generic(count: int, **overrides: Any) -> tuple[RestartSpec, list[str]]:
    return spec_for(matrix_synapse_workers_generic_workers_count=count, **overrides)


def running(workers: list[str], *extra: str) -> dict[str, UnitState]:
    units = {MAIN_UNIT: UP, TARGET_UNIT: UP, NGINX: UP, **{worker_unit(w): UP for w in workers}}
    units.update({u: UP for u in extra})
    return units


def plan(
    changes: list[Change],
    spec: RestartSpec,
    workers: list[str],
    units: dict[str, UnitState] | None = None,
    applied: Topology | str | None = "same",
) -> RestartPlan:
    """Plan with every planned unit running and the applied topology the new one by default."""
    topology = spec.topology if applied == "same" else applied
    assert not isinstance(topology, str)
    units = running(workers) if units is None else units
    return plan_restarts(changes, spec, workers, units, topology)


def acted_on(wave: Wave) -> list[str]:
    return [*wave.ready_units(), *wave.stop]


def assert_each_unit_once(result: RestartPlan) -> None:
    every = [u for w in result.waves for u in acted_on(w)]
    assert len(every) == len(set(every)), every


def assert_no_class_all_down(result: RestartPlan, spec: RestartSpec, workers: list[str]) -> None:
    """No wave restarts every process of a class of two or more."""
    for cls, members in itertools.groupby(sorted(workers, key=spec.classes.get), spec.classes.get):
        units = {worker_unit(n) for n in members}
        if len(units) < 2:
            continue
        for number, wave in enumerate(result.waves, 1):
            assert not units <= set(wave.restart) | set(wave.stop_start), (cls, number)


# --- Nothing changed ----------------------------------------------------------------------------


def test_nothing_changed_means_no_action() -> None:
    spec, workers = generic(5)
    result = plan([], spec, workers)
    assert not result and result.commands() == [] and result.waves == ()


# --- Main first and alone; per-class rolling; batch size ---------------------------------------


@pytest.mark.parametrize(
    ("size", "percent", "expected"),
    [(1, 20, 1), (2, 20, 1), (2, 50, 1), (4, 50, 2), (5, 20, 1), (10, 20, 2), (24, 20, 4),
     (130, 20, 26), (130, 1, 1), (3, 50, 1)],
)  # fmt: skip
def test_batch_size_is_a_rounded_down_share_at_least_one_and_never_the_whole_class(
    size: int, percent: int, expected: int
) -> None:
    assert batch_size(size, percent) == expected
    assert batch_size(size, percent) < size or size == 1


def test_a_shared_file_restarts_main_first_and_alone_then_rolls_every_class() -> None:
    spec, workers = generic(10, matrix_synapse_workers_preset="one-of-each")
    result = plan([HOMESERVER], spec, workers)
    first, *rest = result.waves
    assert first.restart == (MAIN_UNIT,) and first.ready_units() == [MAIN_UNIT]
    assert first.commands() == [["systemctl", "restart", MAIN_UNIT]]
    assert first.reasons[MAIN_UNIT] == "homeserver.yaml changed"
    # 10 generic workers at 20 %: batches of 2 -> 5 waves; classes of one go in the first wave.
    assert batch_size(10, 20) == 2 and len(rest) == 5
    restarted = [u for w in rest for u in w.restart]
    assert sorted(restarted) == sorted(map(worker_unit, workers))  # each worker exactly once
    assert_each_unit_once(result)
    assert_no_class_all_down(result, spec, workers)
    generics = [[u for u in w.restart if "@generic-" in u] for w in rest]
    assert [len(g) for g in generics] == [2, 2, 2, 2, 2]
    singles = [u for u in rest[0].restart if "@generic-" not in u]
    assert len(singles) == len(workers) - 10  # batch 1 of every other class (each of one)
    assert not result.stop and not result.daemon_reload


def test_classes_are_independent_batch_i_of_every_class_in_wave_i() -> None:
    spec, workers = spec_for(
        matrix_synapse_workers_preset="specialized-workers",
        matrix_synapse_workers_sync_workers_count=4,
        matrix_synapse_workers_client_reader_workers_count=2,
        matrix_synapse_workers_room_workers_count=6,
        matrix_synapse_restart_batch_percent=50,
    )
    result = plan([HOMESERVER], spec, workers)
    worker_waves = result.waves[1:]
    for prefix, batch, count in (("sync-", 2, 4), ("client-reader-", 1, 2), ("room-", 3, 6)):
        per_wave = [len([u for u in w.restart if f"@{prefix}" in u]) for w in worker_waves]
        assert per_wave[: count // batch] == [batch] * (count // batch), (prefix, per_wave)
        assert sum(per_wave) == count
    assert len(worker_waves) == 2  # the largest class (6 rooms at 50 % -> 3) needs two waves
    assert_no_class_all_down(result, spec, workers)


def test_the_batch_size_is_a_setting() -> None:
    for percent, waves in ((1, 10), (20, 5), (50, 2)):
        spec, workers = generic(10, matrix_synapse_restart_batch_percent=percent)
        result = plan([HOMESERVER], spec, workers)
        assert len(result.waves) == 1 + waves, percent  # main, then the generic workers


def test_a_workers_own_file_restarts_only_that_worker_and_never_main() -> None:
    spec, workers = generic(3)
    own = Change("/etc/matrix-synapse/workers/generic-1.yaml", frozenset({"generic-1"}))
    result = plan([own], spec, workers)
    assert result.commands() == [["systemctl", "restart", worker_unit("generic-1")]]
    assert result.waves[0].reasons[worker_unit("generic-1")] == "generic-1.yaml changed"


def test_main_restarts_only_when_a_change_concerns_it() -> None:
    spec, workers = generic(3)
    main_unit = Change("/etc/systemd/system/matrix-synapse.service", frozenset({MAIN}), True)
    result = plan([main_unit], spec, workers)
    assert result.commands() == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "restart", MAIN_UNIT],
    ]
    template = Change(
        "/etc/systemd/system/matrix-synapse-worker@.service", frozenset(workers), unit_file=True
    )
    result = plan([template], spec, workers)
    assert all(MAIN_UNIT not in w.ready_units() for w in result.waves)
    assert len(result.waves) == 3  # 3 generic workers at 20 %: one at a time
    assert_no_class_all_down(result, spec, workers)


def test_a_class_of_two_never_restarts_both_at_once_whatever_the_percentage() -> None:
    spec, workers = generic(2, matrix_synapse_restart_batch_percent=50)
    result = plan([HOMESERVER], spec, workers)
    assert [w.restart for w in result.waves] == [
        (MAIN_UNIT,),
        (worker_unit("generic-0"),),
        (worker_unit("generic-1"),),
    ]


# --- Synapse's coupled groups -------------------------------------------------------------------


def test_adding_an_event_persister_restarts_every_process_in_one_wave_stop_then_start() -> None:
    old_spec, old_workers = spec_for(matrix_synapse_workers_preset="one-of-each")
    spec, workers = spec_for(
        matrix_synapse_workers_preset="one-of-each",
        matrix_synapse_workers_stream_writer_events_stream_workers_count=2,
    )
    assert spec.topology.event_persisters != old_spec.topology.event_persisters
    units = running(old_workers)
    result = plan([WORKERS_YAML, HOMESERVER], spec, workers, units=units, applied=old_spec.topology)
    (wave,) = result.waves
    new = set(workers) - set(old_workers)
    stale = set(old_workers) - set(workers)  # stream writers renumbered after the new one
    assert set(wave.start) == {worker_unit(n) for n in new}
    assert set(wave.stop_start) == {MAIN_UNIT} | {worker_unit(n) for n in set(workers) - new}
    assert set(wave.stop) | set(result.stop) == {worker_unit(n) for n in stale}
    commands = wave.commands()
    assert commands[0][:2] == ["systemctl", "stop"] and MAIN_UNIT in commands[0]
    assert commands[1] == ["systemctl", "start", MAIN_UNIT]
    assert commands[2][:2] == ["systemctl", "start"]
    assert result.topology_changed[0] == "stream_writers.events"


def test_removing_an_event_persister_stops_it_in_the_same_wave() -> None:
    old_spec, old_workers = spec_for(
        matrix_synapse_workers_stream_writer_events_stream_workers_count=2
    )
    spec, workers = spec_for(matrix_synapse_workers_stream_writer_events_stream_workers_count=1)
    result = plan(
        [WORKERS_YAML], spec, workers, units=running(old_workers), applied=old_spec.topology
    )
    (wave,) = result.waves
    assert wave.stop == (worker_unit("stream-writer-1-events"),)
    assert set(wave.stop_start) == {MAIN_UNIT, worker_unit("stream-writer-0-events")}
    assert result.stop == () and result.disable == (worker_unit("stream-writer-1-events"),)


def test_a_federation_sender_change_stops_every_sender_together_then_starts_them() -> None:
    old_spec, old_workers = spec_for(
        matrix_synapse_workers_federation_sender_workers_count=3,
        matrix_synapse_workers_generic_workers_count=4,
    )
    spec, workers = spec_for(
        matrix_synapse_workers_federation_sender_workers_count=2,
        matrix_synapse_workers_generic_workers_count=4,
    )
    result = plan(
        [WORKERS_YAML], spec, workers, units=running(old_workers), applied=old_spec.topology
    )
    main_wave, senders_wave, *rest = result.waves
    assert main_wave.restart == (MAIN_UNIT,)
    senders = [worker_unit(f"federation-sender-{i}") for i in range(2)]
    assert list(senders_wave.stop_start) == senders
    assert senders_wave.stop == (worker_unit("federation-sender-2"),)  # the removed one, too
    stop, *others = senders_wave.commands()
    assert stop == ["systemctl", "stop", *senders, worker_unit("federation-sender-2")]
    assert others[-1][:2] == ["systemctl", "start"] and set(senders) <= set(others[-1])
    # The generic workers roll as usual (batch 1 of them rides along with the senders).
    assert [len([u for u in w.restart if "generic" in u]) for w in result.waves[1:]] == [1, 1, 1, 1]
    assert rest and result.topology_changed == ("federation_sender_instances",)
    assert_each_unit_once(result)


def test_a_new_federation_sender_starts_in_the_senders_wave() -> None:
    old_spec, old_workers = spec_for(matrix_synapse_workers_federation_sender_workers_count=1)
    spec, workers = spec_for(matrix_synapse_workers_federation_sender_workers_count=2)
    result = plan(
        [WORKERS_YAML], spec, workers, units=running(old_workers), applied=old_spec.topology
    )
    _, senders_wave = result.waves
    assert senders_wave.stop_start == (worker_unit("federation-sender-0"),)
    assert senders_wave.start == (worker_unit("federation-sender-1"),)


def test_a_pusher_change_restarts_main_and_every_pusher_together() -> None:
    old_spec, old_workers = spec_for(
        matrix_synapse_workers_pusher_workers_count=2,
        matrix_synapse_workers_generic_workers_count=2,
    )
    spec, workers = spec_for(
        matrix_synapse_workers_pusher_workers_count=3,
        matrix_synapse_workers_generic_workers_count=2,
    )
    result = plan(
        [WORKERS_YAML], spec, workers, units=running(old_workers), applied=old_spec.topology
    )
    first = result.waves[0]
    assert first.restart == (MAIN_UNIT, worker_unit("pusher-0"), worker_unit("pusher-1"))
    assert first.start == (worker_unit("pusher-2"),)
    assert first.commands()[0] == ["systemctl", "restart", MAIN_UNIT]  # main's command first
    assert result.topology_changed == ("pusher_instances",)
    assert all("pusher" not in u for w in result.waves[1:] for u in acted_on(w))


def test_an_unchanged_topology_couples_nothing() -> None:
    spec, workers = spec_for(
        matrix_synapse_workers_federation_sender_workers_count=2,
        matrix_synapse_workers_pusher_workers_count=2,
    )
    result = plan([WORKERS_YAML], spec, workers)  # e.g. the Redis dbid changed
    assert result.waves[0].restart == (MAIN_UNIT,)
    assert all(not w.stop_start for w in result.waves)
    assert_no_class_all_down(result, spec, workers)
    assert result.topology_changed == ()


def test_an_unknown_applied_topology_is_treated_as_every_group_changed() -> None:
    spec, workers = spec_for(matrix_synapse_workers_preset="one-of-each")
    result = plan([WORKERS_YAML], spec, workers, applied=None)
    (wave,) = result.waves
    assert set(wave.stop_start) == {MAIN_UNIT, *map(worker_unit, workers)}
    # ...but only when the shared worker config changed: otherwise no group can have.
    result = plan([HOMESERVER], spec, workers, applied=None)
    assert result.waves[0].restart == (MAIN_UNIT,) and len(result.waves) == 2


# --- Scale-up and scale-down --------------------------------------------------------------------


def test_new_workers_start_in_waves_and_nothing_running_restarts() -> None:
    _, old_workers = generic(16)
    spec, workers = generic(24)
    units = running(old_workers)
    result = plan([], spec, workers, units=units)
    assert all(not w.restart for w in result.waves)
    started = [u for w in result.waves for u in w.start]
    assert started == [worker_unit(f"generic-{i}") for i in range(16, 24)]
    assert [len(w.start) for w in result.waves] == [4, 4]  # 20 % of 24
    assert result.enable == tuple(started)
    assert all(w.reasons[u] == "new worker" for w in result.waves for u in w.start)


def test_new_workers_of_a_class_start_before_its_running_ones_restart() -> None:
    spec, workers = generic(2)
    units = running(["generic-0"])
    result = plan([HOMESERVER], spec, workers, units=units)
    assert [(w.restart, w.start) for w in result.waves] == [
        ((MAIN_UNIT,), ()),
        ((), (worker_unit("generic-1"),)),
        ((worker_unit("generic-0"),), ()),
    ]


def test_scale_down_stops_stale_workers_after_nginx_no_longer_routes_to_them() -> None:
    spec, workers = generic(2)
    units = running(workers, worker_unit("generic-2"), worker_unit("generic-3"))
    nginx = Change("/etc/nginx/conf.d/matrix-synapse-workers.conf", reloads=frozenset({NGINX}))
    result = plan([nginx], spec, workers, units=units)
    stale = [worker_unit("generic-2"), worker_unit("generic-3")]
    assert result.waves == () and result.stop == ()
    assert result.commands() == [
        ["systemctl", "disable", "--no-reload", *stale],
        ["systemctl", "daemon-reload"],
        ["systemctl", "reload", NGINX],
        ["systemctl", "stop", *stale],
    ]


def test_a_stale_worker_with_a_shared_duty_stops_before_any_wave() -> None:
    # A renamed typing writer: the old and the new one must never run together.
    old = {
        "name": "typing-a",
        "type": "stream_writer",
        "stream_writer_stream": "typing",
        "port": 19101,
        "replication_port": 19001,
        "metrics_port": 19201,
    }
    new = {**old, "name": "typing-b"}
    _, old_workers = spec_for(matrix_synapse_workers_enabled_list=[old])
    spec, workers = spec_for(matrix_synapse_workers_enabled_list=[new])
    result = plan([WORKERS_YAML], spec, workers, units=running(old_workers))
    assert result.stop == (worker_unit("typing-a"),)
    assert result.commands()[0] == ["systemctl", "stop", worker_unit("typing-a")]
    assert any(worker_unit("typing-b") in w.start for w in result.waves)


def test_a_not_found_stale_unit_is_disabled_but_not_stopped() -> None:
    spec, workers = generic(2)
    units = running(workers)
    units[worker_unit("ghost")] = UnitState("not-found", "inactive", enabled=True)
    result = plan([], spec, workers, units=units)
    assert result.stop == result.stop_after == () and result.disable == (worker_unit("ghost"),)


# --- Cold start, strategy, reloads --------------------------------------------------------------


def test_a_cluster_that_is_not_running_starts_main_then_every_worker() -> None:
    spec, workers = generic(10)
    every = [HOMESERVER, WORKERS_YAML]
    result = plan(every, spec, workers, units={}, applied=None)
    assert [(w.start, w.restart) for w in result.waves] == [
        ((MAIN_UNIT,), ()),
        (tuple(map(worker_unit, workers)), ()),
    ]
    assert result.start_after == (TARGET_UNIT,)
    assert result.enable == (MAIN_UNIT, TARGET_UNIT, *map(worker_unit, workers))


def test_a_stopped_main_is_started_first_not_restarted() -> None:
    spec, workers = generic(2)
    units = running(workers)
    units[MAIN_UNIT] = UnitState("loaded", "failed", enabled=True)
    result = plan([HOMESERVER], spec, workers, units=units)
    assert result.waves[0].start == (MAIN_UNIT,)
    assert result.waves[0].commands() == [["systemctl", "start", MAIN_UNIT]]
    assert result.waves[0].reasons[MAIN_UNIT] == "not running"


def test_all_at_once_is_one_wave_with_main_first() -> None:
    spec, workers = generic(10, matrix_synapse_restart_strategy=ALL_AT_ONCE)
    result = plan([HOMESERVER], spec, workers)
    (wave,) = result.waves
    assert wave.commands() == [
        ["systemctl", "restart", MAIN_UNIT],
        ["systemctl", "restart", *map(worker_unit, workers)],
    ]


def test_all_at_once_keeps_the_coupling_rules() -> None:
    old_spec, old_workers = spec_for(matrix_synapse_workers_federation_sender_workers_count=1)
    spec, workers = spec_for(
        matrix_synapse_workers_federation_sender_workers_count=2,
        matrix_synapse_restart_strategy=ALL_AT_ONCE,
    )
    result = plan(
        [WORKERS_YAML], spec, workers, units=running(old_workers), applied=old_spec.topology
    )
    (wave,) = result.waves
    assert wave.stop_start == (worker_unit("federation-sender-0"),)
    assert wave.commands()[0] == ["systemctl", "stop", worker_unit("federation-sender-0")]


def test_nginx_is_reloaded_after_the_waves_when_running_and_started_otherwise() -> None:
    spec, workers = generic(2)
    change = Change("/etc/nginx/conf.d/x.conf", reloads=frozenset({NGINX}))
    result = plan([change, HOMESERVER], spec, workers)
    assert result.commands()[-1] == ["systemctl", "reload", NGINX]
    units = running(workers)
    del units[NGINX]
    stopped = plan([change], spec, workers, units=units)
    assert stopped.commands() == [["systemctl", "start", NGINX]]
    assert stopped.after_ready_units() == [NGINX]


def test_nginx_lets_go_of_its_removed_file_on_a_host_that_no_longer_runs_main() -> None:
    settings = parse_settings(make_data(matrix_synapse_workers_enabled=True))
    spec = restart_spec(settings, None)  # a retired host; a workers host is the same here
    routing = settings.nginx.config_path
    assert spec.reload_on_removal == {routing: NGINX}
    removed = stale_change(routing, "/etc/systemd/system")
    up = {NGINX: UP}
    assert plan([removed], spec, [], units=up).commands() == [["systemctl", "reload", NGINX]]
    # Reloaded only if it runs: a stopped nginx is not started for a file it no longer has.
    assert plan([removed], spec, [], units={}).commands() == []
    # The host that runs main keeps nginx's file: no such rule there.
    main_spec, _ = generic(1)
    assert main_spec.reload_on_removal == {}
    other = stale_change("/etc/matrix-synapse/workers/generic-9.yaml", "/etc/systemd/system")
    assert NGINX not in str(plan([other], spec, [], units=up).commands())


def test_a_synapse_reload_is_a_sighup_only_for_processes_no_wave_restarts() -> None:
    spec, workers = generic(2)
    log = Change("/etc/matrix-synapse/log.yaml", reloads=frozenset({EVERY_PROCESS}))
    result = plan([log], spec, workers)
    assert result.waves == ()
    assert result.commands() == [["systemctl", "reload", MAIN_UNIT, *map(worker_unit, workers)]]
    own = Change("/etc/matrix-synapse/workers/generic-0.yaml", frozenset({"generic-0"}))
    result = plan([log, own], spec, workers)
    assert result.reload == (MAIN_UNIT, worker_unit("generic-1"))
    units = running(workers)
    units[worker_unit("generic-1")] = UnitState("loaded", "activating", enabled=True)
    result = plan([log], spec, workers, units=units)  # no SIGHUP handler yet: restarted
    assert [w.restart for w in result.waves] == [(worker_unit("generic-1"),)]
    assert result.reload == (MAIN_UNIT, worker_unit("generic-0"))


# --- Invariants over many scenarios -------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 7, 24, 130])
@pytest.mark.parametrize("percent", [1, 20, 50])
def test_every_concerned_process_restarts_once_and_no_class_is_ever_all_down(
    count: int, percent: int
) -> None:
    spec, workers = generic(
        count,
        matrix_synapse_workers_preset="one-of-each",
        matrix_synapse_restart_batch_percent=percent,
    )
    result = plan([HOMESERVER], spec, workers)
    assert result.waves[0].ready_units() == [MAIN_UNIT]
    assert sorted(u for w in result.waves[1:] for u in w.restart) == sorted(
        map(worker_unit, workers)
    )
    assert_each_unit_once(result)
    assert_no_class_all_down(result, spec, workers)


# --- Preview lines, summary, applied topology, settings -----------------------------------------


def test_the_waves_are_described_one_line_each() -> None:
    spec, workers = generic(2)
    result = plan([HOMESERVER], spec, workers)
    assert result.describe() == [
        f"Wave 1/3: restart {MAIN_UNIT} (homeserver.yaml changed)",
        f"Wave 2/3: restart {worker_unit('generic-0')} (homeserver.yaml changed)",
        f"Wave 3/3: restart {worker_unit('generic-1')} (homeserver.yaml changed)",
    ]
    assert result.summary()[0] == {
        "wave": 1,
        "restart": [MAIN_UNIT],
        "stop_start": [],
        "start": [],
        "stop": [],
    }


def test_the_applied_topology_round_trips_and_garbage_reads_as_unknown() -> None:
    topology = Topology(("e-0", "e-1"), ("fs-0",), ())
    text = topology_json(topology)
    assert "\n" not in text and parse_topology(text) == topology
    for garbage in (None, "", "{", "[]", '{"pushers": []}', '{"event_persisters": [1], '
                    '"federation_senders": [], "pushers": []}'):  # fmt: skip
        assert parse_topology(garbage) is None


def test_restart_spec_classes_and_topology_come_from_the_plan() -> None:
    spec, workers = spec_for(
        matrix_synapse_workers_preset="one-of-each",
        matrix_synapse_workers_stream_writer_events_stream_workers_count=2,
    )
    assert spec.classes["generic-0"] == "generic"
    assert spec.classes["stream-writer-1-events"] == "stream_writer:events"
    assert spec.classes["stream-writer-2-typing"] == "stream_writer:typing"
    assert spec.topology == Topology(
        ("stream-writer-0-events", "stream-writer-1-events"),
        ("federation-sender-0",),
        ("pusher-0",),
    )
    assert spec.topology_file == SHARED and spec.strategy == "rolling"
    assert set(spec.classes) == set(workers)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("matrix_synapse_restart_strategy", "rolling-ish", "'rolling' or 'all-at-once'"),
        ("matrix_synapse_restart_strategy", None, "'rolling' or 'all-at-once'"),
        ("matrix_synapse_restart_batch_percent", 0, "an integer from 1 to 50"),
        ("matrix_synapse_restart_batch_percent", 80, "an integer from 1 to 50"),
        ("matrix_synapse_restart_batch_percent", "20", "an integer from 1 to 50"),
        ("matrix_synapse_restart_drain_seconds", -1, "an integer from 0 to 120"),
        ("matrix_synapse_restart_drain_seconds", True, "an integer from 0 to 120"),
    ],
)
def test_bad_restart_settings_name_key_value_and_what_is_allowed(
    key: str, value: Any, allowed: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(make_data(**{key: value}))
    (line,) = [p for p in caught.value.problems if p.startswith(key)]
    assert f"{key} = {value!r}: allowed: {allowed}" == line
    assert re.search(r" = .+: ", line)


def test_restart_defaults() -> None:
    restarts = parse_settings(make_data()).restarts
    assert (restarts.strategy, restarts.batch_percent, restarts.drain_seconds) == (
        "rolling",
        20,
        30,
    )


def test_removing_the_last_federation_sender_or_pusher_stops_it_in_the_coupled_wave() -> None:
    old_spec, old_workers = spec_for(
        matrix_synapse_workers_federation_sender_workers_count=1,
        matrix_synapse_workers_pusher_workers_count=1,
    )
    spec, workers = spec_for()
    assert workers == []
    result = plan(
        [WORKERS_YAML], spec, workers, units=running(old_workers), applied=old_spec.topology
    )
    main_wave, senders_wave = result.waves
    assert main_wave.restart == (MAIN_UNIT,)
    assert main_wave.stop == (worker_unit("pusher-0"),)  # with main: pusher_instances changed
    assert senders_wave.stop == (worker_unit("federation-sender-0"),) and not senders_wave.start
    assert senders_wave.commands() == [["systemctl", "stop", worker_unit("federation-sender-0")]]
    assert result.stop == result.stop_after == ()
    assert_each_unit_once(result)
