"""Deploy the real entry script (deploys/synapse.py) to test hosts through the pyinfra CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploys.settings import REPO_ROOT
from tests.support.testhost import TestHost

STANDIN = Path(__file__).with_name("standin_synapse.py")
VENV = "/opt/venvs/matrix-synapse"


@dataclass
class Run:
    returncode: int
    output: str
    commands: dict[str, int]
    uploads: dict[str, int]
    command_lines: dict[str, list[str]]


def install_standin(host: TestHost, user: str = "root") -> None:
    """Put the sd_notify stand-in where the units expect Synapse's python."""
    sudo = "" if user == "root" else "sudo -n "
    host.ssh(f"{sudo}mkdir -p {VENV}/bin && {sudo}tee {VENV}/bin/python >/dev/null && "
             f"{sudo}chmod 755 {VENV}/bin/python", user=user, input=STANDIN.read_text())


# With the stand-in there is nothing to install and no /health or Redis to wait for.
STANDIN_SETTINGS = {"matrix_synapse_install_enabled": False, "matrix_synapse_readiness_timeout": 0,
                    "matrix_synapse_config_check": False, "matrix_synapse_nginx_enabled": False}


def write_inventory(path: Path, hosts: list[tuple[TestHost, dict[str, Any]]],
                    user: str = "root", standin: bool = True) -> Path:
    entries = []
    for host, data in hosts:
        name, connection = host.inventory_entry(user=user)
        base = {"matrix_domain": "example.org", **(STANDIN_SETTINGS if standin else {})}
        entries.append((name, {**connection, **base, **data}))
    path.write_text(f"hosts = {entries!r}\n")
    return path


def pyinfra(tmp_path: Path, inventory: Path, *args: str, timeout: float = 600) -> Run:
    """Run ``pyinfra INVENTORY deploys/synapse.py ARGS`` from the repo root, counting commands."""
    counts = tmp_path / f"counts-{len(list(tmp_path.glob('counts-*')))}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.pyinfra_counted", str(counts), "--",
         str(inventory), "deploys/synapse.py", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, input="\n",
    )  # fmt: skip
    data = json.loads(counts.read_text()) if counts.exists() else {}
    return Run(proc.returncode, proc.stdout + proc.stderr, data.get("commands", {}),
               data.get("uploads", {}), data.get("command_lines", {}))  # fmt: skip


def host_snapshot(host: TestHost) -> str:
    """Every managed file's checksum, mode and owner, plus every unit's state and main PID."""
    return host.ssh(
        "find /etc/matrix-synapse /etc/systemd/system -path '*matrix-synapse*' "
        "-printf '%p %m %u %g %l\\n' | sort; "
        "find /etc/matrix-synapse -type f -exec sha256sum {} + | sort; "
        "systemctl show --property=Id,ActiveState,MainPID 'matrix-synapse*'"
    ).stdout


def main_pids(host: TestHost) -> dict[str, int]:
    out = host.ssh("systemctl show --property=Id,MainPID 'matrix-synapse*'").stdout
    pids: dict[str, int] = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "MainPID" in props:  # targets have none
            pids[props["Id"]] = int(props["MainPID"])
    return pids
