"""The host fact and the diff preview on a real host: errors fail the run before any change
(issue 9, bug 7), and a secret given through the pass-through never reaches the output (bug 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.deploying import (
    apply_commands,
    assert_no_changes,
    install_standin,
    pyinfra,
    write_inventory,
)
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

WORKERS = {"matrix_synapse_workers_enabled": True}


def test_a_fact_that_cannot_read_the_host_fails_the_run_before_any_change(
    tmp_path: Path, testhost: TestHost
) -> None:
    install_standin(testhost)
    root = write_inventory(tmp_path / "root.py", [(testhost, WORKERS)])
    assert pyinfra(tmp_path, root, "-y").returncode == 0
    before = testhost.ssh("find /etc/matrix-synapse -type f -exec sha256sum {} + | sort").stdout

    # The deploy user without sudo cannot read the secrets directory (0700): a real read error.
    # Before the fix the fact swallowed it (`2>/dev/null; true`) and the run went on to apply.
    unprivileged = write_inventory(tmp_path / "user.py", [(testhost, WORKERS)], user="deploy")
    run = pyinfra(tmp_path, unprivileged, "-y")
    assert run.returncode != 0
    assert "Permission denied" in run.output
    assert "could not load fact" in run.output
    assert apply_commands(run, testhost.name) == []
    after = testhost.ssh("find /etc/matrix-synapse -type f -exec sha256sum {} + | sort").stdout
    assert after == before


def test_a_pass_through_secret_never_appears_in_a_diff(tmp_path: Path, testhost: TestHost) -> None:
    install_standin(testhost)
    secret = "hunter2-do-not-print"
    email = {"matrix_synapse_configuration_extension": {"email": {"smtp_pass": secret}}}
    inventory = write_inventory(tmp_path / "inventory.py", [(testhost, WORKERS)])
    assert pyinfra(tmp_path, inventory, "-y").returncode == 0

    inventory = write_inventory(tmp_path / "inventory.py", [(testhost, {**WORKERS, **email})])
    preview = pyinfra(tmp_path, inventory, "--dry", "--diff", "-vvv")
    assert preview.returncode == 0, preview.output
    assert "Will modify" in preview.output and "smtp_pass" in preview.output
    assert secret not in preview.output
    run = pyinfra(tmp_path, inventory, "--diff", "-vvv")
    assert run.returncode == 0, run.output
    assert "smtp_pass" in run.output and secret not in run.output
    assert secret in testhost.ssh("cat /etc/matrix-synapse/homeserver.yaml").stdout
    assert_no_changes(pyinfra(tmp_path, inventory), testhost.name)
