"""A log-level change on a real Synapse cluster reloads every process in place: Synapse re-reads
its log config on SIGHUP (``systemctl reload``), so no process restarts and the new level is in
effect at once (PostgreSQL, Redis and nginx as in tests/e2e/test_synapse_cluster.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import assert_no_changes, main_pids, pyinfra, write_inventory
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

LOG_CONFIG = "/etc/matrix-synapse/log.yaml"
RELOADED = f"Reloaded log config from {LOG_CONFIG} due to SIGHUP"
DEBUG_LINE = " - DEBUG - "  # the level field of templates/synapse/log.yaml.j2's format


def settings(level: str) -> dict[str, Any]:
    return {
        **E2E_SETTINGS,
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "one-of-each",
        "matrix_synapse_log_level": level,
    }


def journal(host: TestHost, unit: str) -> str:
    return host.ssh(f"journalctl --no-pager -o cat -u {unit}").stdout


def processes(host: TestHost) -> dict[str, int]:
    return {u: pid for u, pid in main_pids(host).items() if u.endswith(".service")}


def test_a_log_level_change_reloads_every_real_synapse_process_in_place(
    tmp_path: Path, testhost_factory: Any
) -> None:
    (host,) = testhost_factory(1, tree=ensure_synapse_tree())
    inventory = tmp_path / "inventory.py"
    write_inventory(inventory, [(host, settings("INFO"))], standin=False)
    first = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert first.returncode == 0, first.output[-6000:]
    before = processes(host)
    assert len(before) == 1 + 16 and all(before.values()), before
    for unit in before:
        assert DEBUG_LINE not in journal(host, unit), unit

    write_inventory(inventory, [(host, settings("DEBUG"))], standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    assert processes(host) == before  # not one process restarted
    assert "DEBUG" in host.ssh(f"grep 'level:' {LOG_CONFIG}").stdout
    # Synapse handles the SIGHUP on its next reactor tick: poll briefly for every process.
    host.ssh(
        "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8088/_matrix/client/versions')\""
    )
    deadline = time.monotonic() + 60
    while True:
        logs = {unit: journal(host, unit) for unit in before}
        missing = sorted(u for u, text in logs.items() if RELOADED not in text)
        quiet = sorted(u for u, text in logs.items() if DEBUG_LINE not in text)
        if (not missing and not quiet) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert missing == [], missing  # each process re-read the file...
    assert quiet == [], quiet  # ...and logs at the new level
    assert processes(host) == before

    assert_no_changes(pyinfra(tmp_path, inventory), host.name, commands=None)
