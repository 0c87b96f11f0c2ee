"""Settings: defaults, presets, and bad input stopped with a message naming key, value and rule."""

from __future__ import annotations

import re
from typing import Any

import pytest

from deploys.plan import build_plan
from deploys.settings import SettingsError, load_defaults, parse_settings
from deploys.worker_types import PRESETS, STREAMS, WORKER_TYPES
from tests.conftest import make_data


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
        "stream-writer-0-events", "stream-writer-1-typing", "stream-writer-2-to-device",
        "stream-writer-3-account-data", "stream-writer-4-receipts", "stream-writer-5-presence",
        "stream-writer-6-push-rules", "stream-writer-7-device-lists",
        "stream-writer-8-quarantined-media-changes",
        "federation-sender-0", "pusher-0", "appservice-0", "user-dir-0", "media-repository-0",
        "background-0",
    ]  # fmt: skip


def test_counts_override_the_preset() -> None:
    plan = plan_for(matrix_synapse_workers_enabled=True,
                    matrix_synapse_workers_generic_workers_count=130,
                    matrix_synapse_workers_stream_writer_events_stream_workers_count=4)  # fmt: skip
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
    plan = plan_for(matrix_synapse_workers_enabled=True, matrix_synapse_workers_enabled_list=[
        {"id": "generic-worker-0", "name": "front-1", "type": "generic_worker", "port": 15500,
         "metrics_port": 25500, "webserving": True, "app": "generic_worker".join(
             ["synapse.app.", ""])},
        {"name": "persister-a", "type": "stream_writer", "stream_writer_stream": "events",
         "replication_port": 19500, "metrics_port": 26500},
    ])  # fmt: skip
    assert [w.name for w in plan.workers] == ["front-1", "persister-a"]
    assert plan.shared.instance_map["persister-a"] == ("127.0.0.1", 19500)
    assert plan.worker("front-1").listener("http").port == 15500  # type: ignore[union-attr]


def test_default_ports_never_collide_up_to_1000_workers_of_any_type() -> None:
    for t in WORKER_TYPES:
        count = 1 if t.single else 1000
        overrides: dict[str, Any] = {t.count_key: count}
        if t.key in ("room", "sync", "client_reader", "federation_reader"):
            overrides["matrix_synapse_workers_generic_workers_count"] = 0
        plan = plan_for(matrix_synapse_workers_enabled=True, **overrides)
        ports = [x.port for p in plan.processes for x in p.listeners]
        assert len(ports) == len(set(ports)), t.key


# (overrides, key the message must name, a fragment of what is allowed)
BAD_INPUTS: list[tuple[dict[str, Any], str, str]] = [
    ({"matrix_domain": None}, "matrix_domain", "homeserver name"),
    ({"matrix_domain": "not a domain"}, "matrix_domain", "homeserver name"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_preset": "room-workers"},
     "matrix_synapse_workers_preset", "one-of-each"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_generic_workers_count": -1},
     "matrix_synapse_workers_generic_workers_count", ">= 0"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_pusher_workers_count": 2.5},
     "matrix_synapse_workers_pusher_workers_count", "whole number"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_pusher_workers_count": "3"},
     "matrix_synapse_workers_pusher_workers_count", "whole number"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_pusher_workers_count": True},
     "matrix_synapse_workers_pusher_workers_count", "whole number"),
    *[({"matrix_synapse_workers_enabled": True,
        f"matrix_synapse_workers_stream_writer_{s}_stream_workers_count": 2},
       f"matrix_synapse_workers_stream_writer_{s}_stream_workers_count", "0 or 1")
      for s in ("typing", "to_device", "account_data", "presence", "push_rules")],
    *[({"matrix_synapse_workers_enabled": True, f"matrix_synapse_workers_{t}_workers_count": 2},
       f"matrix_synapse_workers_{t}_workers_count", "0 or 1")
      for t in ("appservice", "user_dir", "background")],
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_room_workers_count": 1},
     "matrix_synapse_workers_generic_workers_count", "cannot be mixed"),
    ({"matrix_synapse_workers_enabled": True,
      "matrix_synapse_workers_enabled_list": [{"name": "Generic_1", "type": "generic_worker",
                                               "port": 15000, "metrics_port": 25000}]},
     "matrix_synapse_workers_enabled_list[0].name", "[a-z0-9-]"),
    ({"matrix_synapse_workers_enabled": True,
      "matrix_synapse_workers_enabled_list": [{"name": "main", "type": "pusher",
                                               "metrics_port": 25000}]},
     "matrix_synapse_workers_enabled_list[0].name", "reserved"),
    ({"matrix_synapse_workers_enabled": True,
      "matrix_synapse_workers_enabled_list": [{"name": "w", "type": "generic_workr"}]},
     "matrix_synapse_workers_enabled_list[0].type", "generic_worker"),
    ({"matrix_synapse_workers_enabled": True,
      "matrix_synapse_workers_enabled_list": [{"name": "w", "type": "stream_writer",
                                               "stream_writer_stream": "bogus"}]},
     "matrix_synapse_workers_enabled_list[0].stream_writer_stream", "events"),
    ({"matrix_synapse_workers_enabled": True,
      "matrix_synapse_workers_enabled_list": [{"name": "w", "type": "generic_worker",
                                               "metrics_port": 25000}]},
     "matrix_synapse_workers_enabled_list[0].port", "needs a http port"),
    ({"matrix_synapse_http_port": 80}, "matrix_synapse_http_port", "1024 to 65535"),
    ({"matrix_synapse_metrics_port": 70000}, "matrix_synapse_metrics_port", "1024 to 65535"),
    ({"matrix_synapse_workers_enabled": True,
      "matrix_synapse_workers_generic_workers_port_range_start": 65500,
      "matrix_synapse_workers_generic_workers_count": 100},
     "matrix_synapse_workers_generic_workers_port_range_start", "1024 to 65535"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_metrics_port": 25000},
     "matrix_synapse_workers_generic_workers_metrics_range_start", "no other listener"),
    # matrix-docker-ansible-deploy's default ranges collide after 89 generic workers
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_generic_workers_count": 90,
      "matrix_synapse_workers_generic_workers_metrics_range_start": 19111,
      "matrix_synapse_workers_pusher_workers_metrics_range_start": 19200},
     "matrix_synapse_workers_pusher_workers_metrics_range_start", "no other listener"),
    ({"matrix_synapse_workerz_enabled": True}, "matrix_synapse_workerz_enabled",
     "did you mean matrix_synapse_workers_enabled"),
    ({"matrix_synapse_databse_host": "db"}, "matrix_synapse_databse_host",
     "did you mean matrix_synapse_database_host"),
    ({"matrix_synapse_workers_enabled": "yes"}, "matrix_synapse_workers_enabled", "true or false"),
    ({"matrix_synapse_bind_addresses": ["localhost"]}, "matrix_synapse_bind_addresses",
     "IP addresses"),
    ({"matrix_synapse_config_dir": "etc/matrix"}, "matrix_synapse_config_dir", "absolute path"),
    ({"matrix_synapse_log_level": "LOUD"}, "matrix_synapse_log_level", "INFO"),
    ({"matrix_synapse_configuration_extension": {"instance_map": {}}},
     "matrix_synapse_configuration_extension", "managed by this deploy"),
    ({"matrix_synapse_workers_generic_workers_count": 3}, "matrix_synapse_workers_generic_workers_count",
     "matrix_synapse_workers_enabled is false"),
    ({"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_generic_workers_count": 3,
      "matrix_synapse_workers_enabled_list": [{"name": "a", "type": "pusher"}]},
     "matrix_synapse_workers_generic_workers_count", "enabled_list is set"),
    ({"matrix_synapse_workers_systemd_resource_limits": {"generic": {"MemoryMaxx": "1G"}}},
     "matrix_synapse_workers_systemd_resource_limits['generic']", "MemoryMax"),
    ({"matrix_synapse_workers_systemd_resource_limits": {"generics": {"MemoryMax": "1G"}}},
     "matrix_synapse_workers_systemd_resource_limits['generics']", "unknown worker type"),
    ({"matrix_synapse_database_workers_cp_max": 0}, "matrix_synapse_database_workers_cp_max",
     "from 1 to 100"),
    ({"matrix_synapse_database_port": "5432"}, "matrix_synapse_database_port", "integer"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_INPUTS,
                         ids=[f"{i:02d}-{case[1]}" for i, case in enumerate(BAD_INPUTS)])  # fmt: skip
def test_bad_input_names_the_key_the_value_and_the_rule(overrides: dict[str, Any], key: str,
                                                        allowed: str) -> None:  # fmt: skip
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
        plan_for(matrix_synapse_log_level="LOUD", matrix_synapse_http_port=1,
                 matrix_synapse_workers_preset="nope")  # fmt: skip
    assert len(caught.value.problems) == 3
