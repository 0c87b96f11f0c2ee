"""Deploy tests/batch/demo_deploy.py (the generic ``files.batch`` operation, no Synapse) to a test
host through the pyinfra CLI, counting SSH commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.deploying import Run, pyinfra
from tests.support.testhost import TestHost

DEMO_DEPLOY = "tests/batch/demo_deploy.py"
HOOK_LOG = "/var/tmp/demo-changed"


def deploy_demo(tmp_path: Path, host: TestHost, *args: str, **data: Any) -> Run:
    name, connection = host.inventory_entry()
    inventory = tmp_path / "demo_inventory.py"
    inventory.write_text(f"hosts = {[(name, {**connection, **data})]!r}\n")
    return pyinfra(tmp_path, inventory, *args, deploy=DEMO_DEPLOY)


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
