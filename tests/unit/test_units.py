"""The rendered systemd units pass ``systemd-analyze verify`` under a fake root with no warnings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.settings import parse_settings
from tests.support.settings_data import make_data

SYSTEMD_UNITS = Path("/usr/lib/systemd/system")


def fake_root(tmp_path: Path, **overrides: object) -> tuple[Path, list[str]]:
    """A root holding the rendered units, stand-in executables and systemd's own units."""
    settings = parse_settings(make_data(matrix_synapse_workers_enabled=True, **overrides))
    plan = build_plan(settings, "host-a")
    root = tmp_path / "root"
    shutil.copytree(SYSTEMD_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for exe in (f"{settings.install.venv_path}/bin/python", "/bin/kill"):
        path = root / exe.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    for path, desired in desired_state(settings, plan).files.items():
        if desired.unit_file:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(desired.content)
    units = ["matrix-synapse.target", plan.main.unit, *(w.unit for w in plan.workers)]
    return root, units


def verify(root: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(autouse=True)
def _needs_systemd_analyze() -> None:
    assert shutil.which("systemd-analyze"), "install the systemd package (make deps does)"


def test_units_verify_cleanly(tmp_path: Path) -> None:
    root, units = fake_root(
        tmp_path,
        matrix_synapse_systemd_resource_limits={"MemoryMax": "4G"},
        matrix_synapse_workers_systemd_resource_limits={
            "generic": {"MemoryMax": "1G", "CPUQuota": "50%", "TasksMax": 512},
            "stream_writer": {"MemoryHigh": "800M"},
        },
    )
    result = verify(root, units)
    assert (result.returncode, result.stderr) == (0, "")
    dropin = root / "etc/systemd/system/matrix-synapse-worker@generic-0.service.d"
    assert (dropin / "50-pyinfra-synapse-limits.conf").read_text().count("=") == 3


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd directive is reported on stderr."""
    root, units = fake_root(tmp_path)
    template = root / "etc/systemd/system/matrix-synapse-worker@.service"
    template.write_text(template.read_text().replace("RestartSec=", "RestartSecc="))
    result = verify(root, units)
    assert "Unknown key 'RestartSecc'" in result.stderr


def test_worker_units_are_one_template_with_instances(tmp_path: Path) -> None:
    root, units = fake_root(tmp_path)
    unit_files = sorted(p.name for p in (root / "etc/systemd/system").iterdir())
    assert unit_files == [
        "matrix-synapse-worker@.service",
        "matrix-synapse.service",
        "matrix-synapse.target",
    ]
    text = (root / "etc/systemd/system/matrix-synapse-worker@.service").read_text()
    assert "Type=notify" in text and "%i.yaml" in text and "PartOf=matrix-synapse.target" in text
    assert "Type=notify" in (root / "etc/systemd/system/matrix-synapse.service").read_text()
    assert len(units) == 2 + 16
