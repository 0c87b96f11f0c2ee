"""Facts that read a Synapse host: everything the deploy manages (``SynapseHostState``) and the
machine's identity (``MachineId``), one command each. Paired with
``deploys/operations/synapse.py``."""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.drift import HostState
from deploys.facts.files import file_states_script, parse_file_states
from deploys.host.journal import JOURNAL_PATH
from deploys.host.restarts import STATE_PATH
from deploys.host.units import LIST_UNITS, UNIT_GLOB, UnitState, parse_list_units


class SynapseHostState(FactBase[HostState]):
    """
    Returns, in one command whatever the number of workers: the sha256, mode, owner and size of
    each of ``paths`` and of every file matching ``globs`` (``FileStates``' rule), the mode and
    owner of the given directories, the load/active/enabled state of every ``matrix-synapse*``
    unit and of ``reloaded_units``, whether a journal of owed changes exists, and the topology
    the host last applied (for the restart planner's coupling rules). The command
    fails (and with it the run, before any change) when it cannot read the host: a file it
    cannot hash, or systemd not answering.

    + systemd_dir: directory holding the unit files (and the ``*.wants`` links)
    + paths: managed files to report (absent ones are left out)
    + globs: shell globs of more files to report: the naming of files we own, and the files of
      directories we share
    + directories: directories whose mode and owner to report
    + reloaded_units: other units whose state to report (e.g. ``nginx.service``)
    + journal_path: the journal an interrupted run leaves behind
    + state_path: the topology the host last applied (one JSON line)

    .. code:: python

        host.get_fact(SynapseHostState, systemd_dir="/etc/systemd/system",
                      paths=["/etc/matrix-synapse/homeserver.yaml"],
                      globs=["/etc/matrix-synapse/workers/*.yaml"],
                      directories=["/var/lib/matrix-synapse"])
    """

    default = HostState

    @override
    def command(
        self,
        systemd_dir: str,
        paths: Sequence[str] = (),
        globs: Sequence[str] = (),
        directories: Sequence[str] = (),
        reloaded_units: Sequence[str] = (),
        journal_path: str = JOURNAL_PATH,
        state_path: str = STATE_PATH,
    ) -> StringCommand:
        fail = "|| exit 1"
        return StringCommand(
            "if [ -f",
            QuoteString(journal_path),
            "]; then echo J; fi;",
            "if [ -f",
            QuoteString(state_path),
            "]; then printf 'T %s\\n' \"$(head -c 65536",
            QuoteString(state_path),
            ')"; fi;',  # unreadable reads as unknown: the planner is then conservative
            "for d in",
            *([QuoteString(d) for d in directories] or ["''"]),
            "; do",
            'if [ -d "$d" ]; then stat -c "D %a %U %G %n" "$d"',
            fail,
            "; fi; done;",
            *file_states_script(paths, globs),
            "find",
            QuoteString(systemd_dir),
            "-maxdepth 2",
            "-path",
            QuoteString(f"*.wants/{UNIT_GLOB}"),
            "-printf",
            QuoteString("W %f\\n"),
            fail,
            ";",
            "units=$(" + " ".join(LIST_UNITS),
            QuoteString(UNIT_GLOB),
            *[QuoteString(u) for u in reloaded_units],
            ")",
            fail,
            ";",
            "printf '%s\\n' \"$units\" | awk 'NF {print \"U \" $0}'",
        )

    @override
    def process(self, output: list[str]) -> HostState:
        state = HostState(files=parse_file_states(output))
        enabled = {line[2:] for line in output if line.startswith("W ")}
        listed = parse_list_units(line[2:] for line in output if line.startswith("U "))
        for line in output:
            if line.startswith("D "):
                _, mode, owner, group, path = line.split(" ", 4)
                state.directories[path] = (int(mode, 8), owner, group)
            elif line == "J":
                state.journal_found = True
            elif line.startswith("T "):
                state.applied_topology = line[2:]
        for unit in set(listed) | enabled:
            load, active = listed.get(unit, ("not-found", "inactive"))
            state.units[unit] = UnitState(load, active, unit in enabled)
        return state


class MachineId(FactBase[str]):
    """
    Returns the host's ``/etc/machine-id`` (empty if there is none).

    .. code:: python

        host.get_fact(MachineId)
    """

    @staticmethod
    def default() -> str:
        return ""

    @override
    def command(self) -> str:
        return "if [ -e /etc/machine-id ]; then cat /etc/machine-id; fi"

    @override
    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""
