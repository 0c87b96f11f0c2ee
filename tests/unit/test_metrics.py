"""Prometheus service discovery: the file_sd JSON lists every process's metrics endpoint once,
with the labels Synapse's dashboard filters by, and follows the plan as workers come and go."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploys.core.metrics import MAIN_JOB, file_sd_json, scrape_targets
from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.settings import SettingsError, parse_settings
from deploys.core.worker_types import WORKER_TYPES
from deploys.host.ownership import stale_paths
from tests.support.settings_data import make_data

FILE_SD = "/etc/prometheus/file_sd/synapse.json"


def rendered(**overrides: Any) -> tuple[Any, Any, Any]:
    settings = parse_settings(make_data(**overrides))
    plan = build_plan(settings, "host-a")
    return settings, plan, desired_state(settings, plan)


def groups(**overrides: Any) -> list[dict[str, Any]]:
    _, _, desired = rendered(**overrides)
    return json.loads(desired.files[FILE_SD].content)


def by_worker(document: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["labels"]["worker"]: g for g in document}


WORKERS = {"matrix_synapse_workers_enabled": True}


def test_default_path_is_the_one_this_test_reads() -> None:
    assert make_data()["matrix_synapse_metrics_file_sd_path"] == FILE_SD


def test_one_target_per_process_on_its_metrics_listener() -> None:
    _, plan, desired = rendered(**WORKERS)
    document = json.loads(desired.files[FILE_SD].content)
    assert len(plan.processes) == 17  # one-of-each: main and 16 workers
    assert len(document) == len(plan.processes)
    targets = by_worker(document)
    assert set(targets) == {p.name for p in plan.processes}
    for process in plan.processes:
        metrics = process.listener("metrics")
        assert metrics is not None
        assert targets[process.name]["targets"] == [f"127.0.0.1:{metrics.port}"]
    assert len({g["targets"][0] for g in document}) == len(document)


def test_labels_are_the_dashboards_job_index_instance() -> None:
    targets = by_worker(groups(**WORKERS))
    assert targets["main"]["labels"] == {
        "instance": "example.org",
        "job": "synapse",
        "index": "0",
        "worker": "main",
    }
    assert targets["generic-0"]["labels"] == {
        "instance": "example.org",
        "job": "generic_worker",
        "index": "0",
        "worker": "generic-0",
    }
    # Stream writers are one job, numbered across streams as their names are.
    assert targets["stream-writer-3-account-data"]["labels"]["job"] == "stream_writer"
    assert targets["stream-writer-3-account-data"]["labels"]["index"] == "3"
    jobs = {g["labels"]["job"] for g in targets.values()}
    assert jobs == {
        MAIN_JOB,
        "generic_worker",
        "stream_writer",
        "federation_sender",
        "pusher",
        "appservice",
        "user_dir",
        "media_repository",
        "background",
    }
    # Every label value is a string (Prometheus refuses a file_sd file with a number).
    assert all(isinstance(v, str) for g in targets.values() for v in g["labels"].values())
    # Every process of the homeserver shares the instance the dashboard selects.
    assert {g["labels"]["instance"] for g in targets.values()} == {"example.org"}


def test_index_counts_within_each_job() -> None:
    document = groups(**WORKERS, matrix_synapse_workers_generic_workers_count=3)
    seen: dict[str, list[int]] = {}
    for g in document:
        seen.setdefault(g["labels"]["job"], []).append(int(g["labels"]["index"]))
    assert all(indexes == list(range(len(indexes))) for indexes in seen.values()), seen
    assert by_worker(document)["generic-2"]["labels"]["index"] == "2"


def test_hand_written_list_numbers_each_type_in_list_order() -> None:
    entries = [
        {"name": "gen-b", "type": "generic_worker", "port": 15500, "metrics_port": 25500},
        {"name": "push-a", "type": "pusher", "metrics_port": 30500},
        {"name": "gen-a", "type": "generic_worker", "port": 15501, "metrics_port": 25501},
    ]
    document = groups(**WORKERS, matrix_synapse_workers_enabled_list=entries)
    labels = {g["labels"]["worker"]: (g["labels"]["job"], g["labels"]["index"]) for g in document}
    assert labels == {
        "main": ("synapse", "0"),
        "gen-b": ("generic_worker", "0"),
        "push-a": ("pusher", "0"),
        "gen-a": ("generic_worker", "1"),
    }
    assert by_worker(document)["gen-a"]["targets"] == ["127.0.0.1:25501"]


def test_a_worker_added_or_removed_changes_the_file_by_its_target() -> None:
    two = groups(**WORKERS, matrix_synapse_workers_generic_workers_count=2)
    three = groups(**WORKERS, matrix_synapse_workers_generic_workers_count=3)
    added = [g for g in three if g not in two]
    assert [g["labels"]["worker"] for g in added] == ["generic-2"]
    assert [g for g in two if g not in three] == []
    assert by_worker(three)["generic-2"]["targets"] == ["127.0.0.1:25002"]
    one = groups(**WORKERS, matrix_synapse_workers_generic_workers_count=1)
    assert {g["labels"]["worker"] for g in two} - {g["labels"]["worker"] for g in one} == {
        "generic-1"
    }


def test_the_file_restarts_nothing_and_is_world_readable() -> None:
    _, _, desired = rendered(**WORKERS)
    f = desired.files[FILE_SD]
    assert (f.mode, f.owner, f.group) == (0o644, "root", "root")
    assert (f.restarts, f.reloads, f.unit_file, f.check, f.secret) == (
        frozenset(),
        frozenset(),
        False,
        None,
        False,
    )
    # Ours by its exact path only: other files in Prometheus's directory are never touched.
    assert FILE_SD in desired.owned_globs
    assert stale_paths(["/etc/prometheus/file_sd/other.json"], [], desired.owned_globs) == []
    # Its directory is not one the deploy manages: it may be Prometheus's.
    assert "/etc/prometheus/file_sd" not in {d.path for d in desired.directories}


def test_without_workers_the_file_lists_main() -> None:
    document = groups()
    assert [g["labels"]["worker"] for g in document] == ["main"]
    assert document[0]["targets"] == ["127.0.0.1:9100"]


def test_metrics_off_writes_no_file_and_removes_an_old_one() -> None:
    _, _, desired = rendered(**WORKERS, matrix_synapse_metrics_enabled=False)
    assert FILE_SD not in desired.files
    assert stale_paths([FILE_SD], desired.files, desired.owned_globs) == [FILE_SD]


def test_no_path_writes_no_file_and_owns_none() -> None:
    _, _, desired = rendered(**WORKERS, matrix_synapse_metrics_file_sd_path=None)
    assert not [p for p in desired.files if p.endswith(".json")]
    assert stale_paths([FILE_SD], desired.files, desired.owned_globs) == []


def test_custom_path() -> None:
    _, _, desired = rendered(matrix_synapse_metrics_file_sd_path="/srv/prom/targets/synapse.json")
    assert "/srv/prom/targets/synapse.json" in desired.files


@pytest.mark.parametrize(
    ("addresses", "host"),
    [
        (["0.0.0.0"], "127.0.0.1"),
        (["::"], "[::1]"),
        (["::1"], "[::1]"),
        (["10.1.2.3"], "10.1.2.3"),
    ],
)
def test_target_address_is_one_the_listener_binds(addresses: list[str], host: str) -> None:
    document = groups(matrix_synapse_metrics_bind_addresses=addresses)
    assert document[0]["targets"] == [f"{host}:9100"]


@pytest.mark.parametrize(
    "value",
    ["relative/synapse.json", "/etc/prometheus/synapse.yml", "", 5, "/etc/with space.json"],
)
def test_bad_path_is_refused_naming_the_key(value: Any) -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings(make_data(matrix_synapse_metrics_file_sd_path=value))
    (message,) = error.value.problems
    assert message.startswith(f"matrix_synapse_metrics_file_sd_path = {value!r}: allowed:")
    assert ".json" in message


def _thousand(type_key: str) -> dict[str, Any]:
    """1,000 workers of one type on top of a preset they may join."""
    if type_key == "events":  # the writers of every stream share one block: no others here
        return {
            **WORKERS,
            "matrix_synapse_workers_preset": "little-federation-helper",
            "matrix_synapse_workers_stream_writer_events_stream_workers_count": 1000,
        }
    preset = "one-of-each" if type_key == "generic" else "specialized-workers"
    return {
        **WORKERS,
        "matrix_synapse_workers_preset": preset,
        f"matrix_synapse_workers_{type_key}_workers_count": 1000,
    }


SHARDABLE = [t.key for t in WORKER_TYPES if not t.single] + ["events"]


@pytest.mark.parametrize("type_key", SHARDABLE)
def test_a_thousand_workers_of_a_type_get_a_thousand_distinct_targets(type_key: str) -> None:
    # build_plan's single port check covers every listener, metrics ones included: it passes.
    _, plan, desired = rendered(**_thousand(type_key))
    document = json.loads(desired.files[FILE_SD].content)
    assert len(document) == len(plan.processes) > 1000
    addresses = [g["targets"][0] for g in document]
    assert len(set(addresses)) == len(addresses)
    http_ports = {
        listener.port
        for p in plan.processes
        for listener in p.listeners
        if listener.purpose != "metrics"
    }
    assert not http_ports & {int(a.rsplit(":", 1)[1]) for a in addresses}
    pairs = {(g["labels"]["job"], g["labels"]["index"]) for g in document}
    assert len(pairs) == len(document)  # job + index name one process


def test_targets_skip_processes_without_a_metrics_listener() -> None:
    _, plan, _ = rendered(**WORKERS, matrix_synapse_metrics_enabled=False)
    assert scrape_targets(plan.processes, "example.org") == ()
    assert file_sd_json(()) == "[]\n"


def test_reach_names_the_address_prometheus_connects_to() -> None:
    _, plan, _ = rendered(**WORKERS, matrix_synapse_workers_generic_workers_count=2)
    addresses = {"main": "10.0.0.1", "generic-1": "fd00::2"}
    targets = scrape_targets(
        plan.processes, "example.org", lambda p, listener: addresses.get(p.name, "10.0.0.9")
    )
    by_name = {t.labels["worker"]: t for t in targets}
    assert by_name["main"].address == "10.0.0.1:9100"
    assert by_name["generic-1"].address == "[fd00::2]:25001"
    assert by_name["generic-1"].url == "http://[fd00::2]:25001/_synapse/metrics"
    assert by_name["generic-0"].address == "10.0.0.9:25000"
