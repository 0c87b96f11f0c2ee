"""Settings: defaults, presets, and bad input stopped with a message naming key, value and rule."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from deploys.core.plan import WorkerPlan, build_plan
from deploys.core.render import SECRET_NAMES, desired_state, paths_for
from deploys.core.settings import (
    DEFAULTS_FILE,
    Settings,
    SettingsError,
    load_defaults,
    parse_settings,
)
from deploys.core.settings.extension import GENERATED_SECRET_KEYS
from deploys.core.settings.workers import MAX_WORKERS_PER_MACHINE, MAX_WORKERS_PER_TYPE
from deploys.core.worker_types import (
    PRESETS,
    SPECIALISED_TYPE_KEYS,
    STREAMS,
    WORKER_TYPES,
    WorkerType,
)
from tests.support.settings_data import make_data


def plan_for(**overrides: Any):
    return build_plan(parse_settings(make_data(**overrides)), "host-a")


def test_defaults_file_and_parser_agree_on_every_key() -> None:
    data = make_data()
    parse_settings(data)  # reads every key it knows; unknown matrix_synapse_* keys would fail
    defaults = set(load_defaults())
    for t in WORKER_TYPES:
        assert t.count_key in defaults
        assert t.metrics_port_key in defaults
        assert t.http_port_key is None or t.http_port_key in defaults
    for s in STREAMS:
        assert s.count_key in defaults
    # every key but the homeserver name is prefixed matrix_synapse_
    assert {k for k in defaults if not k.startswith("matrix_synapse_")} == {"matrix_domain"}


def test_settings_are_immutable() -> None:
    settings = parse_settings(make_data())
    with pytest.raises(AttributeError):
        settings.domain = "other.org"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.workers.counts["generic"] = 3  # type: ignore[index]


def test_database_password_is_not_in_repr() -> None:
    settings = parse_settings(make_data(matrix_synapse_database_password="hunter2-secret"))
    assert "hunter2-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("little-federation-helper", 1), ("one-of-each", 16), ("specialized-workers", 19)],
)
def test_presets_give_the_playbooks_worker_counts(preset: str, expected: int) -> None:
    plan = plan_for(matrix_synapse_workers_enabled=True, matrix_synapse_workers_preset=preset)
    assert len(plan.workers) == expected
    assert preset in PRESETS


def test_one_of_each_names_match_the_playbook() -> None:
    plan = plan_for(matrix_synapse_workers_enabled=True)
    assert [w.name for w in plan.workers] == [
        "generic-0",
        "stream-writer-0-events",
        "stream-writer-1-typing",
        "stream-writer-2-to-device",
        "stream-writer-3-account-data",
        "stream-writer-4-receipts",
        "stream-writer-5-presence",
        "stream-writer-6-push-rules",
        "stream-writer-7-device-lists",
        "stream-writer-8-quarantined-media-changes",
        "federation-sender-0",
        "pusher-0",
        "appservice-0",
        "user-dir-0",
        "media-repository-0",
        "background-0",
    ]


def test_counts_override_the_preset() -> None:
    plan = plan_for(
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_generic_workers_count=130,
        matrix_synapse_workers_stream_writer_events_stream_workers_count=4,
    )
    assert sum(w.name.startswith("generic-") for w in plan.workers) == 130
    assert plan.shared.stream_writers["events"] == tuple(
        f"stream-writer-{i}-events" for i in range(4)
    )
    assert len(plan.workers) == 16 - 1 + 130 - 1 + 4


def test_workers_disabled_is_a_monolith() -> None:
    plan = plan_for()
    assert plan.workers == ()
    assert plan.main.listener("replication") is None


def test_hand_written_list_replaces_preset() -> None:
    plan = plan_for(
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_enabled_list=[
            {
                "id": "generic-worker-0",
                "name": "front-1",
                "type": "generic_worker",
                "port": 15500,
                "metrics_port": 25500,
                "webserving": True,
                "app": "generic_worker".join(["synapse.app.", ""]),
            },
            {
                "name": "persister-a",
                "type": "stream_writer",
                "stream_writer_stream": "events",
                "replication_port": 19500,
                "metrics_port": 26500,
            },
        ],
    )
    assert [w.name for w in plan.workers] == ["front-1", "persister-a"]
    assert plan.shared.instance_map["persister-a"] == ("127.0.0.1", 19500)
    assert plan.worker("front-1").listener("http").port == 15500  # type: ignore[union-attr]


def load_yaml(content: bytes) -> Any:
    return yaml.load(content, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def rendered_listeners(settings: Settings, plan: WorkerPlan) -> dict[str, list[tuple[str, int]]]:
    """Process name -> (address, port) of each listener, read back from the RENDERED files.

    Independent of the plan's own collision check: what Synapse and nginx will actually bind.
    """
    state = desired_state(settings, plan)
    paths = paths_for(settings)
    found: dict[str, list[tuple[str, int]]] = {}
    for path, file in state.files.items():
        if path == paths.homeserver:
            name, listeners = "main", load_yaml(file.content)["listeners"]
        elif path.startswith(paths.workers_dir + "/"):
            config = load_yaml(file.content)
            name, listeners = config["worker_name"], config.get("worker_listeners", [])
        else:
            continue
        found[name] = [(a, x["port"]) for x in listeners for a in x["bind_addresses"]]
    if settings.nginx.enabled:
        config = state.files[settings.nginx.config_path].content.decode()
        found["nginx"] = [
            (a.strip("[]"), int(p)) for a, p in re.findall(r"^\s*listen (\S+):(\d+);", config, re.M)
        ]
    return found


def assert_no_two_listeners_share_a_port(found: dict[str, list[tuple[str, int]]]) -> None:
    owners: dict[int, list[str]] = {}
    for name, listeners in found.items():
        for _, port in listeners:  # every listener binds loopback: one port, one owner
            owners.setdefault(port, []).append(name)
    shared = {port: names for port, names in owners.items() if len(names) > 1}
    assert not shared, shared


# Worker N of a type listens on the type's range start + N (group_data/all.py's layout).
LAYOUT = {
    "generic": (
        "matrix_synapse_workers_generic_workers_port_range_start",
        "matrix_synapse_workers_generic_workers_metrics_range_start",
    ),
    "room": (
        "matrix_synapse_workers_room_workers_port_range_start",
        "matrix_synapse_workers_room_workers_metrics_range_start",
    ),
    "sync": (
        "matrix_synapse_workers_sync_workers_port_range_start",
        "matrix_synapse_workers_sync_workers_metrics_range_start",
    ),
    "client-reader": (
        "matrix_synapse_workers_client_reader_workers_port_range_start",
        "matrix_synapse_workers_client_reader_workers_metrics_range_start",
    ),
    "federation-reader": (
        "matrix_synapse_workers_federation_reader_workers_port_range_start",
        "matrix_synapse_workers_federation_reader_workers_metrics_range_start",
    ),
    "media-repository": (
        "matrix_synapse_workers_media_repository_workers_port_range_start",
        "matrix_synapse_workers_media_repository_workers_metrics_range_start",
    ),
    "user-dir": (
        "matrix_synapse_workers_user_dir_workers_port_range_start",
        "matrix_synapse_workers_user_dir_workers_metrics_range_start",
    ),
    "federation-sender": (
        None,
        "matrix_synapse_workers_federation_sender_workers_metrics_range_start",
    ),
    "pusher": (None, "matrix_synapse_workers_pusher_workers_metrics_range_start"),
    "appservice": (None, "matrix_synapse_workers_appservice_workers_metrics_range_start"),
    "background": (None, "matrix_synapse_workers_background_workers_metrics_range_start"),
}
WRITER_LAYOUT = (
    "matrix_synapse_workers_stream_writer_workers_http_port_range_start",
    "matrix_synapse_workers_stream_writer_workers_replication_port_range_start",
    "matrix_synapse_workers_stream_writer_workers_metrics_range_start",
)
WRITER_HTTP_STREAMS = {
    "typing",
    "to-device",
    "account-data",
    "receipts",
    "presence",
    "push-rules",
    "device-lists",
    "thread-subscriptions",
    "quarantined-media-changes",
}


def expected_ports(data: dict[str, Any], name: str) -> set[int]:
    """The ports worker ``name`` must listen on, from its name and the documented layout alone."""
    if match := re.fullmatch(r"stream-writer-(\d+)-([a-z-]+)", name):
        index, stream = int(match[1]), match[2]
        http, replication, metrics = (data[k] + index for k in WRITER_LAYOUT)
        ports = {replication} | ({http} if stream in WRITER_HTTP_STREAMS else set())
        return ports | ({metrics} if data["matrix_synapse_metrics_enabled"] else set())
    match = re.fullmatch(r"([a-z-]+)-(\d+)", name)
    assert match, name
    http_key, metrics_key = LAYOUT[match[1]]
    index = int(match[2])
    ports = {data[http_key] + index} if http_key else set()
    return ports | (
        {data[metrics_key] + index} if data["matrix_synapse_metrics_enabled"] else set()
    )


@pytest.mark.parametrize("t", WORKER_TYPES, ids=[t.key for t in WORKER_TYPES])
def test_default_ports_follow_the_layout_and_never_collide_at_the_maximum(t: WorkerType) -> None:
    """The most workers of one type, on top of the preset's others (the largest allowed case)."""
    count = 1 if t.single else MAX_WORKERS_PER_TYPE
    overrides: dict[str, Any] = {"matrix_synapse_workers_enabled": True, t.count_key: count}
    if t.key in SPECIALISED_TYPE_KEYS:
        overrides["matrix_synapse_workers_preset"] = "specialized-workers"
    data = make_data(**overrides)
    settings = parse_settings(data)
    plan = build_plan(settings, "host-a")
    assert sum(w.worker_type is t for w in plan.workers) == count
    found = rendered_listeners(settings, plan)
    assert_no_two_listeners_share_a_port(found)
    assert len(found) == 1 + len(plan.workers) + 1  # main, every worker, nginx
    for name, listeners in found.items():
        if name not in ("main", "nginx"):
            assert {port for _, port in listeners} == expected_ports(data, name), name


def test_the_port_check_catches_what_the_rendered_files_would_collide_on() -> None:
    # The independent check above must be able to fail: two ranges overlapping by one port.
    data = make_data(
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_generic_workers_count=2,
        matrix_synapse_workers_pusher_workers_metrics_range_start=25001,
    )
    with pytest.raises(SettingsError, match="already taken by generic-1"):
        build_plan(parse_settings(data), "host-a")
    found = {"generic-1": [("127.0.0.1", 25001)], "pusher-0": [("127.0.0.1", 25001)]}
    with pytest.raises(AssertionError):
        assert_no_two_listeners_share_a_port(found)


# (overrides, key the message must name, a fragment of what is allowed)
BAD_INPUTS: list[tuple[dict[str, Any], str, str]] = [
    ({"matrix_domain": None}, "matrix_domain", "homeserver name"),
    ({"matrix_domain": "not a domain"}, "matrix_domain", "homeserver name"),
    (
        {"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_preset": "room-workers"},
        "matrix_synapse_workers_preset",
        "one-of-each",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_generic_workers_count": -1,
        },
        "matrix_synapse_workers_generic_workers_count",
        "from 0 to 1000",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_pusher_workers_count": 2.5,
        },
        "matrix_synapse_workers_pusher_workers_count",
        "whole number",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_pusher_workers_count": "3",
        },
        "matrix_synapse_workers_pusher_workers_count",
        "whole number",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_pusher_workers_count": True,
        },
        "matrix_synapse_workers_pusher_workers_count",
        "whole number",
    ),
    *[
        (
            {
                "matrix_synapse_workers_enabled": True,
                f"matrix_synapse_workers_stream_writer_{s}_stream_workers_count": 2,
            },
            f"matrix_synapse_workers_stream_writer_{s}_stream_workers_count",
            "0 or 1",
        )
        for s in ("typing", "to_device", "account_data", "presence", "push_rules")
    ],
    *[
        (
            {
                "matrix_synapse_workers_enabled": True,
                f"matrix_synapse_workers_{t}_workers_count": 2,
            },
            f"matrix_synapse_workers_{t}_workers_count",
            "0 or 1",
        )
        for t in ("appservice", "user_dir", "background")
    ],
    (
        {"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_room_workers_count": 1},
        "matrix_synapse_workers_generic_workers_count",
        "cannot be mixed",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_enabled_list": [
                {
                    "name": "Generic_1",
                    "type": "generic_worker",
                    "port": 15000,
                    "metrics_port": 25000,
                }
            ],
        },
        "matrix_synapse_workers_enabled_list[0].name",
        "[a-z0-9-]",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_enabled_list": [
                {"name": "main", "type": "pusher", "metrics_port": 25000}
            ],
        },
        "matrix_synapse_workers_enabled_list[0].name",
        "reserved",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_enabled_list": [{"name": "w", "type": "generic_workr"}],
        },
        "matrix_synapse_workers_enabled_list[0].type",
        "generic_worker",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_enabled_list": [
                {"name": "w", "type": "stream_writer", "stream_writer_stream": "bogus"}
            ],
        },
        "matrix_synapse_workers_enabled_list[0].stream_writer_stream",
        "events",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_enabled_list": [
                {"name": "w", "type": "generic_worker", "metrics_port": 25000}
            ],
        },
        "matrix_synapse_workers_enabled_list[0].port",
        "needs a http port",
    ),
    ({"matrix_synapse_http_port": 80}, "matrix_synapse_http_port", "1024 to 65535"),
    ({"matrix_synapse_metrics_port": 70000}, "matrix_synapse_metrics_port", "1024 to 65535"),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_generic_workers_port_range_start": 65500,
            "matrix_synapse_workers_generic_workers_count": 100,
        },
        "matrix_synapse_workers_generic_workers_port_range_start",
        "1024 to 65535",
    ),
    (
        {"matrix_synapse_workers_enabled": True, "matrix_synapse_metrics_port": 25000},
        "matrix_synapse_workers_generic_workers_metrics_range_start",
        "no other listener",
    ),
    # matrix-docker-ansible-deploy's default ranges collide after 89 generic workers
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_generic_workers_count": 90,
            "matrix_synapse_workers_generic_workers_metrics_range_start": 19111,
            "matrix_synapse_workers_pusher_workers_metrics_range_start": 19200,
        },
        "matrix_synapse_workers_pusher_workers_metrics_range_start",
        "no other listener",
    ),
    (
        {"matrix_synapse_workerz_enabled": True},
        "matrix_synapse_workerz_enabled",
        "did you mean matrix_synapse_workers_enabled",
    ),
    (
        {"matrix_synapse_databse_host": "db"},
        "matrix_synapse_databse_host",
        "did you mean matrix_synapse_database_host",
    ),
    ({"matrix_synapse_workers_enabled": "yes"}, "matrix_synapse_workers_enabled", "true or false"),
    (
        {"matrix_synapse_bind_addresses": ["localhost"]},
        "matrix_synapse_bind_addresses",
        "IP addresses",
    ),
    ({"matrix_synapse_config_dir": "etc/matrix"}, "matrix_synapse_config_dir", "absolute path"),
    ({"matrix_synapse_log_level": "LOUD"}, "matrix_synapse_log_level", "INFO"),
    (
        {"matrix_synapse_configuration_extension": {"instance_map": {}}},
        "matrix_synapse_configuration_extension",
        "managed by this deploy",
    ),
    (
        {"matrix_synapse_workers_generic_workers_count": 3},
        "matrix_synapse_workers_generic_workers_count",
        "matrix_synapse_workers_enabled is false",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_generic_workers_count": 3,
            "matrix_synapse_workers_enabled_list": [{"name": "a", "type": "pusher"}],
        },
        "matrix_synapse_workers_generic_workers_count",
        "enabled_list is set",
    ),
    (
        {"matrix_synapse_workers_systemd_resource_limits": {"generic": {"MemoryMaxx": "1G"}}},
        "matrix_synapse_workers_systemd_resource_limits['generic']",
        "MemoryMax",
    ),
    (
        {"matrix_synapse_workers_systemd_resource_limits": {"generics": {"MemoryMax": "1G"}}},
        "matrix_synapse_workers_systemd_resource_limits['generics']",
        "unknown worker type",
    ),
    (
        {"matrix_synapse_database_workers_cp_max": 0},
        "matrix_synapse_database_workers_cp_max",
        "from 1 to 100",
    ),
    ({"matrix_synapse_database_port": "5432"}, "matrix_synapse_database_port", "integer"),
    (
        {
            "matrix_synapse_configuration_extension": {
                "macaroon_secret_key": "inline-macaroon-secret"
            }
        },
        "matrix_synapse_configuration_extension['macaroon_secret_key'] = <hidden>",
        "sets macaroon_secret_key_path",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_generic_workers_count": 100000000000000000000,
        },
        "matrix_synapse_workers_generic_workers_count",
        "allowed: 0 to 1000",
    ),
    (
        {
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_workers_generic_workers_count": 1000,
            "matrix_synapse_workers_pusher_workers_count": 20,
        },
        "matrix_synapse_workers_generic_workers_count",
        "at most 1024 workers per machine",
    ),
    ({"matrix_synapse_user": "root"}, "matrix_synapse_user", "must not run as root"),
    ({"matrix_synapse_group": "root"}, "matrix_synapse_group", "must not run as root"),
]


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    BAD_INPUTS,
    ids=[f"{i:02d}-{case[1]}" for i, case in enumerate(BAD_INPUTS)],
)
def test_bad_input_names_the_key_the_value_and_the_rule(
    overrides: dict[str, Any], key: str, allowed: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        plan_for(**overrides)
    message = str(caught.value)
    line = next((p for p in caught.value.problems if p.startswith(key)), None)
    assert line is not None, f"no problem names {key}:\n{message}"
    assert allowed in line, line
    assert re.search(r" = .+: ", line), line  # key = value: what is allowed


def test_at_least_twenty_bad_inputs_are_covered() -> None:
    assert len(BAD_INPUTS) >= 20


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        plan_for(
            matrix_synapse_log_level="LOUD",
            matrix_synapse_http_port=1,
            matrix_synapse_workers_preset="nope",
        )
    assert len(caught.value.problems) == 3


# --- Inline secrets in the pass-through ---------------------------------------------------------


def test_every_generated_secret_is_refused_inline_by_name_and_never_echoed() -> None:
    values = {key: f"inline-{key}-value" for key in GENERATED_SECRET_KEYS}
    extension = {**values, "turn_shared_secret": "operator-turn-secret", "max_upload_size": "9M"}
    with pytest.raises(SettingsError) as caught:
        parse_settings(make_data(matrix_synapse_configuration_extension=extension))
    message = str(caught.value)
    for key in GENERATED_SECRET_KEYS:
        assert f"matrix_synapse_configuration_extension[{key!r}] = <hidden>: " in message, key
    assert len(caught.value.problems) == len(GENERATED_SECRET_KEYS)
    for secret in (*values.values(), "operator-turn-secret"):
        assert secret not in message and secret not in repr(caught.value)


def test_the_refused_keys_are_exactly_the_secrets_the_deploy_generates() -> None:
    """Each inline key is one whose ``*_path`` the rendered config points at a generated file."""
    settings = parse_settings(make_data(matrix_synapse_workers_enabled=True))
    state = desired_state(settings, build_plan(settings, "host-a"))
    paths = paths_for(settings)
    rendered = {
        **load_yaml(state.files[paths.homeserver].content),
        **load_yaml(state.files[paths.shared_workers].content),
    }
    pointed = {rendered[path_key] for path_key in GENERATED_SECRET_KEYS.values()}
    assert pointed == {f"{paths.config_dir}/secrets/{name}" for name in SECRET_NAMES}
    assert not set(GENERATED_SECRET_KEYS) & set(rendered)  # never inline in what we render


def test_operator_secrets_the_deploy_does_not_generate_are_passed_through() -> None:
    extension = {"turn_shared_secret": "t", "email": {"smtp_pass": "p"}}
    settings = parse_settings(make_data(matrix_synapse_configuration_extension=extension))
    assert dict(settings.configuration_extension) == extension


def test_a_managed_key_is_named_but_a_value_that_may_hold_a_secret_is_hidden() -> None:
    extension = {"database": {"args": {"password": "db-pass-in-extension"}}, "instance_map": {}}
    with pytest.raises(SettingsError) as caught:
        parse_settings(make_data(matrix_synapse_configuration_extension=extension))
    assert caught.value.problems == (
        "matrix_synapse_configuration_extension['database'] = <hidden>: 'database' is managed by "
        "this deploy; allowed: keys it does not write itself",
        "matrix_synapse_configuration_extension['instance_map'] = {}: 'instance_map' is managed "
        "by this deploy; allowed: keys it does not write itself",
    )


# --- Worker counts: one set of rules, a documented maximum, refused before planning -------------

HUGE = 100000000000000000000


@pytest.mark.parametrize(
    "key",
    [t.count_key for t in WORKER_TYPES if not t.single]
    + [s.count_key for s in STREAMS if not s.single],
)
def test_a_huge_count_is_refused_by_the_settings_before_any_planning(key: str) -> None:
    # parse_settings itself raises: build_plan (which would loop over every worker) never runs.
    with pytest.raises(SettingsError) as caught:
        parse_settings(make_data(matrix_synapse_workers_enabled=True, **{key: HUGE}))
    line = next(p for p in caught.value.problems if p.startswith(f"{key} = {HUGE}: "))
    assert f"allowed: 0 to {MAX_WORKERS_PER_TYPE}" in line or "stream writers in all" in line


def test_a_huge_hand_written_list_is_refused_before_its_entries_are_read() -> None:
    entry = {"name": "w", "type": "pusher"}
    with pytest.raises(SettingsError) as caught:
        parse_settings(
            make_data(
                matrix_synapse_workers_enabled=True,
                matrix_synapse_workers_enabled_list=[entry] * 10**6,
            )
        )
    assert caught.value.problems == (
        "matrix_synapse_workers_enabled_list = '1000000 workers': this machine would run 1000000 "
        f"workers; allowed: at most {MAX_WORKERS_PER_MACHINE} workers per machine in all (see "
        "group_data/all.py)",
    )  # one problem, not a million duplicate names


def counts_only(**counts: int) -> dict[str, Any]:
    zero = {t.count_key: 0 for t in WORKER_TYPES} | {s.count_key: 0 for s in STREAMS}
    return make_data(**{"matrix_synapse_workers_enabled": True, **zero, **counts})


def test_the_maximum_per_type_and_per_machine_are_allowed_and_one_more_is_not() -> None:
    generic, pusher = (
        "matrix_synapse_workers_generic_workers_count",
        "matrix_synapse_workers_pusher_workers_count",
    )
    at_type_max = parse_settings(counts_only(**{generic: MAX_WORKERS_PER_TYPE}))
    assert at_type_max.workers.counts["generic"] == MAX_WORKERS_PER_TYPE
    with pytest.raises(SettingsError, match=f"{generic} = {MAX_WORKERS_PER_TYPE + 1}: "):
        parse_settings(counts_only(**{generic: MAX_WORKERS_PER_TYPE + 1}))
    rest = MAX_WORKERS_PER_MACHINE - MAX_WORKERS_PER_TYPE
    at_machine_max = counts_only(**{generic: MAX_WORKERS_PER_TYPE, pusher: rest})
    settings = parse_settings(at_machine_max)
    plan = build_plan(settings, "host-a")
    assert len(plan.workers) == MAX_WORKERS_PER_MACHINE
    assert_no_two_listeners_share_a_port(rendered_listeners(settings, plan))
    with pytest.raises(SettingsError) as caught:
        parse_settings(counts_only(**{generic: MAX_WORKERS_PER_TYPE, pusher: rest + 1}))
    assert caught.value.problems == (
        f"{generic} = {MAX_WORKERS_PER_TYPE}: this machine would run "
        f"{MAX_WORKERS_PER_MACHINE + 1} workers; allowed: at most {MAX_WORKERS_PER_MACHINE} "
        "workers per machine in all (see group_data/all.py)",
    )


def test_stream_writers_of_every_stream_share_one_port_block() -> None:
    events = "matrix_synapse_workers_stream_writer_events_stream_workers_count"
    receipts = "matrix_synapse_workers_stream_writer_receipts_stream_workers_count"
    parse_settings(counts_only(**{events: 600, receipts: 400}))
    with pytest.raises(SettingsError, match=f"{events} = 600: 1001 stream writers in all"):
        parse_settings(counts_only(**{events: 600, receipts: 401}))


def test_the_maximum_is_documented_where_the_counts_are_set() -> None:
    text = DEFAULTS_FILE.read_text()
    assert f"at most {MAX_WORKERS_PER_TYPE:,} workers of one type" in text
    assert f"at most {MAX_WORKERS_PER_MACHINE:,} workers per machine" in text


# A hand-written list and counts are held to the same rules, in the same words.
SAME_RULE_CASES = [
    ("appservice", "allowed: 0 or 1"),
    ("typing", "allowed: 0 or 1"),
    ("mix", "allowed: 0 generic workers when specialised workers are enabled"),
    ("too-many", f"allowed: 0 to {MAX_WORKERS_PER_TYPE}"),
]


def _entries(case: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if case == "appservice":
        return (
            {"matrix_synapse_workers_appservice_workers_count": 2},
            [{"name": f"a{i}", "type": "appservice"} for i in range(2)],
        )
    if case == "typing":
        return (
            {"matrix_synapse_workers_stream_writer_typing_stream_workers_count": 2},
            [
                {
                    "name": f"t{i}",
                    "type": "stream_writer",
                    "stream_writer_stream": "typing",
                    "replication_port": 19000 + i,
                }
                for i in range(2)
            ],
        )
    if case == "mix":
        return (
            {
                "matrix_synapse_workers_generic_workers_count": 1,
                "matrix_synapse_workers_room_workers_count": 1,
            },
            [{"name": "g", "type": "generic_worker"}, {"name": "r", "type": "room_worker"}],
        )
    n = MAX_WORKERS_PER_TYPE + 1
    return (
        {"matrix_synapse_workers_pusher_workers_count": n},
        [{"name": f"p{i}", "type": "pusher"} for i in range(n)],
    )


@pytest.mark.parametrize(("case", "allowed"), SAME_RULE_CASES)
def test_counts_and_a_hand_written_list_break_a_rule_in_the_same_words(
    case: str, allowed: str
) -> None:
    counts, entries = _entries(case)
    rules = []
    for data in (
        counts_only(**counts),
        make_data(matrix_synapse_workers_enabled=True, matrix_synapse_workers_enabled_list=entries),
    ):
        with pytest.raises(SettingsError) as caught:
            parse_settings(data)
        (line,) = [p for p in caught.value.problems if allowed in p]
        rules.append(line.split(": ", 1)[1])
    assert rules[0] == rules[1]


# --- Synapse never runs as root -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("matrix_synapse_user", "root"),
        ("matrix_synapse_user", "toor"),
        ("matrix_synapse_group", "root"),
        ("matrix_synapse_group", "wheel"),
    ],
)
def test_root_accounts_are_refused(key: str, name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(make_data(**{key: name}))
    assert caught.value.problems == (
        f"{key} = {name!r}: Synapse must not run as root (uid/gid 0): it would own the whole "
        f"machine; allowed: an unprivileged system {key.rsplit('_', 1)[1]} such as "
        "'matrix-synapse'",
    )


# --- Defaults have one home: group_data/all.py ----------------------------------------------------

SETTINGS_PACKAGE = DEFAULTS_FILE.parents[1] / "deploys" / "core" / "settings"
# Literals that are also defaults, in the settings package for another reason (a rule, not a
# fallback): the log levels Synapse knows, the local database hosts, examples in messages.
NOT_A_DEFAULT = {
    "INFO": "one of LOG_LEVELS",
    "127.0.0.1": "one of database.LOCAL_HOSTS",
    "1.163.2": "the example in the version's message",
    "matrix-synapse": "the example in the account's message",
    "main": "one of cluster.ROLES, and the name a worker may not take (worker_list.py)",
    "off": "one of tls.MODES",
}


def test_no_default_is_written_again_in_the_settings_package() -> None:
    sources = {p.name: p.read_text() for p in SETTINGS_PACKAGE.glob("*.py")}
    repeated = []
    for key, value in load_defaults().items():
        if isinstance(value, bool) or (isinstance(value, str) and value in NOT_A_DEFAULT):
            continue
        if isinstance(value, int) and value > 100:
            pattern = rf"(?<![\w.]){value}(?![\w.])"
        elif isinstance(value, str) and value:
            pattern = re.escape(repr(value)) + "|" + re.escape(f'"{value}"')
        else:
            continue
        repeated += [
            f"{key} = {value!r} in {n}" for n, s in sources.items() if re.search(pattern, s)
        ]
    assert repeated == []


def test_a_bad_value_reads_as_its_group_data_default_so_every_later_rule_still_runs() -> None:
    # cp_min is bad: the pool rule still runs against the default minimum (1) and says nothing
    # about main_cp_max = 5; workers_cp_max = 0 breaks its own range; one problem each.
    with pytest.raises(SettingsError) as caught:
        parse_settings(
            make_data(
                matrix_synapse_database_cp_min="1",
                matrix_synapse_database_main_cp_max=5,
                matrix_synapse_database_workers_cp_max=0,
            )
        )
    assert caught.value.problems == (
        "matrix_synapse_database_cp_min = '1': allowed: an integer from 1 to 100",
        "matrix_synapse_database_workers_cp_max = 0: allowed: an integer from 1 to 100",
    )


def test_a_key_missing_from_the_data_is_named() -> None:
    data = make_data()
    del data["matrix_synapse_nginx_listen_port"]
    with pytest.raises(SettingsError) as caught:
        parse_settings(data)
    assert caught.value.problems == (
        "matrix_synapse_nginx_listen_port is missing: define it (group_data/all.py holds every "
        "default)",
    )
