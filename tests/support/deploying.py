"""Deploy the real entry script (deploys/synapse.py) to test hosts through the pyinfra CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploys.core.settings import REPO_ROOT
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


# What the units run as Synapse's python: the stand-in, imported from its byte-compiled copy.
# Compiling the module from source in every process would cost ~1.8 MB each (measured).
STANDIN_LAUNCHER = """#!/usr/bin/python3 -S
import sys

import standin_synapse  # next to this file (sys.path[0]), from __pycache__

sys.exit(standin_synapse.main(sys.argv[1:]))
"""


def install_standin(host: TestHost, user: str = "root") -> None:
    """Put the stand-in where the units expect Synapse's python (see standin_synapse.py)."""
    sudo = "" if user == "root" else "sudo -n "
    module = f"{VENV}/bin/standin_synapse.py"
    host.ssh(
        f"{sudo}mkdir -p {VENV}/bin && {sudo}tee {module} >/dev/null && "
        f"{sudo}python3 -m py_compile {module}",
        user=user,
        input=STANDIN.read_text(),
    )
    # A real venv's bin/python is a symlink to the system python3: replace the link, never
    # write through it.
    host.ssh(
        f"{sudo}rm -f {VENV}/bin/python && {sudo}tee {VENV}/bin/python >/dev/null && "
        f"{sudo}chmod 755 {VENV}/bin/python",
        user=user,
        input=STANDIN_LAUNCHER,
    )


# The stand-in is not a Synapse install, and only the real Synapse can check its configs (the
# e2e tests do); nginx routing and readiness (/health, Redis) run with their defaults.
STANDIN_SETTINGS = {"matrix_synapse_install_enabled": False, "matrix_synapse_config_check": False}


def front_workers(count: int, *, ports: dict[int, int] | None = None) -> dict[str, Any]:
    """Host data for ``count`` generic workers ``front-<i>`` from an enabled list, worker i on
    port 15000 + i unless ``ports`` moves it (a change to that worker's own file only)."""
    entries = [
        {
            "name": f"front-{i}",
            "type": "generic_worker",
            "port": (ports or {}).get(i, 15000 + i),
            "metrics_port": 25000 + i,
        }
        for i in range(count)
    ]
    return {"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_enabled_list": entries}


def write_inventory(
    path: Path,
    hosts: list[tuple[TestHost, dict[str, Any]]],
    user: str = "root",
    standin: bool = True,
) -> Path:
    entries = []
    for host, data in hosts:
        name, connection = host.inventory_entry(user=user)
        base = {"matrix_domain": "example.org", **(STANDIN_SETTINGS if standin else {})}
        entries.append((name, {**connection, **base, **data}))
    path.write_text(f"hosts = {entries!r}\n")
    return path


def counted_pyinfra(counts: Path, inventory: Path, deploy: str, *args: str) -> list[str]:
    """The command line of ``pyinfra INVENTORY DEPLOY ARGS`` with every SSH command counted into
    ``counts`` (tests/support/pyinfra_counted.py); run it from the repository root."""
    command = [sys.executable, "-m", "tests.support.pyinfra_counted", str(counts), "--"]
    return [*command, str(inventory), deploy, *args]


def pyinfra(
    tmp_path: Path,
    inventory: Path,
    *args: str,
    deploy: str = "deploys/synapse.py",
    timeout: float = 600,
) -> Run:
    """Run ``pyinfra INVENTORY DEPLOY ARGS`` from the repo root, counting commands."""
    counts = tmp_path / f"counts-{len(list(tmp_path.glob('counts-*')))}.json"
    proc = subprocess.run(
        counted_pyinfra(counts, inventory, deploy, *args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input="\n",
    )
    data = json.loads(counts.read_text()) if counts.exists() else {}
    return Run(
        proc.returncode,
        proc.stdout + proc.stderr,
        data.get("commands", {}),
        data.get("uploads", {}),
        data.get("command_lines", {}),
    )


# Only the apply command runs one of these: a run that sent none changed nothing on the host.
APPLY_MARKERS = ("host.apply", "base64 -d")


def apply_commands(run: Run, host_name: str) -> list[str]:
    """The apply commands (archive in, the host program) that `run` sent to the host."""
    lines = run.command_lines.get(host_name, [])
    return [line for line in lines if any(marker in line for marker in APPLY_MARKERS)]


def pyinfra_table(run: Run, title: str, columns: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """A table pyinfra printed under ``--> TITLE:``: operation (and "Grand total") -> its cells
    under the given column headers, cut at the headers' positions ("-" for none; a cell may hold
    spaces, e.g. "1 (host)")."""
    marker = f"--> {title}:"
    assert marker in run.output, run.output[-3000:]
    header, *lines = run.output.split(marker, 1)[1].splitlines()[1:]
    starts = [header.index(column) for column in columns]
    rows: dict[str, tuple[str, ...]] = {}
    for line in lines:
        if not line.strip():
            break
        cuts = [*starts, len(line)]
        cells = tuple(line[cuts[i] : cuts[i + 1]].strip() for i in range(len(columns)))
        rows[line[: starts[0]].strip()] = cells
    assert rows, run.output[-3000:]
    return rows


def assert_no_changes(run: Run, host_name: str, commands: int | None = 3) -> None:
    """A run that found nothing to do: no change for any operation on any host, no apply
    command, and exactly `commands` SSH commands (a normal run: the machine-id and the fact in
    each of pyinfra's two passes; ``--dry``: one pass; None: not counted, e.g. when the install
    and PostgreSQL components read their facts too)."""
    assert run.returncode == 0, run.output[-3000:]
    if "--> Results:" in run.output:  # a run that executed
        table = pyinfra_table(run, "Results", ("Hosts", "Success", "Error", "No Change"))
        for operation, (hosts, *cells) in table.items():
            assert cells == ["-", "-", hosts], (operation, run.output[-3000:])
        assert f"[{host_name}] No changes" in run.output
        assert f"[{host_name}] Success" not in run.output, run.output[-3000:]
    else:  # --dry: only the detected changes
        table = pyinfra_table(run, "Detected changes", ("Change", "Conditional Change"))
        for operation, cells in table.items():
            assert cells == ("-", "-"), (operation, cells, run.output[-3000:])
    assert run.command_lines.get(host_name), "no command was counted: the counter is broken"
    assert apply_commands(run, host_name) == [], run.command_lines
    if commands is not None:
        assert run.commands[host_name] == commands, run.command_lines[host_name]
    assert run.uploads.get(host_name, 0) == 0


def host_snapshot(host: TestHost) -> str:
    """Every managed file's checksum, mode and owner (the nginx routing file too), plus every
    unit's state and main PID."""
    return host.ssh(
        "find /etc/matrix-synapse /etc/systemd/system -path '*matrix-synapse*' "
        "-printf '%p %m %u %g %l\\n' | sort; "
        "find /etc/nginx/conf.d -printf '%p %m %u %g %l\\n' | sort; "
        "find /etc/matrix-synapse /etc/nginx/conf.d -type f -exec sha256sum {} + | sort; "
        "systemctl show --property=Id,ActiveState,MainPID 'matrix-synapse*' nginx.service"
    ).stdout


def main_pids(host: TestHost) -> dict[str, int]:
    out = host.ssh("systemctl show --property=Id,MainPID 'matrix-synapse*'").stdout
    pids: dict[str, int] = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "MainPID" in props:  # targets have none
            pids[props["Id"]] = int(props["MainPID"])
    return pids
