"""The cluster plan wired into the deploy (issue 13): the example inventory, the shared secrets,
what each machine renders, a retired host's state, and the restart planner on a host that does
not run main. The deploy itself on three machines: tests/integration/test_cluster.py."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from typing import Any

import pytest

from deploys.core.cluster import ClusterPlan, plan_cluster, secret_problems
from deploys.core.postgres import HBA_BEGIN, HBA_END, HBA_SCRIPT, cluster_network, hba_block
from deploys.core.render import desired_state, redis_server_config, retired_state
from deploys.core.restarts import restart_spec
from deploys.core.settings import REPO_ROOT, Settings, parse_settings
from deploys.host.restarts import plan_restarts
from deploys.host.units import MAIN_UNIT, TARGET_UNIT, Change, UnitState, worker_unit
from tests.support.settings_data import CLUSTER_SECRETS as SECRETS, make_data

NO_WORKERS = {
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_federation_sender_workers_count": 0,
}
UP = UnitState("loaded", "active", enabled=True)
CONF = "/etc/matrix-synapse"


def machines(**extra: Any) -> dict[str, Settings]:
    """main (no worker) at 10.0.0.1; w at 10.0.0.2 with two generic workers and a pusher."""
    main = {**NO_WORKERS, **SECRETS, "matrix_synapse_private_address": "10.0.0.1", **extra}
    workers = {
        **NO_WORKERS,
        **SECRETS,
        "matrix_synapse_role": "workers",
        "matrix_synapse_private_address": "10.0.0.2",
        "matrix_synapse_workers_generic_workers_count": 2,
        "matrix_synapse_workers_pusher_workers_count": 1,
        **extra,
    }
    return {"main": parse_settings(make_data(**main)), "w": parse_settings(make_data(**workers))}


def test_the_example_inventory_is_one_valid_cluster_of_three_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "SYNAPSE_DB_PASSWORD",
        "SYNAPSE_REPLICATION_SECRET",
        "SYNAPSE_REDIS_PASSWORD",
        "SYNAPSE_MACAROON_SECRET_KEY",
        "SYNAPSE_FORM_SECRET",
    ):
        monkeypatch.setenv(name, "x" * 40)
    monkeypatch.setenv("SYNAPSE_SIGNING_KEY", SECRETS["matrix_synapse_signing_key"])
    hosts, group = runpy.run_path(str(REPO_ROOT / "inventories/cluster.py"))["synapse_cluster"]
    settings = {name: parse_settings(make_data(**{**group, **data})) for name, data in hosts}
    plan = plan_cluster(settings)
    assert secret_problems(settings) == []
    assert plan.machines == tuple(name for name, _ in hosts)
    assert plan.main_host == "matrix-1.example.org"
    names = {m: [w.name for w in plan.machine_workers[m]] for m in plan.machines}
    assert names["matrix-1.example.org"] == []
    assert len(names["matrix-2.example.org"]) == 11
    assert sorted(names["matrix-3.example.org"]) == [
        "federation-sender-0",
        "federation-sender-1",
        "media-repository-0",
        "pusher-0",
    ]


def test_several_machines_need_the_same_secrets_on_every_host_never_printed() -> None:
    hosts = machines()
    assert secret_problems(hosts) == []
    alone = {"main": hosts["main"]}
    assert secret_problems(alone) == []  # one machine generates its own
    without = machines(matrix_synapse_worker_replication_secret=None)
    assert secret_problems(without) == [
        "hosts main, w: matrix_synapse_worker_replication_secret = None: the cluster has 2 "
        "machines, which must share it; allowed: the same secret on every host (e.g. in "
        "group_data)"
    ]
    hosts["w"] = parse_settings(
        make_data(
            **NO_WORKERS,
            **{**SECRETS, "matrix_synapse_redis_password": "another-password-0123"},
            matrix_synapse_role="workers",
            matrix_synapse_private_address="10.0.0.2",
        )
    )
    (problem,) = secret_problems(hosts)
    assert problem.startswith("hosts main, w: matrix_synapse_redis_password differs")
    assert "another-password" not in problem and "redis-password" not in problem
    socket = machines(matrix_synapse_redis_path="/run/redis/redis-server.sock")
    assert secret_problems(socket) == [
        "hosts main, w: matrix_synapse_redis_path is a Unix socket, which the cluster's other "
        "machines cannot reach; allowed: None (Redis at matrix_synapse_redis_host and _port)"
    ]


def rendered(hosts: dict[str, Settings], host: str) -> tuple[ClusterPlan, Any]:
    plan = plan_cluster(hosts)
    view = plan.view(host)
    assert view is not None
    return plan, desired_state(hosts[host], view, plan)


def test_a_workers_host_renders_its_workers_and_reaches_redis_and_postgresql_on_main() -> None:
    hosts = machines()
    _, state = rendered(hosts, "w")
    files = state.files
    assert f"{CONF}/workers/generic-0.yaml" in files
    assert "/etc/systemd/system/matrix-synapse.service" not in files
    assert "/etc/nginx/conf.d/matrix-synapse-workers.conf" not in files
    assert "/etc/prometheus/file_sd/synapse.json" not in files
    # A host that was main removes them like any stale file of ours.
    assert "/etc/systemd/system/matrix-synapse.service" in state.owned_globs
    shared = files[f"{CONF}/conf.d/workers.yaml"].content.decode()
    assert 'host: "10.0.0.1"' in shared  # Redis at main's private address
    assert f'password_path: "{CONF}/secrets/redis.password"' in shared
    assert 'host: "10.0.0.1"' in files[f"{CONF}/workers/generic-0.yaml"].content.decode()
    for path, value in (
        (f"{CONF}/secrets/replication", SECRETS["matrix_synapse_worker_replication_secret"]),
        (f"{CONF}/secrets/redis.password", SECRETS["matrix_synapse_redis_password"]),
        (f"{CONF}/secrets/signing.key", SECRETS["matrix_synapse_signing_key"] + "\n"),
        (f"{CONF}/secrets/macaroon", SECRETS["matrix_synapse_macaroon_secret_key"]),
        (f"{CONF}/secrets/form", SECRETS["matrix_synapse_form_secret"]),
    ):
        secret = files[path]
        assert (secret.content.decode(), secret.mode, secret.secret) == (value, 0o600, True)
        assert path not in state.secrets  # written, never generated
    assert state.signing_key is None
    assert state.secrets == (f"{CONF}/secrets/registration",)  # main's admin API only
    redis = state.readiness.redis
    assert (redis.host, redis.password_path) == ("10.0.0.1", f"{CONF}/secrets/redis.password")
    assert redis.subscribers == 3 + 1  # its own workers and main
    assert set(state.readiness.health) == {
        worker_unit(n) for n in ("generic-0", "generic-1")
    }  # the pusher has no HTTP listener


def test_the_main_host_routes_and_lists_metrics_for_every_machine() -> None:
    hosts = machines()
    plan, state = rendered(hosts, "main")
    nginx = state.files["/etc/nginx/conf.d/matrix-synapse-workers.conf"].content.decode()
    assert "server 10.0.0.2:15000 " in nginx and "server 10.0.0.2:15001 " in nginx
    assert "server 127.0.0.1:8008 " in nginx  # main on its own machine
    assert "/etc/systemd/system/matrix-synapse.service" in state.files
    # Every metrics listener binds its machine's private address too: Prometheus on the main
    # host scrapes the other machine's workers there, and main's own at loopback.
    every_machine = [
        "127.0.0.1:9100",
        "10.0.0.2:25000",
        "10.0.0.2:25001",
        "10.0.0.2:30000",
    ]
    for data in ({}, {"matrix_synapse_metrics_bind_addresses": ["0.0.0.0"]}):
        _, state = rendered(machines(**data), "main")
        targets = json.loads(state.files["/etc/prometheus/file_sd/synapse.json"].content)
        assert [t["targets"][0] for t in targets] == every_machine, data
    for worker in plan.machine_workers["w"]:
        metrics = worker.listener("metrics")
        assert metrics is not None and "10.0.0.2" in metrics.bind_addresses, worker.name
    assert state.readiness.redis.subscribers == 1
    config = redis_server_config(hosts["main"], plan)
    assert config is not None
    assert "bind 127.0.0.1 -::1 -10.0.0.1\n" in config
    assert f"requirepass {SECRETS['matrix_synapse_redis_password']}\n" in config
    assert redis_server_config(hosts["w"], plan_cluster({"main": hosts["main"]})) is None


def test_one_machine_renders_exactly_as_before() -> None:
    hosts = {"main": parse_settings(make_data(matrix_synapse_workers_enabled=True))}
    plan = plan_cluster(hosts)
    view = plan.view("main")
    assert view is not None
    assert desired_state(hosts["main"], view, plan) == desired_state(hosts["main"], view)


def test_a_retired_host_owns_every_file_it_had_and_keeps_none() -> None:
    settings = parse_settings(make_data(matrix_synapse_role="retired"))
    state = retired_state(settings)
    assert state.files == {} and state.directories == () and state.signing_key is None
    for path in (
        "/etc/systemd/system/matrix-synapse.service",
        "/etc/systemd/system/matrix-synapse-worker@.service",
        "/etc/systemd/system/matrix-synapse.target",
        f"{CONF}/homeserver.yaml",
        f"{CONF}/conf.d/workers.yaml",
        f"{CONF}/workers/*.yaml",
        f"{CONF}/secrets/replication",
        "/etc/nginx/conf.d/matrix-synapse-workers.conf",
    ):
        assert path in state.owned_globs, path
    assert f"{CONF}/secrets/signing.key" not in state.owned_globs


def test_a_host_without_main_never_starts_it_and_stops_one_left_running() -> None:
    hosts = machines()
    plan = plan_cluster(hosts)
    view = plan.view("w")
    spec = restart_spec(hosts["w"], view)
    workers = [w.name for w in view.workers] if view else []
    first = plan_restarts([], spec, workers, {}, None)
    assert MAIN_UNIT not in str(first.commands())
    assert [worker_unit(n) for n in workers] == list(first.waves[0].start)
    assert TARGET_UNIT in first.start_after and TARGET_UNIT in first.enable
    # A former main host: main runs here, and is stopped and disabled.
    units = {MAIN_UNIT: UP, TARGET_UNIT: UP, **{worker_unit(n): UP for n in workers}}
    change = Change(f"{CONF}/homeserver.yaml", frozenset({"*"}))
    result = plan_restarts([change], spec, workers, units, spec.topology)
    assert MAIN_UNIT in result.stop + result.stop_after and MAIN_UNIT in result.disable
    assert all(MAIN_UNIT not in w.ready_units() for w in result.waves)
    # Retired: every unit stopped, the target last, nothing started.
    retired = restart_spec(hosts["w"], None)
    result = plan_restarts([], retired, [], units, None)
    stopped = [*result.stop, *result.stop_after]
    assert stopped[-1] == TARGET_UNIT and set(stopped) == set(units)
    assert not result.waves and not result.start_after and not result.enable


def test_the_hba_block_goes_first_and_replaces_the_previous_one(tmp_path: Any) -> None:
    settings = parse_settings(make_data(matrix_synapse_database_password="pw"))
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n")
    hba.chmod(0o640)
    for addresses in (["10.0.0.1", "10.0.0.2"], ["10.0.0.1", "10.0.0.3"]):
        network = cluster_network(settings, addresses)
        subprocess.run(
            [sys.executable, "-c", HBA_SCRIPT, str(hba)], input=hba_block(network), text=True
        ).check_returncode()
    assert network.listen_addresses == "localhost,10.0.0.1"
    assert hba.read_text() == (
        f"{HBA_BEGIN}\n"
        "host synapse synapse 10.0.0.1/32 scram-sha-256\n"
        "host synapse synapse 10.0.0.3/32 scram-sha-256\n"
        f"{HBA_END}\n"
        "local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    assert hba.stat().st_mode & 0o777 == 0o640
