"""Files, modes, owners and units of a deployed Synapse host, parametrised from the plan."""

from __future__ import annotations

from tests.verify.conftest import Expected, sha256


def test_file_is_as_planned(host, desired_file) -> None:
    remote = host.file(desired_file.path)
    assert remote.is_file
    assert remote.mode == desired_file.mode
    assert (remote.user, remote.group) == (desired_file.owner, desired_file.group)
    assert remote.sha256sum == sha256(desired_file.content)


def test_unit_is_enabled_and_active(host, unit: str) -> None:
    service = host.service(unit)
    assert service.is_enabled
    assert service.is_running


def test_secret_is_private_and_not_empty(host, secret_path: str, want: Expected) -> None:
    secret = host.file(secret_path)
    assert secret.is_file and secret.size > 0
    assert secret.mode == 0o600
    assert secret.user == want.settings.user


def test_no_unplanned_worker_is_enabled(host, want: Expected) -> None:
    wants = host.run("ls /etc/systemd/system/matrix-synapse.target.wants/").stdout.split()
    planned = {p.unit for p in want.plan.workers} | {"matrix-synapse.service"}
    assert set(wants) == planned
