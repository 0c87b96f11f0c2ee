"""The status report on a real Synapse cluster (PostgreSQL, Redis, nginx as in
tests/e2e/test_synapse_cluster.py): every planned process is listed active and ready, with
systemd's main PID, a real Synapse's memory and the ports its listeners planned, from one SSH
command that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import build_plan
from deploys.core.render import health_urls
from deploys.core.settings import parse_settings
from tests.support.deploying import (
    apply_commands,
    host_snapshot,
    main_pids,
    pyinfra,
    write_inventory,
)
from tests.support.settings_data import make_data
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree

pytestmark = pytest.mark.integration

SETTINGS = {
    **E2E_SETTINGS,
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_generic_workers_count": 2,
}


def test_status_shows_every_real_synapse_process_ready(
    tmp_path: Path, testhost_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (host,) = testhost_factory(1, tree=ensure_synapse_tree())
    inventory = write_inventory(tmp_path / "inventory.py", [(host, SETTINGS)], standin=False)
    deployed = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert deployed.returncode == 0, deployed.output[-6000:]
    plan = build_plan(parse_settings(make_data(**SETTINGS)), host.name)
    assert len(plan.processes) == 1 + 1 + 2  # main, a federation sender, 2 generic workers
    # The sender has no HTTP listener: ready means active, as the deploy's readiness wait says.
    assert len(health_urls(plan)) == 3
    before = host_snapshot(host)
    pids = main_pids(host)

    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setenv("SYNAPSE_STATUS_JSON", str(reports))
    run = pyinfra(tmp_path, inventory, deploy="deploys/status.py")
    assert run.returncode == 0, run.output[-6000:]
    assert run.commands[host.name] == 1, run.command_lines[host.name]
    assert apply_commands(run, host.name) == [] and run.uploads.get(host.name, 0) == 0

    report = json.loads((reports / f"{host.name}.json").read_text())
    rows = {row["unit"]: row for row in report["planned"]}
    assert list(rows) == [p.unit for p in plan.processes]
    for process in plan.processes:
        row = rows[process.unit]
        assert (row["active"], row["ready"], row["problem"]) == ("active", True, None), row
        assert row["pid"] == pids[process.unit], row
        assert row["rss_bytes"] > 50 * 1024 * 1024, row  # a real Synapse, not a stand-in
        ports = {int(address.rpartition(":")[2]) for address in row["listening"]}
        assert {listener.port for listener in process.listeners} <= ports, row
    assert report["unplanned"] == [] and report["errors"] == []
    assert f"{host.name}: 4 planned, 4 active, 4 ready, 0 unplanned" in run.output
    assert host_snapshot(host) == before
