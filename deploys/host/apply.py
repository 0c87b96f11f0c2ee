"""Apply a staged Synapse deploy on the host, in one process, under the deploy lock. Standard
library only.

The controller (deploys/operations/synapse.py) uploads one archive holding this package (as
``host/``), ``manifest.json`` (a ``manifest.Manifest``) and the new or changed files, and runs
``python3 -m host.apply STAGE`` in the stage directory. The files are a batch
(``host/batch.py``); around it this program:

1. takes the host lock (flock), waiting up to the manifest's timeout, so runs never interleave;
2. reads the journal (refusing a corrupt one) and the host, and refuses, before changing
   anything, a run whose view is stale (``batch.read_host``);
3. makes sure the Synapse account, directories and generated secrets exist (secrets never change);
4. if this run changes files, journals its changes (merged by path with what an earlier,
   interrupted run still owes) BEFORE the first file changes; a run that changes no file leaves
   the journal as it found it;
5. writes every file whose content differs, atomically; if a write fails, puts back every file
   this run wrote and the journal as it was, and fails naming the file and the OS error;
6. runs the checks (``nginx -t``, the Synapse config check) of every file this run wrote AND of
   every file the journal owes; if one fails, puts this run's files and the journal back, touches
   no process, and fails naming the file;
7. fixes mode/owner drift; removes files matching our own naming that the plan no longer has;
8. runs the systemd actions ``units.plan_service_actions`` derives from what changed (this run's
   changes and the owed ones);
9. waits until every unit this run (re)started or started is ready, each by its own criterion
   (``readiness.unit_not_ready``), and, if a Synapse process was among them, Redis counts every
   process subscribed; only then removes the journal: nothing is owed any more.

It prints one JSON summary line prefixed ``pyinfra-synapse:``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import batch, checks, journal, ownership, prerequisites, readiness, systemd, units
from .batch import ApplyError
from .manifest import Manifest, ManifestError, from_json

NO_PROCESS = " and no process was touched"


def main(stage: str) -> int:
    # Finish even if the SSH connection drops: the journal covers kills, this covers hangups.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        manifest = from_json(Manifest, Path(stage, "manifest.json").read_bytes())
        lock = manifest.batch
        setting = "matrix_synapse_deploy_lock_timeout"
        with batch.host_lock(lock.lock_path, lock.lock_timeout, setting, "pyinfra-synapse deploy"):
            summary = apply(manifest, Path(stage))
    except (ApplyError, ManifestError) as error:
        batch.report(f"pyinfra-synapse: error: {error}", sys.stderr)
        return 1
    batch.report("pyinfra-synapse: " + json.dumps(summary, sort_keys=True), sys.stdout)
    return 0


def apply(manifest: Manifest, stage: Path) -> dict[str, Any]:
    """Steps 2 to 9 (the caller holds the lock)."""
    run = change_files(manifest, stage)
    actions = restart(manifest, journal.merge(run.owed + run.changes))
    readiness.wait_until_ready(readiness.readiness_units(actions), manifest.readiness)
    journal.clear(Path(manifest.journal_path))
    return summary(manifest, run, actions)


@dataclass
class FilesRun:
    """What steps 2 to 7 did."""

    work: batch.Work
    owed: list[units.Change]  # what the journal owed when this run started
    changes: list[units.Change]  # what this run wrote and removed
    generated: list[str]  # secrets generated


def change_files(manifest: Manifest, stage: Path) -> FilesRun:
    """Steps 2 to 7: refuse a stale read or a corrupt journal; account, directories, secrets;
    journal, write, check and commit the files. On a failure the files and the journal are as
    this run found them."""
    journal_path = Path(manifest.journal_path)
    owed, journal_as_found = journal.load(journal_path)
    work = batch.read_host(manifest.batch, stage)
    generated = prerequisites.ensure(manifest)
    changes = run_changes(manifest, work)
    if changes:  # before the first file changes
        journal.record(journal_path, owed + changes)

    def put_journal_back() -> str:
        journal.restore(journal_path, journal_as_found)
        return ""

    def put_journal_back_still_owed() -> str:
        put_journal_back()
        if not owed:
            return ""
        return f"; the changes an earlier, interrupted run made are still owed ({journal_path})"

    batch.write_files(work, NO_PROCESS, put_journal_back)
    checks_to_run = checks.checks_for(manifest, work, owed)
    batch.check_files(work, checks_to_run, NO_PROCESS, put_journal_back_still_owed)
    batch.commit(manifest.batch, work, lambda path: ownership.is_under(path, manifest.systemd_dir))
    return FilesRun(work, owed, changes, generated)


def run_changes(manifest: Manifest, work: batch.Work) -> list[units.Change]:
    """The change records of what this run writes and removes."""
    records = {c.path: c for c in manifest.changes}
    written = [records[entry.path] for entry, _ in work.writes]
    return units.run_changes(written, work.stale, manifest.systemd_dir)


def restart(manifest: Manifest, changes: list[units.Change]) -> units.ServiceActions:
    """Step 8: the systemd actions for ``changes`` on the unit states found now."""
    planned = list(manifest.planned_workers)
    found = systemd.unit_states(manifest.systemd_dir, planned, list(manifest.reloaded_units))
    actions = units.plan_service_actions(changes, planned, found)
    systemd.run_actions(actions, manifest.systemd_dir)
    return actions


def left_alone(manifest: Manifest) -> list[str]:
    """Files in directories we write into but share that are not ours by name: listed only."""
    found = [
        os.path.join(directory, name)
        for directory in manifest.shared_dirs
        if os.path.isdir(directory)
        for name in os.listdir(directory)
        if os.path.isfile(os.path.join(directory, name))
    ]
    wanted = [e.path for e in manifest.batch.files]
    return ownership.left_alone(found, wanted, manifest.shared_dirs, manifest.batch.owned_globs)


def summary(manifest: Manifest, run: FilesRun, actions: units.ServiceActions) -> dict[str, Any]:
    return {
        "changed": run.work.changed_paths(),
        "owed": sorted({c.path for c in run.owed}),
        "left_alone": left_alone(manifest),
        "generated_secrets": run.generated,
        "stopped": list(actions.stop),
        "disabled": list(actions.disable),
        "daemon_reload": actions.daemon_reload,
        "enabled": list(actions.enable),
        "restarted": ([units.MAIN_UNIT] if actions.restart_main else [])
        + list(actions.restart_workers),
        "started": ([units.MAIN_UNIT] if actions.start_main else []) + list(actions.start),
        "reloaded": list(actions.reload),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
