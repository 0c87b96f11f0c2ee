"""Operation: converge a whole Synapse host in a constant number of SSH round trips. Paired with
``deploys/facts/synapse.py``; runs ``deploys/host/apply.py`` on the host. The files travel as a
batch (``deploys/operations/files.py``); this layer adds the restart rules, config checks,
generated secrets, readiness and the journal."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pyinfra import host, logger, state
from pyinfra.api import operation

from deploys.core.drift import Drift, HostState, change_of, compare
from deploys.core.render import DesiredState
from deploys.core.secret_keys import looks_secret
from deploys.facts.synapse import SynapseHostState
from deploys.host.journal import JOURNAL_PATH
from deploys.host.manifest import Account, BatchManifest, Manifest, to_json
from deploys.host.ownership import is_owned
from deploys.host.restarts import RestartPlan, RestartSpec, parse_topology, plan_restarts
from deploys.host.units import EVERY_PROCESS
from deploys.operations.files import (
    SECRET_MASK,
    apply_command,
    archive,
    file_entries,
    show_file_diff,
)

LOCK_PATH = "/run/lock/pyinfra-synapse.lock"


@operation()
def apply_desired_state(
    desired: DesiredState,
    planned_workers: Sequence[str],
    user: str,
    group: str,
    home: str,
    systemd_dir: str,
    lock_timeout: int,
    restarts: RestartSpec,
):
    """
    Converge every file, worker and unit of a Synapse host: write new and changed files, remove
    the files of workers no longer planned, and start, restart, enable or disable units — all in
    one remote command that carries an archive of the changed files on its standard input,
    whatever the number of workers.

    + desired: the rendered file set (``deploys.core.render.desired_state``)
    + planned_workers: the name of every planned worker
    + user: the system user Synapse runs as, created if missing
    + group: its group, created if missing
    + home: its home directory (the data directory)
    + systemd_dir: directory for unit files and drop-ins
    + lock_timeout: seconds to wait for another deploy holding the host lock
    + restarts: how changes reach the processes (``deploys.core.restarts.restart_spec``):
      strategy, batch size, each worker's class, the shared topology

    Changes are applied on the host under a lock (flock on ``/run/lock/pyinfra-synapse.lock``):
    each file is written to a temporary file in its directory and renamed into place, so a cut
    connection never leaves a half-written file. Only the processes affected by what changed are
    restarted, in ordered waves (``deploys/host/restarts.py``: main first and alone, then each
    class in batches, Synapse's coupled groups together), each wave ready before the next; a
    wave that does not become ready stops the run there. Files with a ``check`` are validated
    first (and put back if it fails). The preview (``--diff``) and the run's log list the waves.
    A journal of the changes a run owes lets the next run finish one that was killed. A run with
    nothing to change yields no command.

    **Example:**

    .. code:: python

        apply_desired_state(
            name="Ship Synapse config, units and workers",
            desired=desired_state(settings, plan),
            planned_workers=[w.name for w in plan.workers],
            user="matrix-synapse",
            group="matrix-synapse",
            home="/var/lib/matrix-synapse",
            systemd_dir="/etc/systemd/system",
            lock_timeout=600,
            restarts=restart_spec(settings, plan),
        )
    """
    reloaded_units = reloaded(desired, restarts)
    host_state = host.get_fact(
        SynapseHostState,
        systemd_dir=systemd_dir,
        paths=fact_paths(desired),
        globs=fact_globs(desired),
        directories=[d.path for d in desired.directories],
        reloaded_units=reloaded_units,
    )
    drift = compare(desired, host_state)
    # The host plans again under its lock on what it finds then; both run this same planner.
    actions = plan_restarts(
        drift.changes(systemd_dir),
        restarts,
        planned_workers,
        host_state.units,
        parse_topology(host_state.applied_topology),
    )
    # The body runs twice (prepare, execute): log once, before the first yield.
    once = not state.is_executing or not state.check_for_changes
    if drift.left_alone and once:
        host.log(f"Leaving alone (not ours by name): {', '.join(drift.left_alone)}", logger.info)
    if not drift and not actions:
        host.noop(
            f"{len(desired.files)} files and {len(planned_workers)} workers already as planned"
        )
        return

    if state.config.DIFF and once:
        _show_diff(drift, actions)
    elif once:
        _log_waves(actions)

    manifest, uploads = build_manifest(
        desired,
        drift,
        host_state,
        planned_workers,
        Account(user=user, group=group, home=home),
        systemd_dir,
        lock_timeout,
        restarts,
    )
    yield apply_command(archive(to_json(manifest), uploads), "host.apply")


def reloaded(desired: DesiredState, restarts: RestartSpec | None = None) -> list[str]:
    """Units other than Synapse's reloaded (never restarted) when one of their files changes or
    is removed, e.g. nginx."""
    units = {u for f in desired.files.values() for u in f.reloads} - {EVERY_PROCESS}
    if restarts is not None:
        units |= set(restarts.reload_on_removal.values())
    return sorted(units)


def fact_globs(desired: DesiredState) -> list[str]:
    """What the fact lists by naming: our own files (stale ones too) and every file, dotfiles
    included, of the directories we share (to list those not ours)."""
    shared = [f"{d}/{pattern}" for d in desired.shared_dirs for pattern in ("*", ".*")]
    return [*desired.owned_globs, *shared]


def fact_paths(desired: DesiredState) -> list[str]:
    """Managed files (and generated secrets) the fact's globs do not cover, by path."""
    globs = fact_globs(desired)
    wanted = [
        *desired.files,
        *desired.secrets,
        *([desired.signing_key] if desired.signing_key else []),
    ]
    return sorted(p for p in dict.fromkeys(wanted) if not is_owned(p, globs))


def build_manifest(
    desired: DesiredState,
    drift: Drift,
    host_state: HostState,
    planned_workers: Sequence[str],
    account: Account,
    systemd_dir: str,
    lock_timeout: int,
    restarts: RestartSpec,
) -> tuple[Manifest, list[tuple[str, bytes]]]:
    """The manifest for the host program, and the archive members with the new contents."""
    entries, uploads = file_entries(desired.files, drift.files, host_state.files, lambda f: f.check)
    manifest = Manifest(
        batch=BatchManifest(
            files=entries,
            lock_path=LOCK_PATH,
            lock_timeout=lock_timeout,
            owned_globs=tuple(desired.owned_globs),
            read_stale=drift.files.stale,
        ),
        journal_path=JOURNAL_PATH,
        account=account,
        directories=tuple(desired.directories),
        secrets=tuple(desired.secrets),
        signing_key=desired.signing_key,
        synapse_check=desired.synapse_check,
        changes=tuple(change_of(f) for f in desired.files.values()),
        systemd_dir=systemd_dir,
        planned_workers=tuple(planned_workers),
        reloaded_units=tuple(reloaded(desired, restarts)),
        shared_dirs=tuple(desired.shared_dirs),
        readiness=desired.readiness,
        drain=desired.drain,
        restarts=restarts,
    )
    return manifest, uploads


def _show_diff(drift: Drift, actions: RestartPlan) -> None:
    show_file_diff(drift.files, mask_secret_values)
    for path in drift.directories:
        host.log(f"Will create or fix directory {path}", logger.info)
    for path in drift.missing_secrets:
        host.log(f"Will generate secret {path}", logger.info)
    if drift.owed:
        host.log(
            "Will finish the restarts an earlier, interrupted run still owes (its journal)",
            logger.info,
        )
    for command in actions.before_commands():
        host.log(f"Will run: {' '.join(command)}", logger.info)
    _log_waves(actions)
    for command in [*actions.after_commands(), *actions.stop_after_commands()]:
        host.log(f"Will run: {' '.join(command)}", logger.info)


def _log_waves(actions: RestartPlan) -> None:
    """One line per restart wave, each ready before the next starts."""
    if actions.topology_changed:
        changed = ", ".join(actions.topology_changed)
        host.log(f"Changed shared settings Synapse restarts together: {changed}", logger.info)
    for line in actions.describe():
        host.log(line, logger.info)


# A YAML (or ini-like) line with a key and a value: `  form_secret: "abc"`, `- as_token: x`.
_KEY_VALUE_LINE = re.compile(
    r"^(?P<key>\s*(?:-\s+)?[\"']?(?P<name>[\w.-]+)[\"']?\s*[:=])\s*(?P<value>\S.*)$"
)


def mask_secret_values(lines: Sequence[str]) -> list[str]:
    """Lines with the value of every key that ``looks_secret`` replaced, so no diff ever prints
    one; paths to secret files (``*_path``) stay readable."""
    masked = []
    for line in lines:
        match = _KEY_VALUE_LINE.match(line)
        if match and looks_secret(match.group("name")):
            line = f"{match.group('key')} {SECRET_MASK}"
        masked.append(line)
    return masked
