"""Step 6 of the Synapse apply: the checks a run must pass before any process sees its files.
Each changed file's own ``check`` (``nginx -t``), and one Synapse process loading every changed
Synapse config (``synapse_check.py``, run with the Synapse virtualenv's python). A change the
journal owes is checked exactly like one this run wrote. Standard library only."""

from __future__ import annotations

import shlex
from pathlib import Path

from . import units
from .batch import Work, file_checks
from .journal import merge
from .manifest import Manifest, SynapseCheck


def checks_for(manifest: Manifest, work: Work, owed: list[units.Change]) -> dict[str, str]:
    """Check command -> what it checks, for every changed file still in the plan (this run's and
    the journal's alike)."""
    entries = {e.path: e for e in manifest.batch.files}
    changes = {c.path: c for c in manifest.changes}
    written = [changes[e.path] for e in work.written]
    present = [c for c in merge(written + owed) if c.path in entries]  # removed: nothing to check
    checks = file_checks(work, [entries[c.path] for c in present])
    command = synapse_check_command(manifest.synapse_check, present)
    if command:
        checks[command] = "the new Synapse configuration (loaded with the installed Synapse)"
    return checks


def synapse_check_command(check: SynapseCheck | None, changes: list[units.Change]) -> str | None:
    """The one command checking every Synapse config among ``changes``, or None."""
    configs = [c for c in changes if not c.unit_file and c.restarts and not c.reloads]
    if not check or not configs:
        return None
    if any(units.EVERY_PROCESS in c.restarts or units.MAIN in c.restarts for c in configs):
        names = ["--all"]
    else:
        names = sorted({n for c in configs for n in c.restarts})
    script = str(Path(__file__).with_name("synapse_check.py"))
    argv = [check.python, script, check.homeserver, check.conf_d, check.workers_dir, *names]
    return " ".join(shlex.quote(a) for a in argv)
