"""The host fact's real command, run by a local shell against a temporary root.

Only ``systemctl`` is a stand-in here (a script on PATH): the unit tests run where no systemd is
PID 1. The real systemd is read by the integration tests.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from deploys.facts.synapse import MachineId, SynapseHostState
from deploys.host.restarts import Topology, parse_topology, topology_json
from deploys.host.units import UnitState

LIST_UNITS = """\
matrix-synapse.service loaded active running Synapse
matrix-synapse-worker@generic-0.service loaded failed failed Synapse worker generic-0
nginx.service loaded active running A high performance web server
"""


def fake_systemctl(bin_dir: Path, output: str, rc: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "systemctl"
    script.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}OUT\nexit {rc}\n")
    script.chmod(0o755)


def run_fact(root: Path, bin_dir: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    config, systemd = root / "etc/matrix-synapse", root / "etc/systemd/system"
    fact = SynapseHostState()
    command = fact.command(
        systemd_dir=str(systemd),
        journal_path=str(root / "journal.json"),
        **{
            "paths": [str(config / "homeserver.yaml"), str(systemd / "matrix-synapse.service")],
            "globs": [str(config / "workers/*.yaml")],
            **kwargs,
        },
    )
    return subprocess.run(
        ["sh", "-c", command.get_raw_value()],
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc/matrix-synapse/workers").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/matrix-synapse.target.wants").mkdir(parents=True)
    (tmp_path / "etc/nginx/conf.d").mkdir(parents=True)
    (tmp_path / "etc/matrix-synapse/homeserver.yaml").write_text("server_name: x\n")
    (tmp_path / "etc/matrix-synapse/workers/generic-0.yaml").write_text("worker_name: g\n")
    (tmp_path / "etc/systemd/system/matrix-synapse.service").write_text("[Unit]\n")
    (tmp_path / "etc/systemd/system/other.service").write_text("[Unit]\n")
    (tmp_path / "etc/nginx/conf.d/matrix-synapse-workers.conf").write_text("upstream a {}\n")
    (tmp_path / "etc/nginx/conf.d/default.conf").write_text("server {}\n")
    wants = tmp_path / "etc/systemd/system/matrix-synapse.target.wants"
    (wants / "matrix-synapse-worker@generic-0.service").symlink_to("/dev/null")
    return tmp_path


def test_the_fact_reads_managed_files_wherever_they_live(root: Path, tmp_path: Path) -> None:
    fake_systemctl(tmp_path / "bin", LIST_UNITS)
    nginx = str(root / "etc/nginx/conf.d/matrix-synapse-workers.conf")
    result = run_fact(
        root,
        tmp_path / "bin",
        paths=[
            str(root / "etc/matrix-synapse/homeserver.yaml"),
            str(root / "etc/systemd/system/matrix-synapse.service"),
            nginx,
            str(root / "absent.conf"),
        ],
        directories=[str(root / "etc/matrix-synapse")],
        reloaded_units=["nginx.service"],
    )
    assert result.returncode == 0, result.stderr
    state = SynapseHostState().process(result.stdout.splitlines())
    config = root / "etc/matrix-synapse"
    assert set(state.files) == {
        str(config / "homeserver.yaml"),
        str(config / "workers/generic-0.yaml"),
        str(root / "etc/systemd/system/matrix-synapse.service"),
        nginx,  # read because it is managed, wherever it lives (issue 9, bug 1)
    }  # other.service and default.conf are not asked for
    assert state.files[nginx].sha256 == hashlib.sha256(b"upstream a {}\n").hexdigest()
    assert state.files[nginx].mode == 0o644
    assert state.directories[str(config)][0] == 0o755
    assert state.units["matrix-synapse.service"] == UnitState("loaded", "active", False)
    assert state.units["matrix-synapse-worker@generic-0.service"] == UnitState(
        "loaded", "failed", True
    )
    assert state.units["nginx.service"].active
    assert state.journal_found is False


def test_a_systemctl_failure_fails_the_fact(root: Path, tmp_path: Path) -> None:
    # Before: `2>/dev/null; true` made every unit look stopped (issue 9, bug 7).
    fake_systemctl(tmp_path / "bin", "", rc=1)
    result = run_fact(root, tmp_path / "bin")
    assert result.returncode != 0


def test_a_file_that_cannot_be_hashed_fails_the_fact(root: Path, tmp_path: Path) -> None:
    # A read error while hashing must fail the fact, not make the file look modified forever.
    # As root no permission stops a read, so sha256sum itself is the stand-in for the fault.
    fake_systemctl(tmp_path / "bin", LIST_UNITS)
    unreadable = root / "etc/matrix-synapse/workers/generic-0.yaml"
    fake_sha = tmp_path / "bin/sha256sum"
    fake_sha.write_text("#!/bin/sh\necho 'sha256sum: read error' >&2\nexit 1\n")
    fake_sha.chmod(0o755)
    result = run_fact(root, tmp_path / "bin")
    assert result.returncode != 0, result.stdout
    assert unreadable.exists()


def test_a_missing_config_dir_is_a_first_deploy_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    fake_systemctl(tmp_path / "bin", "")
    result = run_fact(tmp_path, tmp_path / "bin", directories=[str(tmp_path / "nothing")])
    assert result.returncode == 0, result.stderr
    state = SynapseHostState().process(result.stdout.splitlines())
    assert state.files == {} and state.directories == {} and state.units == {}


def test_the_journal_is_reported(root: Path, tmp_path: Path) -> None:
    fake_systemctl(tmp_path / "bin", "")
    (root / "journal.json").write_text("[]")
    result = run_fact(root, tmp_path / "bin")
    assert SynapseHostState().process(result.stdout.splitlines()).journal_found is True


@pytest.mark.parametrize(
    ("output", "expected"),
    [(["0123abcd\n"], "0123abcd"), ([], "")],
)
def test_machine_id(output: list[str], expected: str) -> None:
    assert MachineId().process(output) == expected


def test_the_fact_reads_the_applied_topology_in_the_same_command(
    root: Path, tmp_path: Path
) -> None:
    fake_systemctl(tmp_path / "bin", LIST_UNITS)
    state = root / "applied-topology.json"
    result = run_fact(root, tmp_path / "bin", state_path=str(state))
    assert result.returncode == 0, result.stderr
    assert SynapseHostState().process(result.stdout.splitlines()).applied_topology is None
    topology = Topology(("stream-writer-0-events",), ("federation-sender-0",), ())
    state.write_text(topology_json(topology) + "\n")
    result = run_fact(root, tmp_path / "bin", state_path=str(state))
    assert result.returncode == 0, result.stderr
    read = SynapseHostState().process(result.stdout.splitlines()).applied_topology
    assert parse_topology(read) == topology
