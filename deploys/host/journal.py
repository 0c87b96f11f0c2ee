"""The journal: the changes a run owes (restarts, reloads) until its services are ready.

A run that changes files writes the journal BEFORE the first file changes, merged by path with
what an earlier, interrupted run still owes, and removes it only once every unit it (re)started is
ready. The next run finds a journal left by a killed run, checks those files like its own and
finishes what is owed. A corrupt journal stops the run (owed restarts must not be lost silently);
a run that changes nothing leaves the journal as it found it. Standard library only.
"""

from __future__ import annotations

from pathlib import Path

from . import files
from .batch import ApplyError
from .manifest import ManifestError, decode, to_json
from .units import Change

# Where the host program keeps it; the host fact reports whether it exists.
JOURNAL_PATH = "/var/lib/pyinfra-synapse/pending-changes.json"

JOURNAL_FORMAT = (
    'a JSON list of {"path": str, "restarts": [str], "unit_file": bool, "reloads": [str]} objects'
)


class JournalError(ApplyError):
    """The journal cannot be read or written; the message says how to recover."""


def load(journal: Path) -> tuple[list[Change], bytes | None]:
    """The changes an earlier run owes (merged by path), and the journal's bytes (None: none)."""
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as error:
        raise JournalError(f"cannot read the journal {journal}: {error}") from None
    try:
        owed = decode(list[Change], _json(raw), "journal", every_key=True)
        for change in owed:
            if not change.path.startswith("/"):
                raise ManifestError(f"journal: path {change.path!r} is not absolute")
    except ManifestError as error:
        raise JournalError(
            f"the journal {journal} of changes an interrupted run still owes is corrupt "
            f"({error}); it should hold {JOURNAL_FORMAT}: the files an interrupted run changed "
            "and the restarts it still owes. Nothing was changed. Repair the file, or delete it "
            "and then restart matrix-synapse.target (and reload nginx) by hand: deleting it "
            "forgoes the owed restarts."
        ) from None
    return merge(owed), raw


def _json(raw: bytes) -> object:
    import json

    try:
        return json.loads(raw)
    except ValueError as error:
        raise ManifestError(f"not JSON ({error})") from None


def merge(changes: list[Change]) -> list[Change]:
    """One change per path, in first-seen order, uniting what each asked to restart or reload."""
    merged: dict[str, Change] = {}
    for c in changes:
        old = merged.get(c.path)
        merged[c.path] = (
            c
            if old is None
            else Change(
                c.path,
                old.restarts | c.restarts,
                old.unit_file or c.unit_file,
                old.reloads | c.reloads,
            )
        )
    return list(merged.values())


def record(journal: Path, owed: list[Change]) -> None:
    """Write the journal (atomically) before the first file changes."""
    try:
        journal.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomically(str(journal), to_json(merge(owed)).encode(), 0o600, 0, 0)
    except OSError as error:  # write_atomically left the old journal in place
        reason = error.strerror or error
        raise JournalError(
            f"cannot write the journal {journal}: {reason}; nothing was changed"
        ) from None


def restore(journal: Path, raw: bytes | None) -> None:
    """Put the journal back exactly as this run found it (None: no journal)."""
    if raw is None:
        journal.unlink(missing_ok=True)
    else:
        files.write_atomically(str(journal), raw, 0o600, 0, 0)


def clear(journal: Path) -> None:
    """Everything owed is done: the services are ready."""
    journal.unlink(missing_ok=True)
