"""Which files are ours, which are stale, which are someone else's: one rule for both sides.

The controller decides on the host fact's file list what a run will remove and list; the host
program decides again under the lock on what it finds there. Both call these functions, so they
can never disagree (issue 9, bug 2: ``fnmatch`` on one side and ``glob`` on the other). Standard
library only.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable


def is_owned(path: str, owned_globs: Iterable[str]) -> bool:
    """Whether ``path`` is ours by name: it matches one of the shell globs the way the shell (and
    ``glob.glob``) would, component by component, so ``*`` never crosses a ``/`` and never matches
    a leading dot."""
    parts = path.split("/")
    return any(_glob_matches(parts, pattern.split("/")) for pattern in owned_globs)


def _glob_matches(parts: list[str], pattern: list[str]) -> bool:
    if len(parts) != len(pattern):
        return False
    for part, glob in zip(parts, pattern, strict=True):
        if part.startswith(".") and not glob.startswith("."):
            return False
        if not fnmatch.fnmatchcase(part, glob):
            return False
    return True


def stale_paths(
    found: Iterable[str], wanted: Iterable[str], owned_globs: Iterable[str]
) -> list[str]:
    """Files found on the host that are ours by name but no longer planned: removed by a run."""
    wanted, owned_globs = set(wanted), tuple(owned_globs)
    return sorted(p for p in set(found) if p not in wanted and is_owned(p, owned_globs))


def left_alone(
    found: Iterable[str],
    wanted: Iterable[str],
    shared_dirs: Iterable[str],
    owned_globs: Iterable[str],
) -> list[str]:
    """Files found directly in a directory we write into but share, that are not ours by name:
    never touched, only listed."""
    wanted, shared, owned_globs = set(wanted), set(shared_dirs), tuple(owned_globs)
    return sorted(
        p
        for p in set(found)
        if p not in wanted and os.path.dirname(p) in shared and not is_owned(p, owned_globs)
    )


def is_under(path: str, directory: str) -> bool:
    """Whether ``path`` lies inside ``directory`` (e.g. a unit file under the systemd dir)."""
    return path.startswith(directory.rstrip("/") + "/")


def secret_present(size: int | None) -> bool:
    """A generated secret exists when its file does and is not empty (``None``: no file): an
    empty secret file is regenerated, and the controller previews it as missing."""
    return bool(size)
