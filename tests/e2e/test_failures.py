"""Real faults against a real Synapse cluster: a killed apply, a worker that cannot start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import Run, assert_no_changes, main_pids, pyinfra, write_inventory
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

JOURNAL = "/var/lib/pyinfra-synapse/pending-changes.json"
BASE = {
    **E2E_SETTINGS,
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "one-of-each",
}


class Cluster:
    """One real-Synapse host shared by the tests of this module. Each test first brings it to the
    state it starts from (``converge``), so none depends on which test ran before it."""

    def __init__(self, host: TestHost, folder: Path) -> None:
        self.host, self.folder = host, folder

    def deploy(self, *args: str, **settings: Any) -> Run:
        inventory = write_inventory(
            self.folder / "inventory.py", [(self.host, {**BASE, **settings})], standin=False
        )
        return pyinfra(self.folder, inventory, *args, timeout=900)

    def converge(self, **settings: Any) -> None:
        """Deploy ``settings`` and check the host is there: a rerun changes nothing and leaves
        no pending-changes journal."""
        run = self.deploy("-y", **settings)
        assert run.returncode == 0, run.output[-4000:]
        self.assert_converged(**settings)

    def assert_converged(self, **settings: Any) -> None:
        assert_no_changes(self.deploy(**settings), self.host.name, commands=None)
        assert not self.journal_exists()

    def journal_exists(self) -> bool:
        return self.host.ssh(f"test -f {JOURNAL}", check=False).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    host = TestHost.start(f"e2e-faults-{int(time.time()) % 100000}", tree=ensure_synapse_tree())
    try:
        yield Cluster(host, tmp_path_factory.mktemp("faults"))
    finally:
        host.stop()


def test_a_killed_apply_is_finished_by_the_next_run(cluster: Cluster) -> None:
    host = cluster.host
    # Dropping this homeserver setting restarts everyone (a log-level change would only reload).
    upload = {"max_upload_size": "61M"}
    cluster.converge(
        matrix_synapse_log_level="WARNING", matrix_synapse_configuration_extension=upload
    )
    before = main_pids(host)
    runs: list[Any] = []
    deploying = threading.Thread(
        target=lambda: runs.append(cluster.deploy("-y", matrix_synapse_log_level="WARNING"))
    )
    deploying.start()
    # Wait until the new files are in place and Synapse is checking them, then kill the apply:
    # the restarts they need have not happened yet.
    host.ssh(
        "for i in $(seq 600); do pgrep -f [s]ynapse_check.py >/dev/null && break; sleep 0.05; "
        "done; pkill -9 -f '^python3 -m [h]ost[.]apply '; pkill -9 -f [s]ynapse_check.py"
    )
    deploying.join()
    assert runs[0].returncode != 0
    assert "61M" not in host.ssh("cat /etc/matrix-synapse/homeserver.yaml").stdout
    assert cluster.journal_exists()
    assert main_pids(host) == before  # killed before any restart

    again = cluster.deploy("-y", matrix_synapse_log_level="WARNING")
    assert again.returncode == 0, again.output[-4000:]
    after = main_pids(host)
    restarted = {u for u in before if u.endswith(".service") and before[u] != after[u]}
    assert restarted == {u for u in before if u.endswith(".service")}  # main and every worker
    cluster.assert_converged(matrix_synapse_log_level="WARNING")


def test_a_worker_that_cannot_start_fails_the_run_naming_it(cluster: Cluster) -> None:
    host = cluster.host
    cluster.converge(matrix_synapse_log_level="WARNING")
    before = main_pids(host)
    # Port 5432 passes our validation (no Synapse listener has it) but PostgreSQL holds it.
    broken = {
        "matrix_synapse_log_level": "WARNING",
        "matrix_synapse_workers_generic_workers_port_range_start": 5432,
    }
    run = cluster.deploy("-y", **broken)
    assert run.returncode != 0
    assert "matrix-synapse-worker@generic-0.service" in run.output
    assert "journal tail" in run.output
    after = main_pids(host)
    others = {u for u in before if u.endswith(".service") and "generic-0" not in u}
    assert {u for u in others if before[u] != after[u]} == set()  # the others keep running
    assert all(after[u] > 0 for u in others)

    retry = cluster.deploy("-y", **broken)  # the next run tries again (and fails again)
    assert retry.returncode != 0 and "generic-0" in retry.output

    fixed = cluster.deploy("-y", matrix_synapse_log_level="WARNING")
    assert fixed.returncode == 0, fixed.output[-4000:]
    assert main_pids(host)["matrix-synapse-worker@generic-0.service"] > 0
    cluster.assert_converged(matrix_synapse_log_level="WARNING")


def test_a_config_synapse_refuses_is_rolled_back_before_any_restart(cluster: Cluster) -> None:
    host = cluster.host
    cluster.converge(matrix_synapse_log_level="WARNING")
    before = main_pids(host)
    files = host.ssh(
        "sha256sum /etc/matrix-synapse/homeserver.yaml /etc/matrix-synapse/workers/*.yaml"
    ).stdout
    # Passes our validation (a pass-through setting) but Synapse cannot parse the size.
    run = cluster.deploy(
        "-y",
        matrix_synapse_log_level="WARNING",
        matrix_synapse_configuration_extension={"max_upload_size": "lots"},
    )
    assert run.returncode != 0
    assert "was refused; the previous files were put back and no process was touched" in run.output
    assert "media-repository-0.yaml: ValueError" in run.output  # the file and Synapse's message
    assert (
        host.ssh(
            "sha256sum /etc/matrix-synapse/homeserver.yaml /etc/matrix-synapse/workers/*.yaml"
        ).stdout
        == files
    )
    assert main_pids(host) == before
    cluster.assert_converged(matrix_synapse_log_level="WARNING")
