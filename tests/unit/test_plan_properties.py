"""Properties that hold for every valid worker plan (hypothesis over valid settings)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from deploys.core.plan import MAIN, WorkerPlan, build_plan
from deploys.core.render import desired_state, paths_for
from deploys.core.settings import Settings, parse_settings
from deploys.core.settings.worker_list import WORKER_NAME_RE
from deploys.core.worker_types import PRESETS, SPECIALISED_TYPE_KEYS, STREAMS, WORKER_TYPES
from tests.support.settings_data import make_data
from tests.unit.test_settings import (
    assert_no_two_listeners_share_a_port,
    expected_ports,
    rendered_listeners,
)


@st.composite
def valid_data(draw: st.DrawFn) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": draw(st.sampled_from(sorted(PRESETS))),
        "matrix_synapse_metrics_enabled": draw(st.booleans()),
    }
    specialised = draw(st.booleans())
    for t in WORKER_TYPES:
        if t.single:
            count = draw(st.integers(0, 1))
        elif t.key == "generic":
            count = 0 if specialised else draw(st.integers(0, 300))
        elif t.key in SPECIALISED_TYPE_KEYS:
            count = draw(st.integers(0, 40)) if specialised else 0
        else:
            count = draw(st.integers(0, 30))
        overrides[t.count_key] = count
    for s in STREAMS:
        overrides[s.count_key] = draw(st.integers(0, 1 if s.single else 12))
    return make_data(**overrides)


def planned(data: dict[str, Any]) -> tuple[Settings, WorkerPlan]:
    settings = parse_settings(data)
    return settings, build_plan(settings, "host-a")


PROPERTY = hyp_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(valid_data())
def test_rendered_listeners_follow_the_layout_and_never_share_a_port(data: dict[str, Any]) -> None:
    # Read back from the rendered files, not the plan whose own check let it through.
    settings, plan = planned(data)
    found = rendered_listeners(settings, plan)
    assert_no_two_listeners_share_a_port(found)
    assert set(found) == {"main", "nginx", *(w.name for w in plan.workers)}
    for name, listeners in found.items():
        if name not in ("main", "nginx"):
            assert {port for _, port in listeners} == expected_ports(data, name), name


@PROPERTY
@given(valid_data())
def test_every_stream_writer_is_in_instance_map_on_its_replication_port(
    data: dict[str, Any],
) -> None:
    _, plan = planned(data)
    writers = {name for names in plan.shared.stream_writers.values() for name in names}
    assert set(plan.shared.instance_map) - {MAIN} == writers
    for name, (_, port) in plan.shared.instance_map.items():
        process = plan.main if name == MAIN else plan.worker(name)
        replication = process.listener("replication")
        assert replication is not None and replication.port == port
        assert replication.resources == ("replication",)
    for names in plan.shared.stream_writers.values():
        assert names  # Synapse rejects empty lists


@PROPERTY
@given(valid_data())
def test_names_are_unique_and_valid(data: dict[str, Any]) -> None:
    _, plan = planned(data)
    names = [w.name for w in plan.workers]
    assert len(names) == len(set(names))
    assert all(WORKER_NAME_RE.match(n) and n not in ("main", "master") for n in names)


@PROPERTY
@given(valid_data())
def test_every_name_a_shared_setting_references_has_a_worker_file(data: dict[str, Any]) -> None:
    settings, plan = planned(data)
    state = desired_state(settings, plan)
    paths = paths_for(settings)
    for name in plan.shared.referenced_names():
        assert paths.worker_config(name) in state.files
    worker_files = {p for p in state.files if p.startswith(paths.workers_dir + "/")}
    assert worker_files == {paths.worker_config(w.name) for w in plan.workers}


@PROPERTY
@given(valid_data())
def test_redis_is_enabled_and_shared_config_matches_the_plan(data: dict[str, Any]) -> None:
    settings, plan = planned(data)
    shared = yaml.safe_load(
        desired_state(settings, plan).files[paths_for(settings).shared_workers].content
    )
    assert shared["redis"]["enabled"] is True
    assert {k: tuple(v) for k, v in shared.get("stream_writers", {}).items()} == dict(
        plan.shared.stream_writers
    )
    assert tuple(shared.get("federation_sender_instances", ())) == (
        plan.shared.federation_sender_instances
    )
    assert tuple(shared.get("pusher_instances", ())) == plan.shared.pusher_instances
    if any(w.worker_type and w.worker_type.media for w in plan.workers):
        assert shared["enable_media_repo"] is False
        assert shared["media_instance_running_background_jobs"]
