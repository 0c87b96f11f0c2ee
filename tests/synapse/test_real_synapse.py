"""Every rendered config loads in the real Synapse, and Synapse computes the duties we planned.

Files are rendered with the deploy's own templates into a temporary root (the same settings with
the directories moved), then each process's config is loaded exactly as its unit loads it:
homeserver.yaml, conf.d/, and the worker's own file (synapse-workers.md §3.4).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import MAIN, Process, WorkerPlan, build_plan
from deploys.core.render import desired_state, paths_for
from deploys.core.settings import Settings, parse_settings
from tests.support.settings_data import make_data

pytestmark = pytest.mark.synapse

# The tuple synapse/app/generic_worker.py asserts worker_app against.
KNOWN_APPS = {
    "synapse.app.appservice",
    "synapse.app.client_reader",
    "synapse.app.event_creator",
    "synapse.app.federation_reader",
    "synapse.app.federation_sender",
    "synapse.app.frontend_proxy",
    "synapse.app.generic_worker",
    "synapse.app.media_repository",
    "synapse.app.pusher",
    "synapse.app.synchrotron",
    "synapse.app.user_dir",
}
STREAM_NAMES = (
    "events",
    "typing",
    "to_device",
    "account_data",
    "receipts",
    "presence",
    "push_rules",
    "device_lists",
    "thread_subscriptions",
    "quarantined_media_changes",
)


def render_to(root: Path, **overrides: Any) -> tuple[Settings, WorkerPlan]:
    """Render the deploy's files under ``root`` and create the secrets they reference."""
    data = make_data(
        matrix_synapse_config_dir=f"{root}/etc/matrix-synapse",
        matrix_synapse_systemd_dir=f"{root}/etc/systemd/system",
        matrix_synapse_data_dir=f"{root}/var/lib/matrix-synapse",
        matrix_synapse_media_store_path=f"{root}/var/lib/matrix-synapse/media_store",
        matrix_synapse_database_password="not-used-at-load",
        **overrides,
    )
    settings = parse_settings(data)
    plan = build_plan(settings, "host-a")
    state = desired_state(settings, plan)
    for directory in state.directories:
        Path(directory.path).mkdir(parents=True, exist_ok=True)
    for path, desired in state.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(desired.content)
    paths = paths_for(settings)
    for secret_path in paths.secrets.values():
        Path(secret_path).write_text(secrets.token_urlsafe(32))
    from signedjson.key import generate_signing_key, write_signing_keys

    with open(paths.signing_key, "w") as key_file:
        write_signing_keys(key_file, [generate_signing_key("a_test")])
    return settings, plan


def config_args(settings: Settings, process: Process) -> list[str]:
    paths = paths_for(settings)
    args = ["-c", paths.homeserver, "-c", paths.conf_d + "/"]
    if not process.is_main:
        args += ["-c", paths.worker_config(process.name)]
    return args


def load_duties(args: list[str]) -> dict[str, Any]:
    """Load one process's config in Synapse and report what Synapse decided (picklable)."""
    from synapse.config.homeserver import HomeServerConfig

    config = HomeServerConfig.load_config("", args)
    worker = config.worker
    listeners = worker.worker_listeners if worker.worker_app else config.server.listeners
    return {
        "worker_app": worker.worker_app,
        "instance_name": worker.instance_name,
        "send_federation": worker.send_federation,
        "start_pushers": worker.start_pushers,
        "run_background_tasks": worker.run_background_tasks,
        "notify_appservices": worker.should_notify_appservices,
        "update_user_directory": worker.should_update_user_directory,
        "can_load_media_repo": config.media.can_load_media_repo,
        "redis_enabled": config.redis.redis_enabled,
        "writers": {s: list(getattr(worker.writers, s)) for s in STREAM_NAMES},
        "instance_map": {k: (v.host, v.port) for k, v in worker.instance_map.items()},
        "listeners": sorted(
            (
                x.type,
                x.port,
                tuple(x.bind_addresses),
                tuple(
                    sorted(
                        n
                        for r in (x.http_options.resources if x.http_options else ())
                        for n in r.names
                    )
                ),
            )
            for x in listeners
        ),
        "cp_max": config.database.databases[0].config["args"]["cp_max"],
    }


def expected_duties(plan: WorkerPlan, process: Process) -> dict[str, Any]:
    shared, name, main = plan.shared, process.name, process.is_main

    def runs(designated: str | None) -> bool:
        return name == designated if designated else main

    def on(instances: tuple[str, ...]) -> bool:
        return name in instances if instances else main

    return {
        "instance_name": "master" if main else name,
        "send_federation": on(shared.federation_sender_instances),
        "start_pushers": on(shared.pusher_instances),
        "run_background_tasks": runs(shared.run_background_tasks_on),
        "notify_appservices": runs(shared.notify_appservices_from_worker),
        "update_user_directory": runs(shared.update_user_directory_from_worker),
        "can_load_media_repo": shared.enable_media_repo if main else process.media,
        "redis_enabled": True,
        "writers": {s: list(shared.stream_writers.get(s, ("master",))) for s in STREAM_NAMES},
        "listeners": sorted(
            (x.synapse_type, x.port, x.bind_addresses, tuple(sorted(x.resources)))
            for x in process.listeners
        ),
    }


def check_plan_in_synapse(tmp_path: Path, **overrides: Any) -> int:
    settings, plan = render_to(tmp_path, matrix_synapse_workers_enabled=True, **overrides)
    jobs = [config_args(settings, p) for p in plan.processes]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(load_duties, jobs, chunksize=16))
    for process, duties in zip(plan.processes, results, strict=True):
        want = expected_duties(plan, process)
        got = {k: duties[k] for k in want}
        assert got == want, process.name
        if not process.is_main:
            assert duties["worker_app"] in KNOWN_APPS
            assert duties["cp_max"] == settings.database.workers_cp_max
            # Synapse's instance_map (main is renamed "master") matches the plan everywhere.
            planned_map = {
                ("master" if k == MAIN else k): v for k, v in plan.shared.instance_map.items()
            }
            assert duties["instance_map"] == planned_map
        else:
            assert duties["worker_app"] is None
            assert duties["cp_max"] == settings.database.main_cp_max
    return len(results)


@pytest.mark.parametrize(
    "preset", ["little-federation-helper", "one-of-each", "specialized-workers"]
)
def test_each_preset_loads_with_the_planned_duties(tmp_path: Path, preset: str) -> None:
    loaded = check_plan_in_synapse(tmp_path, matrix_synapse_workers_preset=preset)
    assert (
        loaded
        == 1 + {"little-federation-helper": 1, "one-of-each": 16, "specialized-workers": 19}[preset]
    )


def test_130_generic_workers_plus_one_of_each(tmp_path: Path) -> None:
    loaded = check_plan_in_synapse(tmp_path, matrix_synapse_workers_generic_workers_count=130)
    assert loaded == 1 + 15 + 130


def test_1000_workers(tmp_path: Path) -> None:
    loaded = check_plan_in_synapse(
        tmp_path,
        matrix_synapse_workers_generic_workers_count=959,
        matrix_synapse_workers_stream_writer_events_stream_workers_count=8,
        matrix_synapse_workers_stream_writer_receipts_stream_workers_count=4,
        matrix_synapse_workers_stream_writer_device_lists_stream_workers_count=4,
        matrix_synapse_workers_federation_sender_workers_count=8,
        matrix_synapse_workers_pusher_workers_count=4,
        matrix_synapse_workers_media_repository_workers_count=4,
        matrix_synapse_metrics_enabled=True,
    )
    assert loaded == 1 + 1000


def test_sharded_writers_and_senders_load(tmp_path: Path) -> None:
    loaded = check_plan_in_synapse(
        tmp_path,
        matrix_synapse_workers_preset="specialized-workers",
        matrix_synapse_workers_sync_workers_count=3,
        matrix_synapse_workers_stream_writer_thread_subscriptions_stream_workers_count=2,
        matrix_synapse_workers_stream_writer_quarantined_media_changes_stream_workers_count=2,
        matrix_synapse_workers_federation_sender_workers_count=3,
        matrix_synapse_metrics_enabled=False,
    )
    assert loaded == 1 + 19 + 2 + 2 + 1 + 2


def test_monolith_loads(tmp_path: Path) -> None:
    settings, plan = render_to(tmp_path)
    duties = load_duties(config_args(settings, plan.main))
    assert duties["instance_name"] == "master" and duties["send_federation"] is True


def test_synapse_config_cli_accepts_one_worker_of_each_type(tmp_path: Path) -> None:
    """The CLI check an operator (and the pre-restart check) runs: rc 0, "Config parses OK!"."""
    settings, plan = render_to(
        tmp_path,
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_preset="specialized-workers",
    )
    one_per_type = {w.worker_type.key: w for w in plan.workers if w.worker_type}
    for process in [plan.main, *one_per_type.values()]:
        result = subprocess.run(
            [sys.executable, "-m", "synapse.config", *config_args(settings, process)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (process.name, result.stderr)
        assert "Config parses OK!" in result.stdout


def test_synapse_rejects_what_we_would_get_wrong(tmp_path: Path) -> None:
    """The check can fail: a worker file without instance_map.main is refused by Synapse."""
    settings, plan = render_to(tmp_path, matrix_synapse_workers_enabled=True)
    shared = Path(paths_for(settings).shared_workers)
    shared.write_text(shared.read_text().replace("  main:\n", "  not-main:\n"))
    from synapse.config._base import ConfigError

    with pytest.raises(ConfigError, match="instance_map"):
        load_duties(config_args(settings, plan.workers[0]))
