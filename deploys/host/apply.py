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
8. plans the restart waves (``restarts.plan_restarts``) from what changed (this run's changes
   and the owed ones), the unit states found now and the topology last applied here
   (``RestartSpec.state_path``); stops and disables stale units, reloads systemd and enables
   planned units; then, wave by wave: drains the processes the wave stops out of nginx
   (``drain.before_wave``: their servers marked ``down`` where their upstream has another,
   nginx reloaded, requests in flight given up to ``drain.grace`` seconds; new workers down
   until they run; only when nginx runs), runs the wave's commands, waits until every unit it
   (re)started is ready, each by its own criterion (``readiness.unit_not_ready``), putting
   each process back into nginx as soon as it is ready (``drain.while_ready``), and has the
   managed routing file back (``drain.after_wave``) before the next wave starts. A wave that is
   not ready within the timeout stops the run there: later waves do not run (their processes
   keep serving with the previous config), the error names the wave, its units and why, and
   the journal stays, so the next run finishes the work;
9. after the waves: starts the target (and nginx if it was stopped), reloads what reloads
   (nginx; Synapse processes no wave restarted, by SIGHUP), stops stale workers nginx no longer
   routes to (after nginx reloaded without them, once no connection to them is open, at most
   ``drain.grace`` seconds: ``drain.wait_for_stale``), and
   waits until nginx is ready and, if a Synapse process was (re)started, Redis counts every
   planned process subscribed; only then records the applied topology and removes the journal:
   nothing is owed any more.

It prints one JSON summary line prefixed ``pyinfra-synapse:``, listing the waves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import (
    batch,
    checks,
    drain,
    files,
    journal,
    ownership,
    prerequisites,
    readiness,
    restarts,
    systemd,
    units,
)
from .batch import ApplyError
from .manifest import DrainSpec, Manifest, ManifestError, from_json

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
    plan = restart(manifest, journal.merge(run.owed + run.changes))
    record_topology(manifest.restarts)
    journal.clear(Path(manifest.journal_path))
    return summary(manifest, run, plan)


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


def restart(manifest: Manifest, changes: list[units.Change]) -> restarts.RestartPlan:
    """Steps 8 and 9: plan the waves for ``changes`` on the unit states found now, run them one
    by one, each ready before the next, then what comes after them."""
    planned = list(manifest.planned_workers)
    found = systemd.unit_states(manifest.systemd_dir, planned, list(manifest.reloaded_units))
    applied = restarts.parse_topology(read_state(manifest.restarts.state_path))
    plan = restarts.plan_restarts(changes, manifest.restarts, planned, found, applied)
    systemd.run_commands(plan.before_commands(), manifest.systemd_dir)
    # Drain only through a running nginx (a cold start has nothing to drain).
    spec = manifest.drain
    nginx_up = spec is not None and found.get(spec.unit, units.UnitState()).active
    for number, wave in enumerate(plan.waves, 1):
        run_wave(manifest, plan, number, wave, spec if nginx_up else None)
    systemd.run_commands(plan.after_commands(), manifest.systemd_dir)
    if plan.stop_after:
        # nginx was just reloaded without them: let its old workers finish their requests.
        if spec is not None:
            drain.wait_for_stale(plan.stop_after, spec.grace)
        systemd.run_commands(plan.stop_after_commands(), manifest.systemd_dir)
    readiness.wait_until_ready(
        plan.after_ready_units(), manifest.readiness, redis=plan.synapse_restarted()
    )
    return plan


def run_wave(
    manifest: Manifest,
    plan: restarts.RestartPlan,
    number: int,
    wave: restarts.Wave,
    nginx: DrainSpec | None,
) -> None:
    """One wave: nginx stops sending requests to the processes it stops (``drain.before_wave``:
    also to the new workers this or a later wave starts), its commands, every unit it
    (re)started ready, then nginx's routing file back (``drain.after_wave``: but for the new
    workers later waves start).
    On a failure no later wave runs, and the failed wave's processes stay drained (the next run
    writes the routing file back); the error names the wave, its units and why."""
    count = len(plan.waves)
    batch.report(f"pyinfra-synapse: wave {number}/{count}: {wave.describe()}", sys.stderr)
    try:
        # New workers (started by this wave or a later one) stay down in nginx until they run.
        later = [drain.process_name(u) or u for w in plan.waves[number:] for u in w.start]
        starting = [drain.process_name(u) or u for u in wave.start]
        if nginx is not None:
            drain.before_wave(nginx, wave.stopping(), starting, later)
        systemd.run_commands(wave.commands(), manifest.systemd_dir)

        def back_in_nginx(not_ready: list[str]) -> None:
            """Each process back in nginx as soon as it is ready, not when its wave is."""
            if nginx is not None:
                waiting = {drain.process_name(u) or u for u in not_ready}
                restarting = [p for p in wave.stopping() if p in waiting]
                drain.while_ready(nginx, restarting, [p for p in starting if p in waiting], later)

        readiness.wait_until_ready(wave.ready_units(), manifest.readiness, on_ready=back_in_nginx)
        if nginx is not None:
            drain.after_wave(nginx, later)
    except ApplyError as error:
        later = (
            f"waves {number + 1} to {count} were not run: their processes still run the "
            "previous configuration and keep serving; "
            if number < count
            else ""
        )
        raise ApplyError(
            f"restart wave {number}/{count} ({', '.join(wave.ready_units() or wave.stop)}) "
            f"failed: {error}\n{later}the journal keeps what this run still owes: fix the "
            "cause and run the deploy again"
        ) from None


def read_state(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    except OSError as error:
        raise ApplyError(f"cannot read {path}: {error.strerror or error}") from None


def record_topology(spec: restarts.RestartSpec) -> None:
    """The topology the processes now run with, for the next run's coupling rules."""
    content = restarts.topology_json(spec.topology) + "\n"
    if read_state(spec.state_path) == content:
        return
    try:
        os.makedirs(os.path.dirname(spec.state_path), exist_ok=True)
        files.write_atomically(spec.state_path, content.encode(), 0o644, 0, 0)
    except OSError as error:
        raise ApplyError(
            f"cannot write {spec.state_path}: {error.strerror or error}; every process is "
            "ready, and the next run restarts what the journal still owes"
        ) from None


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


def summary(manifest: Manifest, run: FilesRun, plan: restarts.RestartPlan) -> dict[str, Any]:
    return {
        "changed": run.work.changed_paths(),
        "owed": sorted({c.path for c in run.owed}),
        "left_alone": left_alone(manifest),
        "generated_secrets": run.generated,
        "stopped": list(plan.stop),
        "disabled": list(plan.disable),
        "daemon_reload": plan.daemon_reload,
        "enabled": list(plan.enable),
        "waves": plan.summary(),
        "started_after": list(plan.start_after),
        "reloaded": list(plan.reload),
        "stopped_after": list(plan.stop_after),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
