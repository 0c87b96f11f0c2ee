"""Reliability on real systemd hosts: cut connections, duplicated machines, garbage on the host."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import build_plan
from deploys.core.settings import SettingsError, parse_settings
from deploys.operations.synapse import LOCK_PATH
from tests.bench.latency_proxy import Cut, LatencyProxy
from tests.support.deploying import (
    STANDIN_SETTINGS,
    assert_no_changes,
    install_standin,
    pyinfra,
    write_inventory,
)
from tests.support.settings_data import make_data
from tests.support.testhost import TestHost
from tests.unit.test_settings import BAD_INPUTS

pytestmark = pytest.mark.integration

WORKERS = 130
CUT_FRACTIONS = (0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.97)


def settings(cp_max: int) -> dict[str, Any]:
    # cp_max is in every worker file: changing it rewrites 145 files and restarts 145 workers.
    return {
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_generic_workers_count": WORKERS - 15,
        "matrix_synapse_database_workers_cp_max": cp_max,
    }


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def managed_hashes(host: TestHost) -> dict[str, str]:
    out = host.ssh(
        "find /etc/matrix-synapse /etc/systemd/system /etc/nginx/conf.d -path '*matrix-synapse*' "
        "-type f ! -path '*/secrets/*' -exec sha256sum {} +"
    ).stdout
    return {path: digest for digest, path in (line.split("  ", 1) for line in out.splitlines())}


def enabled_workers(host: TestHost) -> set[str]:
    out = host.ssh("ls /etc/systemd/system/matrix-synapse.target.wants/").stdout
    return {u for u in out.split() if u.startswith("matrix-synapse-worker@")}


def deploy(tmp_path: Path, host: TestHost, data: dict[str, Any], port: int | None = None):
    _, connection = host.inventory_entry()
    inventory = write_inventory(tmp_path / "inventory.py", [(host, data)])
    if port is not None:  # through the proxy
        inventory.write_text(
            inventory.read_text().replace(
                f"'ssh_port': {connection['ssh_port']}", f"'ssh_port': {port}"
            )
        )
    return pyinfra(tmp_path, inventory, "-y", timeout=300)


def test_cut_connections_leave_old_or_new_files_and_the_next_run_converges(
    tmp_path: Path, host: TestHost
) -> None:
    assert deploy(tmp_path, host, settings(4)).returncode == 0
    new = managed_hashes(host)
    assert deploy(tmp_path, host, settings(3)).returncode == 0
    old = managed_hashes(host)
    planned = enabled_workers(host)
    assert len(planned) == WORKERS and old.keys() == new.keys() and old != new

    with LatencyProxy("127.0.0.1", host.port, delay=0) as proxy:  # measure a whole run's bytes
        assert deploy(tmp_path, host, settings(4), proxy.port).returncode == 0
        total = sum(c.up + c.down for c in proxy.connections)
    assert deploy(tmp_path, host, settings(3)).returncode == 0

    outcomes = []
    for fraction in CUT_FRACTIONS:
        cut = Cut(after_bytes=int(total * fraction), direction="total")
        with LatencyProxy("127.0.0.1", host.port, delay=0, cut=cut) as proxy:
            run = deploy(tmp_path, host, settings(4), proxy.port)
        outcomes.append((fraction, run.returncode))
        # An apply the cut reached goes on without its controller (it ignores SIGHUP), draining
        # and restarting: wait for it to let go of the deploy lock, as the next run would.
        host.ssh(f"flock -w 300 {LOCK_PATH} true")
        # Whatever the cut hit, every managed file is exactly its old or its new version...
        for path, digest in managed_hashes(host).items():
            assert digest in (old[path], new[path]), (fraction, path)
        # ...no planned worker is disabled...
        assert enabled_workers(host) == planned, fraction
        # ...and the next run converges with no manual step.
        again = deploy(tmp_path, host, settings(4))
        assert again.returncode == 0, (fraction, again.output[-3000:])
        assert managed_hashes(host) == new
        assert_no_changes(pyinfra(tmp_path, tmp_path / "inventory.py"), host.name)
        assert deploy(tmp_path, host, settings(3)).returncode == 0  # back to the old plan
    # The cuts really interrupted runs (the early ones at least fail on the controller).
    assert sum(rc != 0 for _, rc in outcomes) >= len(CUT_FRACTIONS) // 2, outcomes
    print(f"cut points tried: {len(CUT_FRACTIONS)} of {total} bytes: {outcomes}")


def test_one_machine_listed_twice_is_refused_before_any_change(
    tmp_path: Path, host: TestHost
) -> None:
    _, connection = host.inventory_entry()
    data = {**connection, **STANDIN_SETTINGS}
    # Two homeservers on one machine (with one matrix_domain they would be one cluster's hosts).
    a, b = ({**data, "matrix_domain": f"{n}.example.org"} for n in "ab")
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"hosts = {[('alias-a', a), ('alias-b', b)]!r}\n")
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode != 0
    assert "alias-a" in run.output and "alias-b" in run.output
    assert "same machine" in run.output
    assert host.ssh("test -e /etc/matrix-synapse", check=False).returncode == 1


def test_garbage_on_the_host_is_handled_predictably(tmp_path: Path, host: TestHost) -> None:
    assert (
        deploy(
            tmp_path, host, settings(3) | {"matrix_synapse_workers_generic_workers_count": 2}
        ).returncode
        == 0
    )
    host.ssh(
        "echo '{not: [yaml' > /etc/matrix-synapse/workers/generic-1.yaml; "  # ours, corrupted
        "echo 'hello' > /etc/matrix-synapse/workers/notes.txt; "  # not ours by name
        "echo 'worker_app: x' > /etc/matrix-synapse/workers/hand-made.yaml; "  # ours by name
        "systemctl enable matrix-synapse-worker@hand-made.service; "
        "echo 'x: 1' > /etc/matrix-synapse/conf.d/local.yaml; "  # an operator's own conf.d file
        # a ghost: enabled, but its unit cannot be found (matrix-docker-ansible-deploy #1461)
        "ln -s /nonexistent/unit.service "
        "/etc/systemd/system/matrix-synapse.target.wants/matrix-synapse-worker@ghost.service; "
        "systemctl daemon-reload"
    )
    run = deploy(tmp_path, host, settings(3) | {"matrix_synapse_workers_generic_workers_count": 2})
    assert run.returncode == 0, run.output[-3000:]
    files = set(host.ssh("ls /etc/matrix-synapse/workers").stdout.split())
    assert "notes.txt" in files and "hand-made.yaml" not in files
    assert (
        "worker_app: synapse.app.generic_worker"
        in host.ssh("cat /etc/matrix-synapse/workers/generic-1.yaml").stdout
    )
    assert "hand-made" not in " ".join(enabled_workers(host))
    assert "ghost" not in " ".join(enabled_workers(host))
    assert host.ssh("cat /etc/matrix-synapse/conf.d/local.yaml").stdout == "x: 1\n"
    dry = pyinfra(tmp_path, tmp_path / "inventory.py", "--dry")
    assert "Leaving alone (not ours by name)" in dry.output
    assert "/etc/matrix-synapse/workers/notes.txt" in dry.output
    assert_no_changes(dry, host.name, commands=2)
    assert_no_changes(pyinfra(tmp_path, tmp_path / "inventory.py"), host.name)


@pytest.fixture(scope="module")
def untouched_host(base_tree: Path) -> Iterator[TestHost]:
    host = TestHost.start(f"bad-input-{uuid.uuid4().hex[:6]}", tree=base_tree)
    try:
        yield host
    finally:
        host.stop()


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    BAD_INPUTS,
    ids=[f"{i:02d}-{case[1]}" for i, case in enumerate(BAD_INPUTS)],
)
def test_bad_input_stops_the_cli_with_the_exact_message_and_changes_nothing(
    tmp_path: Path, untouched_host: TestHost, overrides: dict[str, Any], key: str, allowed: str
) -> None:
    inventory = write_inventory(tmp_path / "inventory.py", [(untouched_host, overrides)])
    with pytest.raises(SettingsError) as expected:
        build_plan(parse_settings(make_data(**STANDIN_SETTINGS, **overrides)), untouched_host.name)
    line = next(p for p in expected.value.problems if p.startswith(key))
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode != 0
    assert line in run.output  # exactly what the settings layer says, key, value and rule
    assert (
        untouched_host.ssh(
            "test -e /etc/matrix-synapse || test -e /var/lib/pyinfra-synapse", check=False
        ).returncode
        == 1
    )


def test_secrets_are_private_generated_once_and_never_printed(
    tmp_path: Path, host: TestHost
) -> None:
    password = "db-password-" + uuid.uuid4().hex
    data = {
        **settings(3),
        "matrix_synapse_workers_generic_workers_count": 2,
        "matrix_synapse_database_password": password,
    }
    first = deploy(tmp_path, host, data)
    assert first.returncode == 0, first.output[-3000:]
    listing = host.ssh("stat -c '%a %U %n' /etc/matrix-synapse/secrets/*").stdout.splitlines()
    assert len(listing) == 6  # 4 shared secrets, signing key, database pgpass
    assert all(line.startswith("600 matrix-synapse ") for line in listing), listing
    values = host.ssh(
        "cat /etc/matrix-synapse/secrets/replication; echo; "
        "cat /etc/matrix-synapse/secrets/macaroon"
    ).stdout.split()
    # A change that rewrites the pgpass file and restarts everything, at the most verbose level.
    changed = {**data, "matrix_synapse_database_password": password + "-2"}
    inventory = write_inventory(tmp_path / "inventory.py", [(host, changed)])
    for args in (["--dry", "--diff", "-vvv"], ["-y", "--diff", "-vvv"]):
        run = pyinfra(tmp_path, inventory, *args)
        assert run.returncode == 0, run.output[-3000:]
        for secret in (password, password + "-2", *values):
            assert secret not in run.output
    assert_no_changes(pyinfra(tmp_path, inventory), host.name)
    # Generated once: the shared secrets did not change across runs.
    assert (
        host.ssh(
            "cat /etc/matrix-synapse/secrets/replication; echo; "
            "cat /etc/matrix-synapse/secrets/macaroon"
        ).stdout.split()
        == values
    )
