"""Ship the plan over real SSH to real systemd hosts (systemd-nspawn), with a stand-in Synapse."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from deploys.settings import REPO_ROOT
from tests.support.deploying import (
    host_snapshot,
    install_standin,
    main_pids,
    pyinfra,
    write_inventory,
)
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

WORKERS_ON = {"matrix_synapse_workers_enabled": True}


def generic(count: int) -> dict[str, Any]:
    return {**WORKERS_ON, "matrix_synapse_workers_generic_workers_count": count}


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def deploy(tmp_path: Path, host: TestHost, data: dict[str, Any], *args: str):
    inventory = write_inventory(tmp_path / "inventory.py", [(host, data)])
    return pyinfra(tmp_path, inventory, *args)


def unit_states(host: TestHost, pattern: str = "matrix-synapse*") -> dict[str, tuple[str, str]]:
    out = host.ssh(f"systemctl list-units --all --plain --no-legend '{pattern}'").stdout
    enabled = set(host.ssh("ls /etc/systemd/system/*.wants/ | grep matrix-synapse || true").stdout.split())
    return {line.split()[0]: (line.split()[2], "enabled" if line.split()[0] in enabled else "disabled")
            for line in out.splitlines() if line.strip()}  # fmt: skip


def test_first_deploy_creates_everything_and_a_rerun_changes_nothing(tmp_path: Path,
                                                                     host: TestHost) -> None:  # fmt: skip
    first = deploy(tmp_path, host, WORKERS_ON, "-y")
    assert first.returncode == 0, first.output
    workers = host.ssh("ls /etc/matrix-synapse/workers").stdout.split()
    assert len(workers) == 16
    states = unit_states(host)
    assert len(states) == 16 + 2
    assert all(s == ("active", "enabled") for s in states.values()), states
    perms = host.ssh("stat -c '%a %U %G' /etc/matrix-synapse/homeserver.yaml "
                     "/etc/matrix-synapse/secrets/replication "
                     "/etc/systemd/system/matrix-synapse-worker@.service").stdout.split("\n")  # fmt: skip
    assert perms[:3] == ["640 root matrix-synapse", "600 matrix-synapse matrix-synapse",
                         "644 root root"]  # fmt: skip

    before = host_snapshot(host)
    second = deploy(tmp_path, host, WORKERS_ON)  # normal run: prepare + execute
    assert second.returncode == 0, second.output
    assert "No changes" in second.output
    assert second.uploads.get(host.name, 0) == 0
    # The only remote commands are the machine-id read and the state fact, once per pyinfra
    # pass: no upload, no systemctl write.
    assert second.commands[host.name] == 3
    for command in second.command_lines[host.name][1:]:
        assert "sha256sum" in command and "systemctl list-units" in command, command
        assert not any(w in command for w in ("restart", "enable", "start ", "base64 -d"))
    assert host_snapshot(host) == before


def test_changing_one_worker_restarts_exactly_that_worker(tmp_path: Path, host: TestHost) -> None:
    def workers(port: int) -> dict[str, Any]:
        entries = [{"name": f"front-{i}", "type": "generic_worker", "port": 15000 + i,
                    "metrics_port": 25000 + i} for i in range(5)]  # fmt: skip
        entries[2]["port"] = port
        return {**WORKERS_ON, "matrix_synapse_workers_enabled_list": entries}

    assert deploy(tmp_path, host, workers(15002), "-y").returncode == 0
    before = main_pids(host)
    run = deploy(tmp_path, host, workers(15502), "-y")
    assert run.returncode == 0, run.output
    after = main_pids(host)
    changed = {unit for unit in before if before[unit] != after[unit]}
    assert changed == {"matrix-synapse-worker@front-2.service"}
    assert "port: 15502" in host.ssh("cat /etc/matrix-synapse/workers/front-2.yaml").stdout


def test_shrinking_from_130_to_10_workers_removes_exactly_the_others(tmp_path: Path,
                                                                     host: TestHost) -> None:  # fmt: skip
    assert deploy(tmp_path, host, generic(130), "-y").returncode == 0
    # garbage that is not ours stays untouched
    host.ssh("touch /etc/matrix-synapse/workers/README.txt")
    run = deploy(tmp_path, host, generic(10), "-y")
    assert run.returncode == 0, run.output
    files = set(host.ssh("ls /etc/matrix-synapse/workers").stdout.split())
    generic_files = {f for f in files if f.startswith("generic-")}
    assert generic_files == {f"generic-{i}.yaml" for i in range(10)}
    assert "README.txt" in files
    states = unit_states(host, "matrix-synapse-worker@generic-*")
    assert set(states) == {f"matrix-synapse-worker@generic-{i}.service" for i in range(10)}
    assert all(s == ("active", "enabled") for s in states.values())
    links = host.ssh("ls /etc/systemd/system/matrix-synapse.target.wants/").stdout.split()
    assert sum(link.startswith("matrix-synapse-worker@generic-") for link in links) == 10


def test_dry_diff_names_every_change_and_leaves_the_host_identical(tmp_path: Path,
                                                                  host: TestHost) -> None:  # fmt: skip
    assert deploy(tmp_path, host, generic(4), "-y").returncode == 0
    before = host_snapshot(host)
    run = deploy(tmp_path, host, {**generic(2), "matrix_synapse_log_level": "WARNING",
                                  "matrix_synapse_database_password": "pw-never-printed"},
                 "--dry", "--diff")  # fmt: skip
    assert run.returncode == 0, run.output
    assert run.output.count("Will modify /etc/matrix-synapse/log.yaml") == 1
    assert "-   level: INFO" in run.output and "+   level: WARNING" in run.output
    assert "Will create /etc/matrix-synapse/secrets/database.pgpass" in run.output
    for i in (2, 3):
        assert f"Will remove /etc/matrix-synapse/workers/generic-{i}.yaml" in run.output
    # every worker file gains the passfile line
    assert run.output.count("Will modify /etc/matrix-synapse/workers/") == 2 + 15
    assert "pw-never-printed" not in run.output
    assert run.uploads.get(host.name, 0) == 0
    assert host_snapshot(host) == before
    # A normal run (prepare, confirm, execute) prints each diff once, not once per pass.
    applied = deploy(tmp_path, host, {**generic(2), "matrix_synapse_log_level": "WARNING"}, "--diff")
    assert applied.returncode == 0, applied.output
    assert applied.output.count("Will modify /etc/matrix-synapse/log.yaml") == 1
    assert "level: WARNING" in host.ssh("cat /etc/matrix-synapse/log.yaml").stdout


def test_two_deploys_at_once_serialise_and_converge(tmp_path: Path, host: TestHost) -> None:
    runs: list[Any] = [None, None]

    def go(index: int) -> None:
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        runs[index] = deploy(folder, host, generic(30), "-y")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in runs), [r.output for r in runs]
    states = unit_states(host)
    assert len(states) == 30 + 15 + 2
    assert all(s == ("active", "enabled") for s in states.values())
    rerun = deploy(tmp_path, host, generic(30))
    assert "No changes" in rerun.output


def test_a_held_lock_fails_with_a_clear_message_and_changes_nothing(tmp_path: Path,
                                                                    host: TestHost) -> None:  # fmt: skip
    host.ssh("mkdir -p /run/lock && (flock /run/lock/pyinfra-synapse.lock sleep 60 "
             ">/dev/null 2>&1 &)")  # fmt: skip
    run = deploy(tmp_path, host, {**WORKERS_ON, "matrix_synapse_deploy_lock_timeout": 2}, "-y")
    assert run.returncode != 0
    assert "another pyinfra-synapse deploy holds /run/lock/pyinfra-synapse.lock" in run.output
    assert host.ssh("test -e /etc/matrix-synapse/homeserver.yaml", check=False).returncode == 1


def test_two_hosts_in_one_run_get_their_own_plans(tmp_path: Path,
                                                  testhost_factory: Any) -> None:  # fmt: skip
    a, b = testhost_factory(2)
    for h in (a, b):
        install_standin(h)
    inventory = write_inventory(tmp_path / "inventory.py", [(a, generic(3)), (b, generic(7))])
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode == 0, run.output
    for h, count in ((a, 3), (b, 7)):
        names = h.ssh("ls /etc/matrix-synapse/workers").stdout.split()
        assert sum(n.startswith("generic-") for n in names) == count


def test_non_root_user_with_sudo(tmp_path: Path, testhost: TestHost) -> None:
    install_standin(testhost, user="deploy")
    inventory = write_inventory(tmp_path / "inventory.py",
                                [(testhost, {**generic(3), "_sudo": True})], user="deploy")  # fmt: skip
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode == 0, run.output
    assert testhost.ssh("stat -c '%a %U %G' /etc/matrix-synapse/workers/generic-2.yaml"
                        ).stdout.strip() == "640 root matrix-synapse"  # fmt: skip
    assert "No changes" in pyinfra(tmp_path, inventory).output


def test_bad_settings_stop_the_run_before_any_host_changes(tmp_path: Path, testhost_factory: Any) -> None:
    a, b = testhost_factory(2)
    inventory = write_inventory(tmp_path / "inventory.py", [
        (a, generic(3)), (b, {**generic(3), "matrix_synapse_workers_preset": "one-of-eahc"})])  # fmt: skip
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode != 0
    assert "matrix_synapse_workers_preset = 'one-of-eahc'" in run.output
    for h in (a, b):
        assert h.ssh("test -e /etc/matrix-synapse", check=False).returncode == 1


@pytest.mark.parametrize("workers", [13, 130, 1000])
def test_round_trips_do_not_grow_with_workers(tmp_path: Path, host: TestHost, workers: int) -> None:
    # one federation sender (little-federation-helper) plus generic workers
    data = {**generic(workers - 1), "matrix_synapse_workers_preset": "little-federation-helper"}
    first = deploy(tmp_path, host, data)
    assert first.returncode == 0, first.output
    rerun = deploy(tmp_path, host, data)
    counts = (first.commands[host.name], first.uploads.get(host.name, 0),
              rerun.commands[host.name], rerun.uploads.get(host.name, 0))  # fmt: skip
    # normal runs: first = machine-id + fact (prepare) + fact + apply (archive on stdin);
    # rerun = machine-id + fact twice
    assert counts == (4, 0, 3, 0), (workers, counts, first.command_lines)


def test_verify_suite_passes_against_the_deployed_host(tmp_path: Path, host: TestHost) -> None:
    inventory = write_inventory(tmp_path / "inventory.py", [(host, generic(5))])
    assert pyinfra(tmp_path, inventory, "-y").returncode == 0
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/verify", f"--hosts={host.testinfra_spec()}",
         f"--inventory={inventory}", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-m", "not live_synapse"],  # the stand-in opens no listeners
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and " failed" not in result.stdout
