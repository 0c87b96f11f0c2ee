"""Talk to systemd on the host: read unit states, run the planned actions, report failures.
Standard library only. What to do, and in which waves, is decided by ``restarts.plan_restarts``
(pure)."""

from __future__ import annotations

import glob
import os
import subprocess

from . import units
from .batch import ApplyError


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ApplyError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def list_units(patterns: list[str]) -> dict[str, tuple[str, str]]:
    """(load, active) state by unit; ``patterns`` must not be empty (that lists all)."""
    return units.parse_list_units(run([*units.LIST_UNITS, *patterns]).stdout.splitlines())


def unit_states(
    systemd_dir: str, planned: list[str], reloaded: list[str]
) -> dict[str, units.UnitState]:
    """State of every matrix-synapse* unit loaded or enabled, of every planned one, and of the
    ``reloaded`` units (those reloaded on a config change, e.g. nginx)."""
    enabled = {os.path.basename(p) for p in glob.glob(f"{systemd_dir}/*.wants/{units.UNIT_GLOB}")}
    listed = list_units([units.UNIT_GLOB, *reloaded])
    names = enabled | set(listed) | {units.MAIN_UNIT, units.TARGET_UNIT} | set(reloaded)
    names |= {units.worker_unit(n) for n in planned}
    # A unit list-units does not show is not loaded: UnitState's defaults say so.
    return {
        unit: units.UnitState(*listed.get(unit, ("not-found", "inactive")), unit in enabled)
        for unit in names
    }


def run_commands(commands: list[list[str]], systemd_dir: str) -> None:
    """Run planned ``systemctl`` commands in order; the first that fails raises ApplyError with
    the state and journal tail of each unit it named that is not active."""
    for command in commands:
        if command[1] == "disable":
            # Remove the wants links directly: disabling works even when the unit is not-found.
            for unit in command[3:]:
                for link in glob.glob(f"{systemd_dir}/*.wants/{glob.escape(unit)}"):
                    os.unlink(link)
            continue
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            failed = [u for u in command[2:] if u.endswith((".service", ".target"))]
            raise ApplyError(
                f"{' '.join(command[:2])} failed: {result.stderr.strip()}\n"
                + failure_report(failed)
            )


def parse_show(output: str) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for block in output.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            found[props["Id"]] = props
    return found


def failure_report(unit_names: list[str], every: bool = False) -> str:
    """Each unit that is not active (with ``every``: each unit), with the tail of its journal.
    Never raises: it runs on the error path, where it must not hide the original error."""
    if not unit_names:
        return ""
    lines = []
    try:
        states = parse_show(
            run(["systemctl", "show", "--property=Id,ActiveState", *unit_names]).stdout
        )
    except (ApplyError, OSError) as error:
        lines.append(f"--- the state of {', '.join(unit_names)} could not be read: {error}")
        states = {}
    for unit in unit_names:
        state = states.get(unit, {}).get("ActiveState", "unknown")
        if state == "active" and not every:
            continue
        try:
            tail = run(["journalctl", "--no-pager", "-n", "15", "-u", unit]).stdout.strip()
        except (ApplyError, OSError) as error:
            tail = f"(the journal could not be read: {error})"
        lines.append(f"--- {unit} is {state}; journal tail:\n{tail}")
    return "\n".join(lines)
