"""Compare the desired state with what the host has. Pure: no pyinfra imports."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from deploys.core.render import DesiredFile, DesiredState
from deploys.host.units import Change, UnitState, is_owned, stale_change


@dataclass(frozen=True)
class RemoteFile:
    mode: int
    owner: str
    group: str
    sha256: str | None


@dataclass
class HostState:
    """What the host has: files by path, directories, and matrix-synapse* units."""

    files: dict[str, RemoteFile] = field(default_factory=dict)
    directories: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    # A journal of changes a cut run left unfinished (restarts still owed).
    pending: bool = False


@dataclass(frozen=True)
class Drift:
    """How the host differs from the plan."""

    new: tuple[DesiredFile, ...]  # missing on the host
    modified: tuple[DesiredFile, ...]  # content differs
    metadata: tuple[DesiredFile, ...]  # same content, mode or owner differ
    stale: tuple[str, ...]  # owned files the plan no longer has
    directories: tuple[str, ...]  # missing or with the wrong mode/owner
    missing_secrets: tuple[str, ...]
    pending: bool = False  # an earlier run was cut before its services were ready
    left_alone: tuple[str, ...] = ()  # not ours by name: never touched, only listed

    @property
    def uploads(self) -> tuple[DesiredFile, ...]:
        return self.new + self.modified

    def __bool__(self) -> bool:
        return bool(
            self.new
            or self.modified
            or self.metadata
            or self.stale
            or self.directories
            or self.missing_secrets
            or self.pending
        )

    def changes(self, systemd_dir: str) -> list[Change]:
        """What a run would change, for services.plan_service_actions."""
        changes = [Change(f.path, f.restarts, f.unit_file, f.reloads) for f in self.uploads]
        return changes + [stale_change(path, systemd_dir) for path in self.stale]


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def compare(desired: DesiredState, host: HostState, secrets: Sequence[str]) -> Drift:
    new, modified, metadata = [], [], []
    for path, want in desired.files.items():
        have = host.files.get(path)
        if have is None:
            new.append(want)
        elif have.sha256 != sha256(want.content):
            modified.append(want)
        elif (have.mode, have.owner, have.group) != (want.mode, want.owner, want.group):
            metadata.append(want)
    stale = sorted(
        path
        for path in host.files
        if path not in desired.files and is_owned(path, desired.owned_globs)
    )
    directories = [
        d.path
        for d in desired.directories
        if host.directories.get(d.path) != (d.mode, d.owner, d.group)
    ]
    missing = [s for s in secrets if s not in host.files]
    left_alone = sorted(
        path
        for path in host.files
        if path not in desired.files
        and path.rsplit("/", 1)[0] in desired.shared_dirs
        and not is_owned(path, desired.owned_globs)
    )
    return Drift(
        tuple(new),
        tuple(modified),
        tuple(metadata),
        tuple(stale),
        tuple(directories),
        tuple(missing),
        host.pending,
        tuple(left_alone),
    )
