"""Deploy tests/batch/demo_deploy.py (the generic ``files.batch`` operation, no Synapse) to a test
host through the pyinfra CLI, counting SSH commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploys.core.settings import REPO_ROOT
from tests.support.deploying import Run
from tests.support.testhost import TestHost

DEMO_DEPLOY = "tests/batch/demo_deploy.py"
HOOK_LOG = "/var/tmp/demo-changed"


def deploy_demo(tmp_path: Path, host: TestHost, *args: str, **data: Any) -> Run:
    name, connection = host.inventory_entry()
    inventory = tmp_path / "demo_inventory.py"
    inventory.write_text(f"hosts = {[(name, {**connection, **data})]!r}\n")
    counts = tmp_path / f"counts-{len(list(tmp_path.glob('counts-*')))}.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.pyinfra_counted",
            str(counts),
            "--",
            str(inventory),
            DEMO_DEPLOY,
            *args,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        input="\n",
    )
    data_ = json.loads(counts.read_text()) if counts.exists() else {}
    return Run(
        proc.returncode,
        proc.stdout + proc.stderr,
        data_.get("commands", {}),
        data_.get("uploads", {}),
        data_.get("command_lines", {}),
    )


def batch_applies(run: Run, host: TestHost) -> list[str]:
    return [c for c in run.command_lines.get(host.name, []) if "host.batch" in c]


def hook_runs(host: TestHost) -> list[list[str]]:
    """The changed paths the hook received, one list per run."""
    out = host.ssh(f"cat {HOOK_LOG} 2>/dev/null || true").stdout
    runs: list[list[str]] = []
    for line in out.splitlines():
        if line == "--":
            runs.append([])
        elif line:
            runs[-1].append(line)
    return runs


def inodes(host: TestHost, directory: str = "/etc/demo") -> dict[str, str]:
    """path -> 'inode sha256' of every file under ``directory``."""
    out = host.ssh(
        f"find {directory} -type f -printf '%p %i\\n' | sort; "
        f"find {directory} -type f -exec sha256sum {{}} + | sort -k2"
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        first, rest = line.split(" ", 1)
        if first.startswith("/"):
            found[first] = rest
        else:
            found[rest.strip()] += " " + first
    return found
