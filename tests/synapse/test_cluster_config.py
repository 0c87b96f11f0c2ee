"""A cluster's files load in the real Synapse on every machine, and Synapse computes the duties
the cluster plan gave each process, reaching its peers at their machines' private addresses.

Each machine's view is rendered into its own temporary root, as that machine would render it;
every process of the machine is then loaded from that machine's files only (homeserver.yaml,
conf.d/, its worker file), exactly as its unit loads it.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deploys.core.cluster import plan_cluster
from deploys.core.plan import MAIN
from deploys.core.render import desired_state, paths_for
from deploys.core.settings import Settings, parse_settings
from tests.support.settings_data import make_data
from tests.synapse.test_real_synapse import config_args, expected_duties, load_duties

pytestmark = pytest.mark.synapse

ADDRESSES = {"main": "10.213.0.1", "writers": "10.213.0.2", "senders": "10.213.0.3"}


def machine_data(root: Path, machine: str, **overrides: Any) -> dict[str, Any]:
    base = root / machine
    return make_data(
        **{
            "matrix_synapse_workers_enabled": True,
            "matrix_synapse_private_address": ADDRESSES[machine],
            "matrix_synapse_workers_preset": "little-federation-helper",
            "matrix_synapse_workers_federation_sender_workers_count": 0,
            "matrix_synapse_config_dir": f"{base}/etc/matrix-synapse",
            "matrix_synapse_systemd_dir": f"{base}/etc/systemd/system",
            "matrix_synapse_data_dir": f"{base}/var/lib/matrix-synapse",
            "matrix_synapse_media_store_path": f"{base}/var/lib/matrix-synapse/media_store",
            "matrix_synapse_database_password": "not-used-at-load",
            **overrides,
        }
    )


def write_machine(settings: Settings, files: dict[str, Any]) -> None:
    for path, desired in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(desired.content)
    paths = paths_for(settings)
    secret = "one-secret-for-the-cluster"  # identical everywhere, as the cluster will ship it
    for name, secret_path in paths.secrets.items():
        Path(secret_path).write_text(secret if name == "replication" else secrets.token_hex(16))
    from signedjson.key import generate_signing_key, write_signing_keys

    with open(paths.signing_key, "w") as key_file:
        write_signing_keys(key_file, [generate_signing_key("a_test")])


def test_every_machine_loads_its_processes_with_the_cluster_duties(tmp_path: Path) -> None:
    hosts = {
        "main": parse_settings(
            machine_data(
                tmp_path,
                "main",
                matrix_synapse_workers_generic_workers_count=2,
                matrix_synapse_workers_background_workers_count=1,
            )
        ),
        "writers": parse_settings(
            machine_data(
                tmp_path,
                "writers",
                matrix_synapse_role="workers",
                matrix_synapse_workers_generic_workers_count=2,
                matrix_synapse_workers_stream_writer_events_stream_workers_count=2,
                matrix_synapse_workers_stream_writer_typing_stream_workers_count=1,
                matrix_synapse_workers_stream_writer_to_device_stream_workers_count=1,
                matrix_synapse_workers_stream_writer_receipts_stream_workers_count=1,
            )
        ),
        "senders": parse_settings(
            machine_data(
                tmp_path,
                "senders",
                matrix_synapse_role="workers",
                matrix_synapse_workers_federation_sender_workers_count=2,
                matrix_synapse_workers_pusher_workers_count=1,
                matrix_synapse_workers_media_repository_workers_count=1,
                matrix_synapse_workers_stream_writer_events_stream_workers_count=1,
            )
        ),
    }
    plan = plan_cluster(hosts)
    jobs, processes = [], []
    for machine in plan.machines:
        settings = hosts[machine]
        view = plan.view(machine)
        assert view is not None
        write_machine(settings, dict(desired_state(settings, view).files))
        for process in plan.own_processes(machine):
            jobs.append(config_args(settings, process))
            processes.append((machine, process))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(load_duties, jobs, chunksize=4))

    planned_map = {("master" if k == MAIN else k): v for k, v in plan.shared.instance_map.items()}
    assert planned_map["stream-writer-0-events"] == ("10.213.0.2", 19000)
    assert planned_map["stream-writer-5-events"] == ("10.213.0.3", 19005)
    assert planned_map["master"] == ("10.213.0.1", 9093)
    for (machine, process), duties in zip(processes, results, strict=True):
        want = expected_duties(plan.combined, process)
        assert {k: duties[k] for k in want} == want, (machine, process.name)
        if not process.is_main:
            assert duties["instance_map"] == planned_map, process.name
    assert len(results) == 1 + len(plan.workers) == 1 + 3 + 7 + 5
    # Synapse agrees on who does what across machines.
    by_name = {p.name: d for (_, p), d in zip(processes, results, strict=True)}
    assert by_name["federation-sender-0"]["send_federation"] is True
    assert by_name[MAIN]["send_federation"] is False
    assert by_name["generic-2"]["writers"]["events"] == [
        "stream-writer-0-events",
        "stream-writer-1-events",
        "stream-writer-5-events",
    ]
    assert by_name["media-repository-0"]["can_load_media_repo"] is True
    assert by_name[MAIN]["can_load_media_repo"] is False
