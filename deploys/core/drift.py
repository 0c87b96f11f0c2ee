"""Compare the planned files with what the host fact read. Pure: no pyinfra imports.

``compare_files`` is the generic rule (used by the ``files.batch`` operation and by Synapse's):
which files are new, modified, off only in mode/owner, or stale. ``compare`` adds what the
Synapse deploy also owns: directories, generated secrets, the journal, files left alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from deploys.core.render import DesiredFile, DesiredState
from deploys.host.ownership import left_alone, secret_present, stale_paths
from deploys.host.units import Change, UnitState, run_changes


@dataclass(frozen=True)
class FileState:
    """One file as the host fact read it."""

    mode: int
    owner: str
    group: str
    sha256: str | None
    size: int | None = None


@dataclass
class HostState:
    """What the host has: files by path, directories, and matrix-synapse* units."""

    files: dict[str, FileState] = field(default_factory=dict)
    directories: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    # A journal an interrupted run left: changes (restarts, reloads) it still owes.
    journal_found: bool = False
    # The topology the host last applied (JSON, deploys/host/restarts.py); None: not recorded.
    applied_topology: str | None = None


class PlannedFile(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def content(self) -> bytes: ...
    @property
    def mode(self) -> int: ...
    @property
    def owner(self) -> str: ...
    @property
    def group(self) -> str: ...


F = TypeVar("F", bound=PlannedFile)


@dataclass(frozen=True)
class FileDrift(Generic[F]):
    """How the host's files differ from the planned ones."""

    new: tuple[F, ...]  # missing on the host
    modified: tuple[F, ...]  # content differs
    attributes_only: tuple[F, ...]  # same content; mode or owner differ
    stale: tuple[str, ...]  # ours by name, no longer planned: removed

    @property
    def uploads(self) -> tuple[F, ...]:
        return self.new + self.modified

    def __bool__(self) -> bool:
        return bool(self.new or self.modified or self.attributes_only or self.stale)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def compare_files(
    planned: Mapping[str, F], found: Mapping[str, FileState], owned_globs: Sequence[str]
) -> FileDrift[F]:
    new, modified, attributes_only = [], [], []
    for path, want in planned.items():
        have = found.get(path)
        if have is None:
            new.append(want)
        elif have.sha256 != sha256(want.content):
            modified.append(want)
        elif (have.mode, have.owner, have.group) != (want.mode, want.owner, want.group):
            attributes_only.append(want)
    stale = stale_paths(found, planned, owned_globs)
    return FileDrift(tuple(new), tuple(modified), tuple(attributes_only), tuple(stale))


@dataclass(frozen=True)
class Drift:
    """How a Synapse host differs from the plan."""

    files: FileDrift[DesiredFile]
    directories: tuple[str, ...]  # missing or with the wrong mode/owner
    missing_secrets: tuple[str, ...]  # absent or empty
    owed: bool = False  # a journal: an earlier run was cut before its services were ready
    left_alone: tuple[str, ...] = ()  # not ours by name: never touched, only listed

    def __bool__(self) -> bool:
        return bool(self.files or self.directories or self.missing_secrets or self.owed)

    def changes(self, systemd_dir: str) -> list[Change]:
        """What a run would change, for ``restarts.plan_restarts``."""
        return run_changes(map(change_of, self.files.uploads), self.files.stale, systemd_dir)


def change_of(f: DesiredFile) -> Change:
    """The change record of writing ``f``: what it restarts and reloads, and whether systemd must
    reload. Built here only; the host receives these records in the manifest."""
    return Change(f.path, f.restarts, f.unit_file, f.reloads)


def compare(desired: DesiredState, host: HostState) -> Drift:
    missing = [
        path
        for path in (*desired.secrets, *([desired.signing_key] if desired.signing_key else []))
        if not secret_present(host.files[path].size if path in host.files else None)
    ]
    directories = [
        d.path
        for d in desired.directories
        if host.directories.get(d.path) != (d.mode, d.owner, d.group)
    ]
    return Drift(
        files=compare_files(desired.files, host.files, desired.owned_globs),
        directories=tuple(directories),
        missing_secrets=tuple(missing),
        owed=host.journal_found,
        left_alone=tuple(
            left_alone(host.files, desired.files, desired.shared_dirs, desired.owned_globs)
        ),
    )
