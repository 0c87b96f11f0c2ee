"""Operations that converge a whole Synapse host in a constant number of SSH round trips."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.api.util import format_text
from pyinfra.operations.util.files import generate_color_diff

from deploys.drift import Drift, compare, sha256
from deploys.facts import FileContents, SynapseHostState
from deploys.render import DesiredFile, DesiredState
from deploys.services import ServiceActions, plan_service_actions

REMOTE_MODULES = (Path(__file__).with_name("remote_apply.py"), Path(__file__).with_name("services.py"))
LOCK_PATH = "/run/lock/pyinfra-synapse.lock"
SECRET_MASK = "<secret: content not shown>"


@operation()
def apply_desired_state(
    desired: DesiredState,
    planned_workers: Sequence[str],
    secrets: Sequence[str],
    account: tuple[str, str, str],
    config_dir: str = "/etc/matrix-synapse",
    systemd_dir: str = "/etc/systemd/system",
    lock_timeout: int = 600,
):
    """
    Converge every file, worker and unit of a Synapse host: write new and changed files, remove
    the files of workers no longer planned, and start, restart, enable or disable units — all as
    one archive upload plus one remote command, whatever the number of workers.

    + desired: the rendered file set (``deploys.render.desired_state``)
    + planned_workers: the name of every planned worker
    + secrets: secret files generated once on the host if missing (never overwritten)
    + account: ``(user, group, home)`` Synapse runs as, created if missing
    + config_dir: Synapse's configuration directory
    + systemd_dir: directory for unit files and drop-ins
    + lock_timeout: seconds to wait for another deploy holding the host lock

    Changes are applied on the host under a lock (flock on ``/run/lock/pyinfra-synapse.lock``):
    each file is written to a temporary file in its directory and renamed into place, so a cut
    connection never leaves a half-written file. Only the processes affected by what changed are
    restarted; a run with nothing to change yields no command.

    **Example:**

    .. code:: python

        apply_desired_state(
            name="Ship Synapse config, units and workers",
            desired=desired_state(settings, plan),
            planned_workers=[w.name for w in plan.workers],
            secrets=list(paths.secrets.values()),
            account=("matrix-synapse", "matrix-synapse", "/var/lib/matrix-synapse"),
        )
    """
    host_state = host.get_fact(SynapseHostState, config_dir=config_dir, systemd_dir=systemd_dir,
                               directories=[d.path for d in desired.directories])  # fmt: skip
    drift = compare(desired, host_state, secrets)
    actions = plan_service_actions(drift.changes(desired), planned_workers, host_state.units)
    if not drift and not actions:
        host.noop(f"{len(desired.files)} files and {len(planned_workers)} workers already as planned")
        return

    # The body runs twice (prepare, execute): show the preview once, before the first yield.
    if state.config.DIFF and (not state.is_executing or not state.check_for_changes):
        _show_diff(drift, actions, config_dir)

    archive = _archive(desired, drift, planned_workers, secrets, account, systemd_dir, lock_timeout)
    remote_archive = host.get_temp_filename(f"pyinfra-synapse-{sha256(archive)}")
    # Upload as the SSH user (no sudo copy dance), then unpack and apply with the op's privileges.
    yield FileUploadCommand(io.BytesIO(archive), remote_archive,
                            remote_temp_filename=remote_archive, _sudo=False)  # fmt: skip
    yield StringCommand(
        "stage=$(mktemp -d) && tar -xzf", QuoteString(remote_archive), '-C "$stage"',
        '&& python3 "$stage/remote_apply.py" "$stage"; rc=$?; rm -rf "$stage"',
        QuoteString(remote_archive), "; exit $rc",
    )  # fmt: skip


def _archive(desired: DesiredState, drift: Drift, planned_workers: Sequence[str],
             secrets: Sequence[str], account: tuple[str, str, str], systemd_dir: str,
             lock_timeout: int) -> bytes:  # fmt: skip
    uploads = {f.path: f"files/{i}" for i, f in enumerate(drift.uploads)}
    user, group, home = account
    manifest = {
        "lock_path": LOCK_PATH,
        "lock_timeout": lock_timeout,
        "user": user, "group": group, "home": home,
        "directories": [{"path": d.path, "mode": d.mode, "owner": d.owner, "group": d.group}
                        for d in desired.directories],
        "secrets": list(secrets),
        "files": [{"path": f.path, "mode": f.mode, "owner": f.owner, "group": f.group,
                   "sha256": sha256(f.content), "payload": uploads.get(f.path),
                   "restarts": sorted(f.restarts), "unit_file": f.unit_file}
                  for f in desired.files.values()],
        "owned_globs": list(desired.owned_globs),
        "systemd_dir": systemd_dir,
        "planned_workers": list(planned_workers),
    }  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        members = [("manifest.json", json.dumps(manifest).encode())]
        members += [(m.name, m.read_bytes()) for m in REMOTE_MODULES]
        members += [(uploads[f.path], f.content) for f in drift.uploads]
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o600, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _show_diff(drift: Drift, actions: ServiceActions, config_dir: str) -> None:
    existing = [f.path for f in drift.modified if not f.secret]
    old = host.get_fact(FileContents, paths=existing) if existing else {}
    for f in drift.new:
        host.log(f"Will create {format_text(f.path, bold=True)}", logger.info)
        _log_lines(generate_color_diff([], _lines(f)), f)
    for f in drift.modified:
        host.log(f"Will modify {format_text(f.path, bold=True)}", logger.info)
        _log_lines(generate_color_diff(old.get(f.path, []), _lines(f)), f)
    for f in drift.metadata:
        host.log(f"Will set {f.path} to mode {f.mode:o}, owner {f.owner}:{f.group}", logger.info)
    for path in drift.stale:
        host.log(f"Will remove {format_text(path, bold=True)}", logger.info)
    for path in drift.directories:
        host.log(f"Will create or fix directory {path}", logger.info)
    for path in drift.missing_secrets:
        host.log(f"Will generate secret {path}", logger.info)
    for command in actions.commands():
        host.log(f"Will run: {' '.join(command)}", logger.info)


def _lines(f: DesiredFile) -> list[str]:
    return [SECRET_MASK] if f.secret else f.content.decode().splitlines()


def _log_lines(lines, f: DesiredFile) -> None:
    for line in ([f"    {SECRET_MASK}"] if f.secret else lines):
        logger.info(f"  {line}")
