"""``max_connections``: generous, stable, raised only when the run's workers would not fit (or
while no Synapse process runs), never lowered; the preview says when PostgreSQL restarts and why
(deploys/core/postgres.py, deploys/operations/postgres.py, deploys/facts/postgres.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploys.core.plan import build_plan
from deploys.core.postgres import RESERVED, ConnectionRule, connection_rule, setup_sql
from deploys.core.settings import SettingsError, parse_settings
from deploys.facts.postgres import Database, PostgresDatabase
from deploys.host.units import MAIN_UNIT, worker_unit
from deploys.operations.postgres import postgres_database
from tests.support.deploying import front_workers
from tests.support.pyinfra_fake import run_operation
from tests.support.settings_data import make_data

PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres"
RESTART = "systemctl restart postgresql"


def rule(workers: int, **settings: object) -> ConnectionRule:
    data = make_data(**front_workers(workers), **settings)  # type: ignore[arg-type]
    parsed = parse_settings(data)
    return connection_rule(parsed, build_plan(parsed, "h"))


def running(workers: int) -> tuple[str, ...]:
    return (MAIN_UNIT, *(worker_unit(f"front-{i}") for i in range(workers)))


def test_what_a_run_needs_is_every_pool_one_startup_connection_each_and_the_reserve() -> None:
    # Defaults: main pool 10, worker pools 3; each process opens one more at start.
    assert rule(16).needed(16) == 10 + 16 * 3 + 17 + RESERVED == 95
    assert rule(16, matrix_synapse_database_workers_cp_max=5).needed(16) == 10 + 80 + 17 + 20


def test_scaling_16_to_24_and_back_keeps_max_connections() -> None:
    first = rule(16).size(100, ())  # PostgreSQL's default, nothing running: sized generously
    assert first.restart and first.value == 300  # 16 + 32 spare need 223: rounded up to 300
    up = rule(24).size(first.value, running(16))  # 16 run while 8 start: 24 at once
    assert (up.workers, up.value, up.restart) == (24, 300, False)
    down = rule(16).size(up.value, running(24))  # 24 run until the 8 stale ones stop
    assert (down.workers, down.value, down.restart) == (24, 300, False)
    again = rule(16).size(down.value, running(16))
    assert (again.value, again.restart) == (300, False)


def test_far_beyond_the_spare_raises_it_and_says_why() -> None:
    sizing = rule(150).size(300, running(16))
    assert sizing.workers == 150 and sizing.needed == 10 + 450 + 151 + 20 == 631
    assert sizing.restart and sizing.value == 800  # 150 + 32 spare need 759
    assert sizing.reason() == (
        "max_connections 300 -> 800: 150 workers need 631 connections; "
        "PostgreSQL restarts, every Synapse process reconnects"
    )


def test_it_is_never_lowered() -> None:
    shrunk = rule(1).size(800, running(150))  # 150 still run until the stale ones stop
    assert (shrunk.value, shrunk.restart) == (800, False)
    later = rule(1).size(800, running(1))
    assert (later.value, later.restart) == (800, False)
    idle = rule(1).size(800, ())  # even with nothing running: never down
    assert (idle.value, idle.restart) == (800, False)
    tuned = rule(16).size(5000, running(16))  # an operator's own larger value stays
    assert not tuned.restart


def test_a_value_that_fits_is_kept_while_synapse_runs_and_raised_while_nothing_does() -> None:
    fits = rule(16).size(100, running(16))  # an older deploy's 100 still fits 95
    assert (fits.value, fits.restart) == (100, False)
    idle = rule(16).size(100, ())
    assert (idle.value, idle.restart) == (300, True)
    assert idle.reason() == (
        "max_connections 100 -> 300: room for 16 workers and 32 spare "
        "(matrix_synapse_database_spare_workers); PostgreSQL restarts (no Synapse process runs)"
    )


def test_old_and_new_workers_running_at_once_are_all_counted() -> None:
    # A plan that replaces every worker: the old ones may still run while the new ones start.
    renamed = {f"other-{i}" for i in range(100)}
    sizing = rule(100).size(500, (MAIN_UNIT, *map(worker_unit, sorted(renamed))))
    assert sizing.workers == 200 and sizing.needed == 10 + 600 + 201 + 20
    assert sizing.restart and sizing.value >= sizing.needed


def test_the_spare_is_a_setting() -> None:
    assert rule(16, matrix_synapse_database_spare_workers=0).size(None, ()).value == 100
    assert rule(16, matrix_synapse_database_spare_workers=200).size(None, ()).value == 900
    with pytest.raises(SettingsError, match="matrix_synapse_database_spare_workers"):
        rule(16, matrix_synapse_database_spare_workers=-1)


def test_the_setup_sql_never_sets_max_connections_itself() -> None:
    parsed = parse_settings(make_data(matrix_synapse_database_password="pw"))
    assert "max_connections" not in setup_sql(parsed)


# --- the operation ------------------------------------------------------------------------------


def operate(max_connections: int, units: tuple[str, ...], workers: int):
    from tests.unit.test_operations import scram_verifier

    current = Database(scram_verifier("pw"), ("C", "C"), max_connections, units)
    return run_operation(
        postgres_database,
        {PostgresDatabase: current},
        user="synapse",
        dbname="synapse",
        password="pw",
        connections=rule(workers),
        sql="SQL;\n",
    )


def test_scaling_within_the_spare_is_a_noop() -> None:
    outcome = operate(300, running(16), workers=24)
    assert outcome.shell == [] and outcome.host.noops and outcome.host.logs == []


def test_a_raise_sets_it_restarts_postgresql_and_says_so() -> None:
    outcome = operate(300, running(16), workers=150)
    assert outcome.shell == [PSQL, RESTART]
    assert outcome.stdin[0] == "SQL;\nALTER SYSTEM SET max_connections = 800;\n"
    assert outcome.host.logs == [
        "max_connections 300 -> 800: 150 workers need 631 connections; "
        "PostgreSQL restarts, every Synapse process reconnects"
    ]


# --- the fact's command, run by sh ----------------------------------------------------------------


def fact_output(tmp_path: Path, systemctl: str) -> subprocess.CompletedProcess[str]:
    """The fact's command in sh with a fake systemctl and no psql (PostgreSQL not installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\n{systemctl}\n")
    (bin_dir / "systemctl").chmod(0o755)
    (bin_dir / "sed").symlink_to("/usr/bin/sed")
    command = PostgresDatabase().command(user="synapse", dbname="synapse").get_raw_value()
    env = {**os.environ, "PATH": str(bin_dir)}
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env)


def test_the_fact_lists_running_synapse_units_and_fails_if_systemd_does_not_answer(
    tmp_path: Path,
) -> None:
    listed = fact_output(
        tmp_path,
        'echo "$*" >&2; echo "matrix-synapse.service loaded active running Synapse"; '
        'echo "matrix-synapse-worker@a.service loaded activating start Synapse worker a"',
    )
    assert listed.returncode == 0, listed.stderr
    assert "--state=active,activating,reloading,deactivating" in listed.stderr
    assert "matrix-synapse.service matrix-synapse-worker@*.service" in listed.stderr
    value = PostgresDatabase().process(listed.stdout.splitlines())
    assert value.synapse_units == ("matrix-synapse.service", "matrix-synapse-worker@a.service")
    assert value.max_connections is None
    (tmp_path / "down").mkdir()
    assert fact_output(tmp_path / "down", "exit 1").returncode != 0
