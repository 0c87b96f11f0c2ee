"""`pyinfra INVENTORY deploys/status.py` on real systemd hosts with the stand-in Synapse: every
planned process listed with its state, PID, memory, ports and readiness, a stopped worker and an
unplanned unit of ours shown as such, one SSH command per host whatever the worker count, and
nothing on the host changed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploys.core.settings import REPO_ROOT
from tests.support.deploying import (
    Run,
    apply_commands,
    counted_pyinfra,
    front_workers,
    host_snapshot,
    install_standin,
    pyinfra,
    pyinfra_table,
    write_inventory,
)
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

MAIN = "matrix-synapse.service"
GHOST = "matrix-synapse-worker@ghost.service"
# What an SSH login itself writes (journal, logind sessions, utmp/wtmp/lastlog, pam_motd's
# /run/motd.dynamic renamed into /run) and the kernel's trees: every other file and directory on
# the root file system and the tmpfs mounts (/tmp, /run) must be as old as the marker.
CHANGED_FILES = (
    "find / /tmp /run /run/lock -xdev \\( -path /proc -o -path /sys -o -path /dev -o "
    "-path /run/systemd -o -path /run/user -o -path /run/log -o -path /var/log -o "
    "-path /run/utmp -o -path /run/motd.dynamic \\) -prune "
    "-o -newer /run/status-test-marker ! -path /run -print"
)


def worker_unit(i: int) -> str:
    return f"matrix-synapse-worker@front-{i}.service"


def status(tmp_path: Path, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, dict]:
    """Run the status report (the plain command: pyinfra asks to execute, the helper answers
    Enter) and return the run and each host's JSON report."""
    reports = tmp_path / f"reports-{len(list(tmp_path.glob('reports-*')))}"
    reports.mkdir()
    monkeypatch.setenv("SYNAPSE_STATUS_JSON", str(reports))
    run = pyinfra(tmp_path, inventory, deploy="deploys/status.py")
    assert run.returncode == 0, run.output[-3000:]
    return run, {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}


def assert_read_only(run: Run, host: TestHost) -> None:
    """One SSH command (the probe), no upload, no operation, nothing applied."""
    assert run.commands[host.name] == 1, run.command_lines[host.name]
    assert run.command_lines[host.name][0].startswith("python3 -B -c ")
    assert run.uploads.get(host.name, 0) == 0
    assert apply_commands(run, host.name) == []
    table = pyinfra_table(run, "Results", ("Hosts", "Success", "Error", "No Change"))
    assert table == {"Grand total": ("-", "-", "-", "-")}, table


def host_state(host: TestHost) -> str:
    """Every managed file's checksum, mode and owner, every unit's state and main PID, and every
    file on the root file system written since the marker."""
    return host_snapshot(host) + host.ssh(CHANGED_FILES).stdout


def start_ghost(host: TestHost) -> None:
    """An instance of our worker template the plan does not have, running (its own config)."""
    host.ssh(
        "sed -e 's/front-0/ghost/; s/15000/19990/; s/25000/29990/' "
        "/etc/matrix-synapse/workers/front-0.yaml > /etc/matrix-synapse/workers/ghost.yaml && "
        f"systemctl start {GHOST}"
    )


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def test_status_lists_every_process_a_stopped_worker_and_an_unplanned_unit(
    tmp_path: Path, host: TestHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = write_inventory(tmp_path / "inventory.py", [(host, front_workers(10))])
    deployed = pyinfra(tmp_path, inventory, "-y")
    assert deployed.returncode == 0, deployed.output[-3000:]
    host.ssh("touch /run/status-test-marker")
    before = host_state(host)

    run, reports = status(tmp_path, inventory, monkeypatch)
    assert_read_only(run, host)
    report = reports[host.name]
    planned = {row["unit"]: row for row in report["planned"]}
    assert list(planned) == [MAIN, *(worker_unit(i) for i in range(10))]
    pids = {line.split("=")[1] for line in before.splitlines() if line.startswith("MainPID=")}
    for row in planned.values():
        assert (row["active"], row["sub"], row["ready"]) == ("active", "running", True), row
        assert str(row["pid"]) in pids, row  # systemd's own MainPID
        assert row["rss_bytes"] > 1024 * 1024 and 0 <= row["uptime_seconds"] < 3600, row
    assert "127.0.0.1:8008" in planned[MAIN]["listening"]
    for i in range(10):
        listening = planned[worker_unit(i)]["listening"]
        assert {f"127.0.0.1:{15000 + i}", f"127.0.0.1:{25000 + i}"} <= set(listening), listening
    assert report["unplanned"] == [] and report["errors"] == []
    # The table on standard output, a row per process and the summary line.
    assert f"{host.name}: 11 planned, 11 active, 11 ready, 0 unplanned" in run.output
    for unit in planned:
        assert any(
            line.startswith(unit) and line.endswith("yes") for line in run.output.split("\n")
        )
    assert host_state(host) == before

    # One worker stopped, a worker of ours the plan does not have started.
    host.ssh(f"systemctl stop {worker_unit(3)}")
    start_ghost(host)
    host.ssh("touch /run/status-test-marker")
    before = host_state(host)
    run, reports = status(tmp_path, inventory, monkeypatch)
    assert_read_only(run, host)
    report = reports[host.name]
    stopped = next(row for row in report["planned"] if row["unit"] == worker_unit(3))
    assert (stopped["active"], stopped["ready"], stopped["pid"]) == ("inactive", False, None)
    assert stopped["problem"] == "unit inactive (dead)" and stopped["listening"] == []
    assert sum(row["ready"] for row in report["planned"]) == 10
    [ghost] = report["unplanned"]
    assert (ghost["unit"], ghost["active"], ghost["planned"]) == (GHOST, "active", False)
    assert ghost["pid"] and "127.0.0.1:19990" in ghost["listening"]
    assert f"{host.name}: 11 planned, 10 active, 10 ready, 1 unplanned" in run.output
    assert f"  {worker_unit(3)}: unit inactive (dead)" in run.output
    assert any(
        line.startswith(GHOST) and line.endswith("NOT PLANNED") for line in run.output.split("\n")
    )
    assert host_state(host) == before


def test_one_command_per_host_whatever_the_worker_count(
    tmp_path: Path, testhost_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    big, small = testhost_factory(2)
    for h in (big, small):
        install_standin(h)
    counts = {big: 120, small: 3}
    inventory = write_inventory(
        tmp_path / "inventory.py",
        # two homeservers: hosts sharing a matrix_domain would be one cluster
        [
            (h, {**front_workers(n), "matrix_domain": f"hs{n}.example.org"})
            for h, n in counts.items()
        ],
    )
    deployed = pyinfra(tmp_path, inventory, "-y")
    assert deployed.returncode == 0, deployed.output[-3000:]
    for h in counts:
        h.ssh("touch /run/status-test-marker")
    before = {h: host_state(h) for h in counts}
    run, reports = status(tmp_path, inventory, monkeypatch)
    for h, n in counts.items():
        assert_read_only(run, h)
        report = reports[h.name]
        assert len(report["planned"]) == n + 1
        assert all(row["ready"] and row["pid"] for row in report["planned"]), report
        assert report["summary"] == f"{n + 1} planned, {n + 1} active, {n + 1} ready, 0 unplanned"
        assert f"{h.name}: {report['summary']}" in run.output
        assert host_state(h) == before[h]


def test_a_non_root_user_with_sudo_sees_every_process_and_port(
    tmp_path: Path, testhost: TestHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ss shows which process holds a socket only to root: the probe runs under sudo.
    install_standin(testhost, user="deploy")
    inventory = write_inventory(
        tmp_path / "inventory.py", [(testhost, {**front_workers(3), "_sudo": True})], user="deploy"
    )
    deployed = pyinfra(tmp_path, inventory, "-y")
    assert deployed.returncode == 0, deployed.output[-3000:]
    testhost.ssh("touch /run/status-test-marker")
    before = host_state(testhost)
    run, reports = status(tmp_path, inventory, monkeypatch)
    assert run.commands[testhost.name] == 1, run.command_lines[testhost.name]
    rows = reports[testhost.name]["planned"]
    assert len(rows) == 4 and all(row["ready"] and row["pid"] for row in rows), rows
    for i, row in enumerate(rows[1:]):
        assert f"127.0.0.1:{15000 + i}" in row["listening"], row
    # With pyinfra's --json, standard output stays pyinfra's JSON; the tables go to stderr.
    as_json = subprocess.run(
        counted_pyinfra(
            tmp_path / "json-counts.json", inventory, "deploys/status.py", "-y", "--json"
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    assert json.loads(as_json.stdout)["results"]["operations"] == []
    assert f"{testhost.name}: 4 planned, 4 active, 4 ready, 0 unplanned" in as_json.stderr
    assert host_state(testhost) == before
