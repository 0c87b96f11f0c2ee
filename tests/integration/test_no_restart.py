"""Changes that must restart nothing, on real test hosts with the stand-in Synapse: a log-level
change reloads every process in place (SIGHUP), and scaling 16 -> 24 -> 16 workers never
restarts PostgreSQL (real PostgreSQL 15 from the Synapse tree; the stand-in does not connect to
it, so what is measured is what the deploy does to PostgreSQL)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    Run,
    apply_commands,
    assert_no_changes,
    front_workers,
    install_standin,
    main_pids,
    pyinfra,
    write_inventory,
)
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

POSTMASTER = "head -1 /var/lib/postgresql/15/main/postmaster.pid"
MAX_CONNECTIONS = "runuser -u postgres -- psql -XAtc 'SHOW max_connections'"


def deploy(tmp_path: Path, host: TestHost, data: dict[str, Any], *args: str) -> Run:
    inventory = write_inventory(tmp_path / "inventory.py", [(host, {**E2E_SETTINGS, **data})])
    return pyinfra(tmp_path, inventory, *args)


@pytest.fixture
def host(testhost_factory: Any) -> TestHost:
    (host,) = testhost_factory(1, tree=ensure_synapse_tree())
    install_standin(host)
    return host


def postgres(host: TestHost) -> tuple[int, int]:
    """(postmaster PID, max_connections) of the running PostgreSQL."""
    pid = int(host.ssh(POSTMASTER).stdout.strip())
    return pid, int(host.ssh(MAX_CONNECTIONS).stdout.strip())


def test_scaling_16_to_24_and_back_never_restarts_postgresql(
    tmp_path: Path, host: TestHost
) -> None:
    untouched = postgres(host)  # PostgreSQL's own default before the first deploy
    assert untouched[1] == 100
    first = deploy(tmp_path, host, front_workers(16), "-y")
    assert first.returncode == 0, first.output[-4000:]
    # Nothing ran yet: sized for 16 + 32 spare workers at once, one restart.
    assert (
        "max_connections 100 -> 300" in first.output and "no Synapse process runs" in first.output
    )
    sized = postgres(host)
    assert sized[1] == 300 and sized[0] != untouched[0]

    for count in (24, 16):
        processes = main_pids(host)
        run = deploy(tmp_path, host, front_workers(count), "-y")
        assert run.returncode == 0, run.output[-4000:]
        assert "max_connections" not in run.output, run.output[-4000:]
        assert postgres(host) == sized  # same postmaster, same limit
        after = {u: pid for u, pid in main_pids(host).items() if pid}
        assert sum(u.startswith("matrix-synapse-worker@") for u in after) == count
        kept = {u: processes[u] for u in processes if u in after}
        assert kept and {u: after[u] for u in kept} == kept  # nothing else restarted
        assert_no_changes(deploy(tmp_path, host, front_workers(count)), host.name, commands=None)

    # Far beyond the spare: the preview says PostgreSQL would restart, and why; nothing changes.
    preview = deploy(tmp_path, host, front_workers(150), "--dry", "--diff")
    assert preview.returncode == 0, preview.output[-4000:]
    assert (
        "max_connections 300 -> 800: 150 workers need 631 connections; "
        "PostgreSQL restarts, every Synapse process reconnects"
    ) in preview.output
    assert apply_commands(preview, host.name) == []
    assert postgres(host) == sized


def reloads_logged(host: TestHost, unit: str) -> list[str]:
    journal = host.ssh(f"journalctl --no-pager -o cat -u {unit}").stdout
    return re.findall(r"reloaded log config \S+ \(root level (\w+)\)", journal)


def test_a_log_level_change_reloads_every_process_in_place(tmp_path: Path, host: TestHost) -> None:
    workers = front_workers(4)
    first = deploy(tmp_path, host, {**workers, "matrix_synapse_log_level": "INFO"}, "-y")
    assert first.returncode == 0, first.output[-4000:]
    before = main_pids(host)
    assert len(before) == 1 + 4 and all(before.values())
    assert all(reloads_logged(host, u) == [] for u in before)

    debug = {**workers, "matrix_synapse_log_level": "DEBUG"}
    preview = deploy(tmp_path, host, debug, "--dry", "--diff")
    assert preview.returncode == 0, preview.output[-4000:]
    assert "Will run: systemctl reload matrix-synapse.service matrix-synapse-worker@" in (
        preview.output
    )
    assert "systemctl restart" not in preview.output
    run = deploy(tmp_path, host, debug, "-y")
    assert run.returncode == 0, run.output[-4000:]
    assert main_pids(host) == before  # no process restarted
    for unit in before:  # each re-read the new file
        assert reloads_logged(host, unit) == ["DEBUG"], unit
    assert_no_changes(deploy(tmp_path, host, debug), host.name, commands=None)
