"""Verify a live host against the plan: ``pytest tests/verify --hosts=ssh://root@HOST``.

The plan comes from the same settings pyinfra uses: ``--inventory`` (default inventories/prod.py)
plus group_data/. With several inventory hosts, the one named like the first ``--hosts`` entry is
checked (run once per host).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploys.core.metrics import scrape_targets
from deploys.core.plan import WorkerPlan, build_plan
from deploys.core.render import DesiredState, desired_state, health_urls, paths_for
from deploys.core.settings import REPO_ROOT, Settings, parse_settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--inventory",
        default=str(REPO_ROOT / "inventories" / "prod.py"),
        help="pyinfra inventory whose settings the host was deployed with",
    )


@dataclass(frozen=True)
class Expected:
    settings: Settings
    plan: WorkerPlan
    state: DesiredState


def _host_data(config: pytest.Config) -> tuple[str, dict[str, Any]]:
    """The host's data merged by pyinfra itself (``debug-inventory --json``)."""
    inventory = config.getoption("inventory")
    pyinfra = Path(sys.executable).with_name("pyinfra")
    result = subprocess.run(
        [str(pyinfra), inventory, "debug-inventory", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise pytest.UsageError(f"cannot read inventory {inventory}: {result.stderr.strip()}")
    hosts = json.loads(result.stdout)
    wanted = (config.getoption("hosts") or "").split(",")[0]
    name = wanted.split("://", 1)[-1].split("@", 1)[-1].split("?", 1)[0].split(":", 1)[0]
    chosen = next((h for h in hosts if h["name"] == name), hosts[0] if len(hosts) == 1 else None)
    if chosen is None:
        raise pytest.UsageError(f"no host named {name!r} in {inventory}")
    return chosen["name"], chosen["data"]


def expected(config: pytest.Config) -> Expected:
    cached = getattr(config, "_synapse_expected", None)
    if cached is None:
        name, data = _host_data(config)
        settings = parse_settings(data)
        plan = build_plan(settings, name)
        cached = Expected(settings, plan, desired_state(settings, plan))
        config._synapse_expected = cached  # type: ignore[attr-defined]
    return cached


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    want = expected(metafunc.config)
    files = list(want.state.files.values())
    if "desired_file" in metafunc.fixturenames:
        metafunc.parametrize("desired_file", files, ids=[f.path for f in files])
    if "unit" in metafunc.fixturenames:
        units = ["matrix-synapse.target", *(p.unit for p in want.plan.processes)]
        metafunc.parametrize("unit", units)
    if "listener" in metafunc.fixturenames:
        pairs = [(p.name, x) for p in want.plan.processes for x in p.listeners]
        metafunc.parametrize(
            "listener", [x for _, x in pairs], ids=[f"{n}-{x.purpose}-{x.port}" for n, x in pairs]
        )
    if "health_url" in metafunc.fixturenames:
        urls = health_urls(want.plan)  # on an address each listener binds, as readiness probes
        metafunc.parametrize("health_url", list(urls.values()), ids=list(urls))
    if "metrics_target" in metafunc.fixturenames:
        metrics = want.settings.metrics_enabled and want.settings.metrics.file_sd_path
        targets = scrape_targets(want.plan.processes, want.settings.domain) if metrics else ()
        metafunc.parametrize("metrics_target", targets, ids=[t.labels["worker"] for t in targets])
    if "secret_path" in metafunc.fixturenames:
        secrets = list(paths_for(want.settings).secrets.values())
        metafunc.parametrize("secret_path", secrets)


@pytest.fixture
def want(request: pytest.FixtureRequest) -> Expected:
    return expected(request.config)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
