"""Facts that read everything pyinfra-synapse manages on a host in one remote command each."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.drift import HostState, RemoteFile
from deploys.host.units import UnitState

_SHA_LINE = re.compile(r"^([0-9a-f]{64})  (/.*)$")
CONTENT_MARKER = "@@pyinfra-synapse-file@@"
# Written by deploys/host/apply.py before a run changes files, removed once services are ready.
PENDING_PATH = "/var/lib/pyinfra-synapse/pending-changes.json"


class SynapseHostState(FactBase[HostState]):
    """
    Returns the sha256, mode and owner of every file under the Synapse config directory, of
    every ``matrix-synapse*`` unit file and drop-in and of each of ``paths`` (managed files that
    live elsewhere, such as the nginx routing file), the mode and owner of the given directories,
    and the load/active/enabled state of every ``matrix-synapse*`` unit, in one command whatever
    the number of workers. The command fails (and with it the run, before any change) when it
    cannot read the host: a file it cannot hash, or systemd not answering.

    + config_dir: Synapse's configuration directory
    + systemd_dir: directory holding the unit files
    + directories: directories whose mode and owner to report
    + paths: other managed files to report (absent ones are left out)
    + extra_units: other units whose state to report (e.g. ``nginx.service``)
    + pending_path: the journal an unfinished run leaves behind

    .. code:: python

        host.get_fact(SynapseHostState, config_dir="/etc/matrix-synapse",
                      systemd_dir="/etc/systemd/system", directories=["/var/lib/matrix-synapse"],
                      paths=["/etc/nginx/conf.d/matrix-synapse-workers.conf"])
    """

    default = HostState

    @override
    def command(
        self,
        config_dir: str,
        systemd_dir: str,
        directories: Sequence[str] = (),
        paths: Sequence[str] = (),
        extra_units: Sequence[str] = (),
        pending_path: str = PENDING_PATH,
    ) -> StringCommand:
        def words(items: Sequence[str]) -> list[QuoteString | str]:
            return [QuoteString(item) for item in items] or ["''"]

        ours = f"{systemd_dir.rstrip('/')}/matrix-synapse*"
        fail = "|| exit 1"
        return StringCommand(
            "if [ -f",
            QuoteString(pending_path),
            "]; then echo P; fi;",
            "for d in",
            *words(directories),
            "; do",
            'if [ -d "$d" ]; then stat -c "D %a %U %G %n" "$d"',
            fail,
            "; fi; done;",
            # Roots that exist (the config dir does not before the first deploy).
            "set --; for r in",
            QuoteString(config_dir),
            QuoteString(systemd_dir),
            "; do",
            'if [ -d "$r" ]; then set -- "$@" "$r"; fi; done;',
            'if [ $# -gt 0 ]; then find "$@" -maxdepth 3',
            "\\(",
            "-path",
            QuoteString(config_dir + "/*"),
            "-o",
            "-path",
            QuoteString(ours),
            "\\)",
            "-type f",
            "-printf",
            QuoteString("F %m %u %g %p\\n"),
            "-exec sha256sum {} +",
            fail,
            "; fi;",
            "for f in",
            *words(paths),
            "; do",
            'if [ -f "$f" ]; then stat -c "F %a %U %G %n" "$f" && sha256sum "$f"',
            fail,
            "; fi; done;",
            "find",
            QuoteString(systemd_dir),
            "-maxdepth 2",
            "-path",
            QuoteString("*.wants/matrix-synapse*"),
            "-printf",
            QuoteString("W %f\\n"),
            fail,
            ";",
            # list-units, not show: show asks systemd unit by unit (seconds at 1,000 workers).
            "units=$(systemctl list-units --all --plain --no-legend --full",
            QuoteString("matrix-synapse*"),
            *[QuoteString(u) for u in extra_units],
            ")",
            fail,
            ";",
            "printf '%s\\n' \"$units\" | awk 'NF {print \"U \" $1, $2, $3}'",
        )

    @override
    def process(self, output: list[str]) -> HostState:
        state = HostState()
        metadata: dict[str, tuple[int, str, str]] = {}
        digests: dict[str, str] = {}
        enabled: set[str] = set()
        units_seen: dict[str, tuple[str, str]] = {}
        for line in output:
            if line.startswith("F "):
                _, mode, owner, group, path = line.split(" ", 4)
                metadata[path] = (int(mode, 8), owner, group)
            elif line.startswith("D "):
                _, mode, owner, group, path = line.split(" ", 4)
                state.directories[path] = (int(mode, 8), owner, group)
            elif line == "P":
                state.pending = True
            elif line.startswith("W "):
                enabled.add(line[2:])
            elif line.startswith("U "):
                unit, load, active = [*line[2:].split(), "", ""][:3]
                units_seen[unit] = (load, active)
            elif match := _SHA_LINE.match(line):
                digests[match.group(2)] = match.group(1)
        for path, (mode, owner, group) in metadata.items():
            state.files[path] = RemoteFile(mode, owner, group, digests.get(path))
        for unit, (load, active) in units_seen.items():
            state.units[unit] = UnitState(load, active, unit in enabled)
        for unit in enabled - set(state.units):
            state.units[unit] = UnitState(enabled=True)
        return state


class FileLines(FactBase[dict[str, list[str]]]):
    """
    Returns the lines of several files, read in one command (for diffs). Missing files are absent.

    + paths: files to read

    .. code:: python

        host.get_fact(FileLines, paths=["/etc/matrix-synapse/homeserver.yaml"])
    """

    default = dict

    @override
    def command(self, paths: Sequence[str]) -> StringCommand:
        return StringCommand(
            "for f in",
            *[QuoteString(p) for p in paths],
            "; do",
            f'if [ -f "$f" ]; then echo "{CONTENT_MARKER} $f"; cat "$f" || exit 1; echo; fi; done',
        )

    @override
    def process(self, output: list[str]) -> dict[str, list[str]]:
        contents: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in output:
            if line.startswith(CONTENT_MARKER + " "):
                current = contents.setdefault(line[len(CONTENT_MARKER) + 1 :], [])
            elif current is not None:
                current.append(line)
        for lines in contents.values():
            if lines and lines[-1] == "":
                lines.pop()  # the separator echo
        return contents


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
