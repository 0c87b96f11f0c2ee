"""Facts that read many files in one command: their states (``FileStates``) and their lines
(``FileLines``). Paired with ``deploys/operations/files.py``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.drift import FileState

_SHA_LINE = re.compile(r"^([0-9a-f]{64})  (/.*)$")
CONTENT_MARKER = "@@pyinfra-synapse-file@@"
# Characters a glob may use unquoted (the shell expands them); every other one is escaped.
_GLOB_CHARS = frozenset("*?[]!^-")
_PLAIN = re.compile(r"[A-Za-z0-9/._@%+=:,]")


def glob_word(pattern: str) -> str:
    """``pattern`` as one shell word the shell expands as a glob (``*``, ``?``, ``[...]``), with
    every other character taken literally."""
    return "".join(c if c in _GLOB_CHARS or _PLAIN.fullmatch(c) else "\\" + c for c in pattern)


def file_states_script(paths: Sequence[str], globs: Sequence[str]) -> list[str | QuoteString]:
    """Shell words printing ``F MODE OWNER GROUP SIZE PATH`` and ``SHA256  PATH`` for each
    regular file among ``paths`` and the matches of ``globs`` (the shell's expansion: ``*`` never
    matches a leading dot or crosses a ``/``); absent ones are left out. One ``stat`` and one
    ``sha256sum`` over all of them; an error reading any fails the command (``exit 1``)."""
    words = [QuoteString(p) for p in paths] + [glob_word(g) for g in globs]
    # A file in a directory we cannot search looks absent to `[ -f ]`: refuse to guess.
    directories = [QuoteString(d) for d in _directories_to_read([*paths, *globs])]
    return [
        "for d in",
        *(directories or ["''"]),
        '; do if [ -d "$d" ] && ! { [ -r "$d" ] && [ -x "$d" ]; }; then',
        'echo "cannot read the directory $d: Permission denied" >&2; exit 1; fi; done;',
        "set --; for f in",
        *(words or ["''"]),
        '; do if [ -f "$f" ]; then set -- "$@" "$f"; fi; done;',
        'if [ $# -gt 0 ]; then stat -c "F %a %U %G %s %n" -- "$@" || exit 1;',
        'sha256sum -- "$@" || exit 1; fi;',
    ]


def _directories_to_read(paths: Sequence[str]) -> list[str]:
    """Every directory above ``paths`` (down to the first glob character), shallowest first."""
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")[1:-1]
        for i in range(len(parts)):
            if any(c in "*?[" for c in parts[i]):
                break
            found.add("/" + "/".join(parts[: i + 1]))
    return sorted(found, key=lambda d: (d.count("/"), d))


def parse_file_states(lines: Sequence[str]) -> dict[str, FileState]:
    """The output of ``file_states_script`` (other lines are ignored) as states by path."""
    attributes: dict[str, tuple[int, str, str, int]] = {}
    digests: dict[str, str] = {}
    for line in lines:
        if line.startswith("F "):
            _, mode, owner, group, size, path = line.split(" ", 5)
            attributes[path] = (int(mode, 8), owner, group, int(size))
        elif match := _SHA_LINE.match(line):
            digests[match.group(2)] = match.group(1)
    return {
        path: FileState(mode, owner, group, digests.get(path), size)
        for path, (mode, owner, group, size) in attributes.items()
    }


class FileStates(FactBase[dict[str, FileState]]):
    """
    Returns the sha256, mode, owner, group and size of many files in one command: each of
    ``paths`` and every regular file matching one of ``globs`` (expanded by the shell, so ``*``
    never crosses a ``/`` and never matches a leading dot). Absent files are left out. The
    command fails (and with it the run, before any change) when a file cannot be read.

    + paths: files to read
    + globs: shell globs of more files to read (e.g. the naming of files you own)

    .. code:: python

        host.get_fact(FileStates, paths=["/etc/demo/main.conf"], globs=["/etc/demo/*.d/*.conf"])
    """

    default = dict

    @override
    def command(self, paths: Sequence[str] = (), globs: Sequence[str] = ()) -> StringCommand:
        return StringCommand(*file_states_script(paths, globs))

    @override
    def process(self, output: list[str]) -> dict[str, FileState]:
        return parse_file_states(output)


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
