"""Changing the Synapse pin upgrades the running cluster and restarts every process into it, in
order: the virtualenv is upgraded first (install component), then main restarts alone (its
schema migration) and is ready before any worker stops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploys.core.settings import load_defaults
from deploys.host.units import MAIN_UNIT
from tests.support.deploying import assert_no_changes, main_pids, pyinfra, write_inventory
from tests.support.synapse_tree import (
    E2E_SETTINGS,
    PREVIOUS_VERSION,
    ensure_previous_synapse_tree,
)
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

CURRENT_VERSION = load_defaults()["matrix_synapse_version"]


def server_version(host: TestHost) -> str:
    answer = host.ssh("curl -fsS http://127.0.0.1:8088/_matrix/federation/v1/version").stdout
    return json.loads(answer)["server"]["version"]


def installed_version(host: TestHost) -> str:
    return host.ssh(
        "/opt/venvs/matrix-synapse/bin/python -c 'import synapse; print(synapse.__version__)'"
    ).stdout.strip()


def start_stop_times(host: TestHost) -> dict[str, tuple[int, int]]:
    """unit -> (when it last stopped being active, when it last became active), µs monotonic."""
    out = host.ssh(
        "systemctl show --property=Id,ActiveExitTimestampMonotonic,"
        "ActiveEnterTimestampMonotonic 'matrix-synapse*.service'"
    ).stdout
    times = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        times[props["Id"]] = (
            int(props["ActiveExitTimestampMonotonic"]),
            int(props["ActiveEnterTimestampMonotonic"]),
        )
    return times


def test_a_new_pin_upgrades_synapse_and_restarts_every_process(
    tmp_path: Path, testhost_factory: Any
) -> None:
    assert PREVIOUS_VERSION != CURRENT_VERSION
    (host,) = testhost_factory(1, tree=ensure_previous_synapse_tree())
    base = {
        **E2E_SETTINGS,
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "little-federation-helper",
    }

    def deploy(version: str, *args: str):
        inventory = write_inventory(
            tmp_path / "inventory.py",
            [(host, {**base, "matrix_synapse_version": version})],
            standin=False,
        )
        return pyinfra(tmp_path, inventory, *args, timeout=900)

    old = deploy(PREVIOUS_VERSION, "-y")
    assert old.returncode == 0, old.output[-4000:]
    assert installed_version(host) == server_version(host) == PREVIOUS_VERSION
    before = main_pids(host)

    upgrade = deploy(CURRENT_VERSION, "-y")
    assert upgrade.returncode == 0, upgrade.output[-4000:]
    assert installed_version(host) == server_version(host) == CURRENT_VERSION
    after = main_pids(host)
    processes = [u for u in before if u.endswith(".service")]
    assert len(processes) == 2 and all(before[u] != after[u] for u in processes)
    # Main first: it migrated the schema and was active again before any worker stopped.
    assert f"Wave 1/2: restart {MAIN_UNIT} (homeserver.yaml changed)" in upgrade.output
    times = start_stop_times(host)
    main_back = times[MAIN_UNIT][1]
    workers = [u for u in times if u != MAIN_UNIT]
    assert workers and all(times[u][0] > main_back for u in workers), times
    assert_no_changes(deploy(CURRENT_VERSION), host.name, commands=None)
