"""Restart waves on a real systemd host with the stand-in (issue 11): a shared change restarts
main first, alone and ready, then the workers of a class in batches, never all of them down at
once (read from systemd's own unit timestamps); a wave that never becomes ready stops the run
there, later waves untouched; the next run converges and the one after changes nothing."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    Run,
    assert_no_changes,
    front_workers,
    install_standin,
    pyinfra,
    write_inventory,
)
from tests.support.faults import STANDIN_FAULT_DIR
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

MAIN = "matrix-synapse.service"
FRONTS = [f"matrix-synapse-worker@front-{i}.service" for i in range(4)]
TIMESTAMPS = ("ActiveEnterTimestampMonotonic", "ActiveExitTimestampMonotonic")


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def settings(upload: str, **extra: Any) -> dict[str, Any]:
    """Four generic workers (one class); ``upload`` goes into homeserver.yaml, which every
    process reads: changing it restarts every process."""
    return {
        **front_workers(4),
        "matrix_synapse_configuration_extension": {"max_upload_size": upload},
        **extra,
    }


def deploy(folder: Path, host: TestHost, data: dict[str, Any], *args: str) -> Run:
    folder.mkdir(parents=True, exist_ok=True)
    inventory = write_inventory(folder / "inventory.py", [(host, data)])
    return pyinfra(folder, inventory, *args, timeout=600)


def timestamps(host: TestHost) -> dict[str, dict[str, int]]:
    """unit -> when it last became active and last stopped being active (µs, monotonic)."""
    out = host.ssh(
        f"systemctl show --property=Id,{','.join(TIMESTAMPS)} {MAIN} {' '.join(FRONTS)}"
    ).stdout
    found = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found[props["Id"]] = {k: int(props[k]) for k in TIMESTAMPS}
    return found


def down(stamps: dict[str, int]) -> tuple[int, int]:
    """The interval a restarted unit was not active: from leaving active to active again."""
    return stamps["ActiveExitTimestampMonotonic"], stamps["ActiveEnterTimestampMonotonic"]


def test_a_shared_change_rolls_main_first_then_the_class_never_all_down(
    tmp_path: Path, host: TestHost
) -> None:
    batches = {"matrix_synapse_restart_batch_percent": 50}  # 4 workers: 2 per wave
    first = deploy(tmp_path, host, settings("10M", **batches), "-y")
    assert first.returncode == 0, first.output[-3000:]
    before = timestamps(host)

    preview = deploy(tmp_path / "dry", host, settings("20M", **batches), "--dry", "--diff")
    assert preview.returncode == 0, preview.output[-3000:]
    assert f"Wave 1/3: restart {MAIN} (homeserver.yaml changed)" in preview.output
    assert f"Wave 2/3: restart {FRONTS[0]}, {FRONTS[1]} (homeserver.yaml changed)" in (
        preview.output
    )
    assert f"Wave 3/3: restart {FRONTS[2]}, {FRONTS[3]} (homeserver.yaml changed)" in (
        preview.output
    )
    assert timestamps(host) == before  # the preview changed nothing

    run = deploy(tmp_path, host, settings("20M", **batches), "-y")
    assert run.returncode == 0, run.output[-3000:]
    assert f"Wave 1/3: restart {MAIN} (homeserver.yaml changed)" in run.output  # logged too
    after = timestamps(host)
    for unit in (MAIN, *FRONTS):  # every process restarted once by this run
        assert (
            after[unit]["ActiveExitTimestampMonotonic"]
            > before[unit]["ActiveEnterTimestampMonotonic"]
        ), unit
    # Main first, alone, and active again before any worker stopped.
    main_back = after[MAIN]["ActiveEnterTimestampMonotonic"]
    assert all(down(after[u])[0] > main_back for u in FRONTS)
    # Wave 2 (front-0, front-1) was active again before wave 3 (front-2, front-3) stopped.
    wave_2_back = max(down(after[u])[1] for u in FRONTS[:2])
    assert all(down(after[u])[0] > wave_2_back for u in FRONTS[2:])
    # So at no instant were all four down: some worker was back before the last one stopped.
    assert min(down(after[u])[1] for u in FRONTS) < max(down(after[u])[0] for u in FRONTS)
    assert_no_changes(deploy(tmp_path, host, settings("20M", **batches)), host.name)


def test_a_wave_that_never_becomes_ready_stops_the_run_and_later_waves_do_not_run(
    tmp_path: Path, host: TestHost
) -> None:
    one_at_a_time = {
        "matrix_synapse_restart_batch_percent": 1,
        "matrix_synapse_readiness_timeout": 8,
    }
    first = deploy(tmp_path, host, settings("10M", **one_at_a_time), "-y")
    assert first.returncode == 0, first.output[-3000:]
    before = timestamps(host)

    # front-1 restarts in wave 3 of 5 (main, front-0, front-1, front-2, front-3) and then never
    # answers /health (the stand-in's fault, read when it starts).
    host.ssh(f"mkdir -p {STANDIN_FAULT_DIR} && echo no-health > {STANDIN_FAULT_DIR}/front-1.fault")
    failed = deploy(tmp_path, host, settings("20M", **one_at_a_time), "-y")
    assert failed.returncode != 0, failed.output[-3000:]
    assert f"restart wave 3/5 ({FRONTS[1]}) failed: not ready after 8 s" in failed.output, (
        failed.output[-3000:]
    )
    assert f"{FRONTS[1]}: GET http://" in failed.output  # why: its /health
    assert "waves 4 to 5 were not run" in failed.output
    after = timestamps(host)
    for unit in (MAIN, FRONTS[0], FRONTS[1]):  # waves 1 to 3 ran
        assert after[unit] != before[unit], unit
    for unit in FRONTS[2:]:  # waves 4 and 5 did not: still the processes from before
        assert after[unit] == before[unit], unit
    assert (
        host.ssh("test -f /var/lib/pyinfra-synapse/pending-changes.json", check=False).returncode
        == 0
    )

    # Fixed on the host, the next run converges (the journal still owes every restart) and the
    # one after changes nothing.
    host.ssh(f"rm {STANDIN_FAULT_DIR}/front-1.fault")
    fixed = deploy(tmp_path, host, settings("20M", **one_at_a_time), "-y")
    assert fixed.returncode == 0, fixed.output[-3000:]
    converged = timestamps(host)
    assert all(converged[u] != after[u] for u in FRONTS[2:])  # the owed restarts happened
    assert (
        host.ssh("test -f /var/lib/pyinfra-synapse/pending-changes.json", check=False).returncode
        != 0
    )
    assert_no_changes(deploy(tmp_path, host, settings("20M", **one_at_a_time)), host.name)


def unit_times(host: TestHost, units: list[str]) -> dict[str, dict[str, int]]:
    """unit -> its InactiveExit (start began), ActiveEnter and ActiveExit timestamps (µs)."""
    props = (
        "InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic,ActiveExitTimestampMonotonic"
    )
    out = host.ssh(f"systemctl show --property=Id,{props} {' '.join(units)}").stdout
    found = {}
    for block in out.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found[fields["Id"]] = {k: int(v) for k, v in fields.items() if k != "Id"}
    return found


def senders(count: int) -> dict[str, Any]:
    return {
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "little-federation-helper",
        "matrix_synapse_workers_federation_sender_workers_count": count,
    }


def test_a_federation_sender_change_stops_every_sender_then_starts_them(
    tmp_path: Path, host: TestHost
) -> None:
    first = deploy(tmp_path, host, senders(2), "-y")
    assert first.returncode == 0, first.output[-3000:]
    units = [f"matrix-synapse-worker@federation-sender-{i}.service" for i in range(3)]
    run = deploy(tmp_path, host, senders(3), "-y")
    assert run.returncode == 0, run.output[-3000:]
    assert f"Wave 1/2: restart {MAIN} (workers.yaml changed)" in run.output
    assert (
        f"Wave 2/2: stop then start {units[0]}, {units[1]} (federation_sender_instances changed:"
        in run.output
    )
    times = unit_times(host, [MAIN, *units])
    main_back = times[MAIN]["ActiveEnterTimestampMonotonic"]
    stopped = [times[u]["ActiveExitTimestampMonotonic"] for u in units[:2]]
    started = [times[u]["InactiveExitTimestampMonotonic"] for u in units]
    assert main_back < min(stopped)  # main first, ready
    assert max(stopped) < min(started)  # every old sender stopped before any sender started
    assert_no_changes(deploy(tmp_path, host, senders(3)), host.name)


def test_new_workers_start_in_waves_and_running_ones_are_not_restarted(
    tmp_path: Path, host: TestHost
) -> None:
    def generic(count: int) -> dict[str, Any]:
        return {**senders(0), "matrix_synapse_workers_generic_workers_count": count}

    first = deploy(tmp_path, host, generic(2), "-y")
    assert first.returncode == 0, first.output[-3000:]
    units = [f"matrix-synapse-worker@generic-{i}.service" for i in range(6)]
    before = unit_times(host, [MAIN, *units[:2]])
    run = deploy(tmp_path, host, generic(6), "-y")  # 20 % of 6: one new worker per wave
    assert run.returncode == 0, run.output[-3000:]
    for number, unit in enumerate(units[2:], 1):
        assert f"Wave {number}/4: start {unit} (new worker)" in run.output
    times = unit_times(host, [MAIN, *units])
    assert {u: times[u] for u in before} == before  # nothing running was restarted
    for earlier, later in itertools.pairwise(units[2:]):  # each ready before the next
        assert (
            times[earlier]["ActiveEnterTimestampMonotonic"]
            < times[later]["InactiveExitTimestampMonotonic"]
        )
    shrink = deploy(tmp_path, host, generic(2), "-y")
    assert shrink.returncode == 0, shrink.output[-3000:]
    states = host.ssh(f"systemctl is-active {' '.join(units)}", check=False).stdout.split()
    assert states == ["active"] * 2 + ["inactive"] * 4
    assert_no_changes(deploy(tmp_path, host, generic(2)), host.name)
