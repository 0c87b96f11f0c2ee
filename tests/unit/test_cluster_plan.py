"""The cluster plan (deploys/core/cluster.py): one plan for every machine of a homeserver, its rules
between hosts, and that one machine alone plans exactly as today."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from deploys.core.cluster import (
    ClusterPlan,
    clusters,
    limited_run_problem,
    plan_cluster,
    plan_inventory,
)
from deploys.core.plan import MAIN, build_plan
from deploys.core.render import desired_state, paths_for
from deploys.core.settings import Settings, SettingsError, parse_settings
from deploys.core.worker_types import PRESETS
from tests.support.settings_data import make_data
from tests.unit.test_plan_properties import valid_data

WORKERS_ON = {"matrix_synapse_workers_enabled": True}
# A workers host that adds nothing unless told: the preset would repeat main's single duties.
NOTHING = {
    **WORKERS_ON,
    "matrix_synapse_role": "workers",
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_federation_sender_workers_count": 0,
}


def host(**overrides: Any) -> Settings:
    return parse_settings(make_data(**overrides))


def main_host(address: str | None = "10.0.0.1", **overrides: Any) -> Settings:
    return host(**{**WORKERS_ON, "matrix_synapse_private_address": address, **overrides})


def workers_host(address: str | None, **overrides: Any) -> Settings:
    base = dict(NOTHING)
    if "matrix_synapse_workers_enabled_list" in overrides:  # a list replaces every count
        del base["matrix_synapse_workers_federation_sender_workers_count"]
    return host(**{**base, "matrix_synapse_private_address": address, **overrides})


def refused(hosts: dict[str, Settings]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        plan_cluster(hosts)
    return list(caught.value.problems)


def listed(*entries: tuple[str, str, int]) -> dict[str, Any]:
    """A hand-written worker list of (name, MDAD type, port) entries."""
    rows = []
    for name, kind, port in entries:
        row: dict[str, Any] = {"name": name, "type": kind, "metrics_port": port + 10000}
        if kind == "stream_writer":
            row.update(stream_writer_stream="events", replication_port=port)
        elif kind == "generic_worker":
            row["port"] = port
        rows.append(row)
    return {**WORKERS_ON, "matrix_synapse_workers_enabled_list": rows}


# --- One machine: exactly today's plan ------------------------------------------------------------

ONE_MACHINE = [
    pytest.param({}, id="workers-off"),
    *(
        pytest.param({**WORKERS_ON, "matrix_synapse_workers_preset": p}, id=p)
        for p in sorted(PRESETS)
    ),
    pytest.param(
        {
            **WORKERS_ON,
            "matrix_synapse_workers_preset": "little-federation-helper",
            "matrix_synapse_workers_generic_workers_count": 999,
            "matrix_synapse_workers_stream_writer_events_stream_workers_count": 24,
            "matrix_synapse_metrics_enabled": False,
        },
        id="1024-counted",
    ),
    pytest.param(
        listed(("w-events", "stream_writer", 19500), ("w-gen", "generic_worker", 15500)),
        id="custom-list",
    ),
    # A private address alone changes nothing: there is no other machine to reach it.
    pytest.param(
        {**WORKERS_ON, "matrix_synapse_private_address": "10.0.0.1"}, id="address-but-alone"
    ),
]


@pytest.mark.parametrize("overrides", ONE_MACHINE)
def test_one_main_host_plans_exactly_as_build_plan(overrides: dict[str, Any]) -> None:
    settings = host(**overrides)
    today = build_plan(settings, "matrix")
    plan = plan_cluster({"matrix": settings})
    assert plan.view("matrix") == today
    assert plan.combined == today
    assert plan.machines == ("matrix",) and not plan.multi_machine
    assert plan.own_processes("matrix") == today.processes


def test_a_retired_host_beside_one_main_host_leaves_the_main_plan_as_today() -> None:
    settings = main_host(address=None)
    plan = plan_cluster({"old": host(matrix_synapse_role="retired"), "matrix": settings})
    assert plan.view("matrix") == build_plan(settings, "matrix")
    assert plan.view("old") is None and plan.own_processes("old") == ()
    assert plan.roles == {"old": "retired", "matrix": "main"}


# --- Several machines -----------------------------------------------------------------------------


def three_machines() -> dict[str, Settings]:
    """The issue's layout: main with the stream writers, a generic machine, and a federation
    sender + pusher + media machine."""
    return {
        "main": main_host(
            matrix_synapse_workers_preset="little-federation-helper",
            matrix_synapse_workers_federation_sender_workers_count=0,
            matrix_synapse_workers_stream_writer_events_stream_workers_count=2,
            matrix_synapse_workers_stream_writer_typing_stream_workers_count=1,
        ),
        "gen": workers_host(
            "10.0.0.2",
            matrix_synapse_workers_generic_workers_count=3,
            matrix_synapse_workers_stream_writer_events_stream_workers_count=1,
        ),
        "fed": workers_host(
            "10.0.0.3",
            matrix_synapse_workers_federation_sender_workers_count=2,
            matrix_synapse_workers_pusher_workers_count=1,
            matrix_synapse_workers_media_repository_workers_count=1,
        ),
    }


def names(plan: ClusterPlan, machine: str) -> list[str]:
    return [w.name for w in plan.machine_workers[machine]]


def test_each_machine_gets_its_own_workers_named_across_the_cluster() -> None:
    plan = plan_cluster(three_machines())
    assert plan.machines == ("main", "gen", "fed") and plan.main_host == "main"
    assert names(plan, "main") == [
        "stream-writer-0-events",
        "stream-writer-1-events",
        "stream-writer-2-typing",
    ]
    # Counts continue from the machines before: main's writers are 0-2, gen's writer is 3.
    assert names(plan, "gen") == ["generic-0", "generic-1", "generic-2", "stream-writer-3-events"]
    assert names(plan, "fed") == [
        "federation-sender-0",
        "federation-sender-1",
        "pusher-0",
        "media-repository-0",
    ]
    assert {w.machine for w in plan.workers} == {"main", "gen", "fed"}
    for machine in plan.machines:
        assert all(w.machine == machine for w in plan.machine_workers[machine])


def test_the_shared_config_names_every_machines_workers_at_their_private_address() -> None:
    plan = plan_cluster(three_machines())
    shared = plan.shared
    assert dict(shared.instance_map) == {
        MAIN: ("10.0.0.1", 9093),
        "stream-writer-0-events": ("10.0.0.1", 19000),
        "stream-writer-1-events": ("10.0.0.1", 19001),
        "stream-writer-2-typing": ("10.0.0.1", 19002),
        "stream-writer-3-events": ("10.0.0.2", 19003),
    }
    assert shared.stream_writers["events"] == (
        "stream-writer-0-events",
        "stream-writer-1-events",
        "stream-writer-3-events",
    )
    assert shared.federation_sender_instances == ("federation-sender-0", "federation-sender-1")
    assert shared.pusher_instances == ("pusher-0",)
    assert shared.media_instance_running_background_jobs == "media-repository-0"
    assert shared.enable_media_repo is False


def test_listeners_peers_reach_bind_the_private_address_too_and_nothing_else_changes() -> None:
    plan = plan_cluster(three_machines())
    assert plan.main.listener("replication").bind_addresses == ("127.0.0.1", "10.0.0.1")
    assert plan.main.listener("http").bind_addresses == ("127.0.0.1",)  # nginx is beside it
    for machine, address in (("main", "10.0.0.1"), ("gen", "10.0.0.2"), ("fed", "10.0.0.3")):
        for worker in plan.machine_workers[machine]:
            for listener in worker.listeners:
                expected = ("127.0.0.1", address)  # metrics too: Prometheus is on main
                assert listener.bind_addresses == expected, (worker.name, listener.purpose)


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        (["0.0.0.0"], ("0.0.0.0",)),  # the wildcard covers it; binding both would fail
        (["127.0.0.1", "10.0.0.2"], ("127.0.0.1", "10.0.0.2")),  # already there
        (["::"], ("::", "10.0.0.2")),  # another family's wildcard does not
    ],
)
def test_the_private_address_is_added_only_where_not_already_bound(
    configured: list[str], expected: tuple[str, ...]
) -> None:
    hosts = {
        "main": main_host(),
        "gen": workers_host(
            "10.0.0.2",
            matrix_synapse_workers_generic_workers_count=1,
            matrix_synapse_bind_addresses=configured,
        ),
    }
    worker = plan_cluster(hosts).machine_workers["gen"][0]
    assert worker.listener("http").bind_addresses == expected


def test_each_host_views_its_own_processes_and_nginx_only_on_main() -> None:
    plan = plan_cluster(three_machines())
    for machine in plan.machines:
        view = plan.view(machine)
        assert view is not None
        assert view.workers == plan.machine_workers[machine]
        assert view.shared == plan.shared and view.main == plan.main
        assert (view.nginx is not None) == (machine == "main")
    assert plan.view("gen").main.machine == "main"  # type: ignore[union-attr]
    assert plan.own_processes("gen") == plan.machine_workers["gen"]
    assert plan.own_processes("main") == (plan.main, *plan.machine_workers["main"])
    assert plan.combined.workers == plan.workers and len(plan.workers) == 11


def test_every_machine_renders_the_same_shared_config_and_only_its_own_worker_files() -> None:
    hosts = three_machines()
    plan = plan_cluster(hosts)
    shared_files = set()
    for machine in plan.machines:
        settings = hosts[machine]
        state = desired_state(settings, plan.view(machine))  # type: ignore[arg-type]
        paths = paths_for(settings)
        shared_files.add(state.files[paths.shared_workers].content)
        worker_files = {p for p in state.files if p.startswith(paths.workers_dir + "/")}
        assert worker_files == {paths.worker_config(n) for n in names(plan, machine)}
    assert len(shared_files) == 1
    shared = yaml.safe_load(shared_files.pop())
    assert shared["instance_map"]["stream-writer-3-events"] == {"host": "10.0.0.2", "port": 19003}


def test_a_host_name_is_the_address_peers_connect_to_and_is_never_bound() -> None:
    hosts = {
        "main": main_host(matrix_synapse_workers_preset="little-federation-helper"),
        "gen": workers_host(
            "gen.internal",
            matrix_synapse_workers_generic_workers_count=1,
            matrix_synapse_workers_stream_writer_events_stream_workers_count=1,
            matrix_synapse_bind_addresses=["127.0.0.1", "10.0.0.2"],
            matrix_synapse_replication_bind_addresses=["10.0.0.2"],
        ),
    }
    plan = plan_cluster(hosts)
    assert plan.shared.instance_map["stream-writer-0-events"] == ("gen.internal", 19000)
    generic = plan.machine_workers["gen"][0]
    assert generic.listener("http").bind_addresses == ("127.0.0.1", "10.0.0.2")


# --- Moving workers -------------------------------------------------------------------------------


def two_generic_machines(on_main: int, on_other: int) -> ClusterPlan:
    return plan_cluster(
        {
            "main": main_host(
                matrix_synapse_workers_preset="little-federation-helper",
                matrix_synapse_workers_generic_workers_count=on_main,
            ),
            "other": workers_host(
                "10.0.0.2", matrix_synapse_workers_generic_workers_count=on_other
            ),
        }
    )


def ports(plan: ClusterPlan) -> dict[str, tuple[str, int]]:
    return {
        w.name: (w.machine, w.listener("http").port) for w in plan.workers if w.listener("http")
    }


def test_moving_a_worker_by_two_counts_moves_that_one_and_keeps_every_other_name_and_port() -> None:
    before = ports(two_generic_machines(3, 3))
    after = ports(two_generic_machines(2, 4))
    assert before["generic-2"] == ("main", 15002) and after["generic-2"] == ("other", 15002)
    moved = {n for n in before if before[n] != after[n]}
    assert moved == {"generic-2"} and set(before) == set(after)


def test_count_numbers_past_1000_reuse_the_block_without_colliding_on_a_machine() -> None:
    # 1,000 on main, 1,000 on the next machine: the second machine's generic-1000.. wrap to
    # the block's start, so no port leaves its 1,000-wide block.
    plan = two_generic_machines(999, 1000)
    other = plan.machine_workers["other"]
    assert other[0].name == "generic-999" and other[0].listener("http").port == 15999
    assert other[1].name == "generic-1000" and other[1].listener("http").port == 15000
    http = [w.listener("http").port for w in other]
    assert len(set(http)) == 1000 and all(15000 <= p <= 15999 for p in http)


# --- Rules between hosts --------------------------------------------------------------------------


def test_two_mains_are_refused_naming_both_hosts() -> None:
    [problem] = refused({"a": main_host("10.0.0.1"), "b": main_host("10.0.0.2")})
    assert problem.startswith("hosts a, b: matrix_synapse_role: 2 main hosts")


def test_no_main_is_refused_naming_every_host() -> None:
    [problem] = refused(
        {
            "a": workers_host("10.0.0.1"),
            "b": workers_host("10.0.0.2"),
            "old": host(matrix_synapse_role="retired"),
        }
    )
    assert problem.startswith("hosts a, b: matrix_synapse_role: 0 main hosts")


def test_a_retired_main_does_not_count() -> None:
    plan = plan_cluster(
        {"old": host(matrix_synapse_role="retired"), "new": main_host(), "w": workers_host("w1")}
    )
    assert plan.main_host == "new" and plan.machines == ("new", "w")


def test_a_missing_private_address_is_refused_once_there_are_two_machines() -> None:
    [problem] = refused({"a": main_host(None), "b": workers_host(None), "c": workers_host("c")})
    assert problem.startswith("hosts a, b: matrix_synapse_private_address = None")


@pytest.mark.parametrize(
    ("first", "second"),
    [("10.0.0.1", "10.0.0.1"), ("fd00::1", "fd00:0::1"), ("W1.internal", "w1.internal.")],
)
def test_one_private_address_on_two_machines_is_refused(first: str, second: str) -> None:
    [problem] = refused({"a": main_host(first), "b": workers_host(second)})
    assert re.match(r"hosts a, b: matrix_synapse_private_address = '.*' on 2 machines", problem)


def test_a_worker_name_on_two_machines_is_refused_naming_hosts_and_keys() -> None:
    [problem] = refused(
        {
            "a": main_host(**listed(("gen", "generic_worker", 15500))),
            "b": workers_host("10.0.0.2", **listed(("gen", "generic_worker", 15500))),
        }
    )
    assert problem.startswith("hosts a, b: worker gen is planned on 2 machines")
    assert "a: matrix_synapse_workers_enabled_list, b: matrix_synapse_workers_enabled_list" in (
        problem
    )


def test_a_listed_name_that_a_count_also_makes_is_refused() -> None:
    [problem] = refused(
        {
            "a": main_host(
                matrix_synapse_workers_preset="little-federation-helper",
                matrix_synapse_workers_generic_workers_count=1,
            ),
            "b": workers_host("10.0.0.2", **listed(("generic-0", "generic_worker", 15500))),
        }
    )
    assert problem.startswith("hosts a, b: worker generic-0 is planned on 2 machines")


SINGLES = [
    ("appservice", "matrix_synapse_workers_appservice_workers_count"),
    ("user_dir", "matrix_synapse_workers_user_dir_workers_count"),
    ("background", "matrix_synapse_workers_background_workers_count"),
    *(
        (stream, f"matrix_synapse_workers_stream_writer_{stream}_stream_workers_count")
        for stream in ("typing", "to_device", "account_data", "presence", "push_rules")
    ),
]


@pytest.mark.parametrize(("duty", "key"), SINGLES)
def test_a_single_instance_duty_on_two_machines_is_refused(duty: str, key: str) -> None:
    problems = refused(
        {
            "a": main_host(matrix_synapse_workers_preset="little-federation-helper", **{key: 1}),
            "b": workers_host("10.0.0.2", **{key: 1}),
        }
    )
    assert problems == [
        next(p for p in problems if p.startswith(f"hosts a, b: 2 {duty}")),
    ]
    assert (
        f"a: {key}, b: {key}" in problems[0]
        and "allowed: one in the whole cluster" in (problems[0])
    )


@pytest.mark.parametrize("stream", ["events", "receipts", "device_lists"])
def test_sharded_streams_may_have_writers_on_several_machines(stream: str) -> None:
    key = f"matrix_synapse_workers_stream_writer_{stream}_stream_workers_count"
    plan = plan_cluster(
        {
            "a": main_host(matrix_synapse_workers_preset="little-federation-helper", **{key: 1}),
            "b": workers_host("10.0.0.2", **{key: 2}),
        }
    )
    assert len(plan.shared.stream_writers[stream]) == 3


def media_on_two(shared_a: bool, shared_b: bool) -> dict[str, Settings]:
    key = "matrix_synapse_workers_media_repository_workers_count"
    return {
        "a": main_host(
            matrix_synapse_workers_preset="little-federation-helper",
            matrix_synapse_media_store_shared=shared_a,
            **{key: 1},
        ),
        "b": workers_host("10.0.0.2", matrix_synapse_media_store_shared=shared_b, **{key: 1}),
    }


def test_media_workers_on_two_machines_are_refused_unless_every_one_shares_the_store() -> None:
    [problem] = refused(media_on_two(False, False))
    assert problem.startswith("hosts a, b: media repository workers on 2 machines")
    assert "matrix_synapse_media_store_shared" in problem
    assert refused(media_on_two(True, False)) == [problem]
    plan = plan_cluster(media_on_two(True, True))
    assert [w.machine for w in plan.workers if w.media] == ["a", "b"]


def test_generic_and_specialised_workers_on_different_machines_are_refused() -> None:
    [problem] = refused(
        {
            "a": main_host(
                matrix_synapse_workers_preset="little-federation-helper",
                matrix_synapse_workers_generic_workers_count=1,
            ),
            "b": workers_host("10.0.0.2", matrix_synapse_workers_room_workers_count=1),
        }
    )
    assert problem.startswith("hosts a, b: generic workers on a and specialised workers")


def test_workers_elsewhere_need_workers_enabled_on_the_main_host() -> None:
    [problem] = refused(
        {
            "a": host(matrix_synapse_private_address="10.0.0.1"),
            "b": workers_host("10.0.0.2", matrix_synapse_workers_generic_workers_count=1),
        }
    )
    assert problem.startswith("host a: matrix_synapse_workers_enabled = False on the main host")


def test_a_host_name_with_only_loopback_listeners_is_refused_naming_the_bind_keys() -> None:
    problems = refused(
        {
            "a": main_host(),
            "b": workers_host(
                "b.internal",
                matrix_synapse_workers_generic_workers_count=1,
                matrix_synapse_workers_stream_writer_events_stream_workers_count=1,
            ),
        }
    )
    assert problems == [
        "host b: matrix_synapse_bind_addresses = ['127.0.0.1']: matrix_synapse_private_address "
        "= 'b.internal' is a host name the plan cannot bind, and the other machines cannot reach "
        "a loopback listener; allowed: the IP address b.internal resolves to among the bind "
        "addresses",
        "host b: matrix_synapse_replication_bind_addresses = ['127.0.0.1']: "
        "matrix_synapse_private_address = 'b.internal' is a host name the plan cannot bind, and "
        "the other machines cannot reach a loopback listener; allowed: the IP address b.internal "
        "resolves to among the bind addresses",
    ]


def test_a_machines_own_port_problems_name_the_host() -> None:
    problems = refused(
        {
            "a": main_host(),
            "b": workers_host(
                "10.0.0.2",
                **listed(("x", "generic_worker", 15500), ("y", "generic_worker", 15500)),
            ),
        }
    )
    assert [p.split(" = ")[0] for p in problems] == [
        "b: matrix_synapse_workers_enabled_list[1].port",
        "b: matrix_synapse_workers_enabled_list[1].metrics_port",
    ]


def test_every_rule_between_hosts_is_reported_at_once() -> None:
    problems = refused(
        {
            "a": main_host("10.0.0.1"),
            "b": main_host("10.0.0.1"),
            "c": workers_host(None),
        }
    )
    assert [p.split(":", 1)[0] for p in problems] == ["hosts a, b", "host c", "hosts a, b"]
    assert "2 main hosts" in problems[0] and "= None" in problems[1] and "'10.0.0.1'" in problems[2]


def test_settings_name_a_bad_role_or_address() -> None:
    with pytest.raises(SettingsError) as caught:
        host(matrix_synapse_role="primary", matrix_synapse_private_address="127.0.0.1")
    assert caught.value.problems == (
        "matrix_synapse_role = 'primary': allowed: 'main', 'workers', 'retired'",
        "matrix_synapse_private_address = '127.0.0.1': allowed: None or the IP address or host "
        "name the cluster's other machines reach this one at (not loopback, unspecified or "
        "multicast), e.g. '10.0.0.2'",
    )
    for bad in ("0.0.0.0", "::1", "224.0.0.1", "localhost", "10.0.0.256", "two words", 7):
        with pytest.raises(SettingsError):
            host(matrix_synapse_private_address=bad)
    for good in ("10.0.0.2", "fd00::2", "synapse-2.internal", "w1"):
        assert host(matrix_synapse_private_address=good).cluster.private_address == good


# --- Determinism ----------------------------------------------------------------------------------


def test_every_host_computes_the_same_plan_from_the_inventory_data() -> None:
    data = {
        "main": make_data(
            **WORKERS_ON,
            matrix_synapse_private_address="10.0.0.1",
            matrix_synapse_workers_generic_workers_count=2,
        ),
        "w1": make_data(
            **NOTHING,
            matrix_synapse_private_address="10.0.0.2",
            matrix_synapse_workers_generic_workers_count=5,
        ),
        "w2": make_data(
            **NOTHING,
            matrix_synapse_private_address="10.0.0.3",
            matrix_synapse_workers_generic_workers_count=5,
        ),
        "elsewhere": make_data(matrix_domain="other.example"),
    }
    plans = [plan_inventory(data, h) for h in ("main", "w1", "w2")]
    assert plans[0] == plans[1] == plans[2]
    assert plans[0] == plan_cluster({h: parse_settings(data[h]) for h in ("main", "w1", "w2")})
    assert plan_inventory(data, "elsewhere").machines == ("elsewhere",)


def test_a_bad_setting_on_any_host_of_the_cluster_stops_every_host_naming_it() -> None:
    data = {
        "main": make_data(**WORKERS_ON, matrix_synapse_private_address="10.0.0.1"),
        "w1": make_data(**NOTHING, matrix_synapse_private_address="10.0.0.2"),
        "w2": make_data(**NOTHING, matrix_synapse_private_address="10.0.0.3"),
    }
    data["w1"]["matrix_synapse_role"] = "worker"
    for computing in data:
        with pytest.raises(SettingsError) as caught:
            plan_inventory(data, computing)
        assert caught.value.problems[0].startswith("w1: matrix_synapse_role = 'worker'")


def test_where_main_and_retired_hosts_sit_in_the_inventory_changes_nothing() -> None:
    hosts = {
        **three_machines(),
        "old": host(matrix_synapse_role="retired", matrix_synapse_private_address="10.0.0.1"),
    }
    expected = plan_cluster(hosts)
    workers_order = ["gen", "fed"]
    for order in itertools.permutations(hosts):
        if [h for h in order if h in workers_order] != workers_order:
            continue  # the workers hosts' order numbers their count-based workers
        plan = plan_cluster({h: hosts[h] for h in order})
        assert plan.machine_workers == expected.machine_workers
        assert plan.shared == expected.shared and plan.main == expected.main


def test_listed_workers_plan_the_same_whatever_the_order_of_the_workers_hosts() -> None:
    hosts = {
        "main": main_host(**listed(("p-0", "stream_writer", 19500))),
        "b": workers_host("10.0.0.2", **listed(("p-1", "stream_writer", 19500))),
        "c": workers_host("10.0.0.3", **listed(("p-2", "stream_writer", 19500))),
    }
    plans = [plan_cluster({h: hosts[h] for h in order}) for order in itertools.permutations(hosts)]
    for plan in plans:
        assert dict(plan.shared.instance_map) == dict(plans[0].shared.instance_map)
        assert set(plan.shared.stream_writers["events"]) == {"p-0", "p-1", "p-2"}
        assert {w.name: w for w in plan.workers} == {w.name: w for w in plans[0].workers}


def test_clusters_group_hosts_by_homeserver_in_inventory_order() -> None:
    assert clusters({"a": "x.org", "b": "y.org", "c": "x.org"}) == {
        "x.org": ("a", "c"),
        "y.org": ("b",),
    }


# --- Properties -----------------------------------------------------------------------------------

PROPERTY = hyp_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SHARDED = (
    "matrix_synapse_workers_generic_workers_count",
    "matrix_synapse_workers_federation_sender_workers_count",
    "matrix_synapse_workers_pusher_workers_count",
    "matrix_synapse_workers_stream_writer_events_stream_workers_count",
    "matrix_synapse_workers_stream_writer_receipts_stream_workers_count",
)


@PROPERTY
@given(valid_data())
def test_any_valid_one_machine_settings_plan_as_build_plan(data: dict[str, Any]) -> None:
    settings = parse_settings(data)
    assert plan_cluster({"only": settings}).view("only") == build_plan(settings, "only")


@st.composite
def counted_cluster(draw: st.DrawFn) -> list[dict[str, int]]:
    """Sharded worker counts for main and 1 to 4 workers hosts."""
    return [
        {key: draw(st.integers(0, 40)) for key in SHARDED} for _ in range(draw(st.integers(2, 5)))
    ]


def cluster_of(counts: list[dict[str, int]]) -> ClusterPlan:
    hosts = {"m0": main_host("10.9.0.1", **counts[0])}
    for index, own in enumerate(counts[1:], start=1):
        hosts[f"m{index}"] = workers_host(f"10.9.0.{index + 1}", **own)
    return plan_cluster(hosts)


@PROPERTY
@given(counted_cluster())
def test_every_cluster_names_each_worker_once_and_reaches_it_on_its_machine(
    counts: list[dict[str, int]],
) -> None:
    plan = cluster_of(counts)
    names = [w.name for w in plan.workers]
    assert len(names) == len(set(names))
    for machine in plan.machines:
        own = plan.own_processes(machine)
        ports = [x.port for p in own for x in p.listeners]
        assert len(ports) == len(set(ports)), machine
    address = {m: plan.private_addresses[m] for m in plan.machines}
    for name, (host_address, port) in plan.shared.instance_map.items():
        process = plan.main if name == MAIN else next(w for w in plan.workers if w.name == name)
        replication = process.listener("replication")
        assert host_address == address[process.machine]
        assert replication is not None and replication.port == port
        assert host_address in replication.bind_addresses
    writers = [n for ns in plan.shared.stream_writers.values() for n in ns]
    assert set(plan.shared.instance_map) - {MAIN} == set(writers)
    assert len(plan.shared.federation_sender_instances) == sum(
        c["matrix_synapse_workers_federation_sender_workers_count"] for c in counts
    )


@PROPERTY
@given(counted_cluster(), st.data())
def test_moving_workers_to_the_next_machine_moves_only_those(
    counts: list[dict[str, int]], data: st.DataObject
) -> None:
    source = data.draw(st.integers(0, len(counts) - 2))
    # Stream writers share one numbering over every stream, as on one machine: moving one
    # renumbers the writers after it. Each worker type has a numbering of its own.
    key = data.draw(st.sampled_from([k for k in SHARDED if "stream_writer" not in k]))
    moved = data.draw(st.integers(0, counts[source][key]))
    after = [dict(c) for c in counts]
    after[source][key] -= moved
    after[source + 1][key] += moved
    before_plan, after_plan = cluster_of(counts), cluster_of(after)

    def where(plan: ClusterPlan) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {w.name: (w.machine, tuple(x.port for x in w.listeners)) for w in plan.workers}

    old, new = where(before_plan), where(after_plan)
    assert set(old) == set(new)
    changed = {n for n in old if old[n] != new[n]}
    assert len(changed) == moved
    assert all(old[n][0] == f"m{source}" and new[n][0] == f"m{source + 1}" for n in changed)


def test_a_limit_that_leaves_out_machines_refuses_to_start_a_worker_here() -> None:
    plan = plan_cluster(three_machines())
    running = names(plan, "gen")
    # Everything it plans already runs here: a limited run is safe.
    assert limited_run_problem(plan, "gen", running, ["main", "fed"]) is None
    # No machine left out: nothing to fear, whatever starts.
    assert limited_run_problem(plan, "gen", [], []) is None
    assert limited_run_problem(plan, "gen", [], ["gen"]) is None
    # A worker new here may still run on a machine the run leaves out.
    problem = limited_run_problem(plan, "gen", running[1:], ["fed"])
    assert problem is not None
    assert problem.startswith(f"host gen: would start {running[0]}, not running here now")
    assert "leaves out host fed of the cluster" in problem and "--limit" in problem
    # Many new names are summarised, not all printed.
    many = limited_run_problem(plan, "gen", [], ["main", "fed"])
    assert many is not None and "hosts main, fed" in many
    big = plan_cluster(
        {
            "main": main_host(),
            "gen": workers_host("10.0.0.2", matrix_synapse_workers_generic_workers_count=25),
        }
    )
    many = limited_run_problem(big, "gen", [], ["main"])
    assert many is not None and many.count("generic-") == 10 and "and 15 more" in many
