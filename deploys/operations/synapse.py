"""Operations that converge a whole Synapse host in a constant number of SSH round trips."""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import io
import json
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import StringCommand, operation
from pyinfra.api.util import format_text
from pyinfra.operations.util.files import generate_color_diff

from deploys.core.drift import Drift, HostState, compare, sha256
from deploys.core.render import DesiredFile, DesiredState
from deploys.facts.synapse import PENDING_PATH, FileLines, SynapseHostState
from deploys.host.units import ServiceActions, plan_service_actions

# The host program: shipped as the package ``host`` and run as ``python3 -m host.apply STAGE``.
HOST_PACKAGE = Path(__file__).resolve().parent.parent / "host"
LOCK_PATH = "/run/lock/pyinfra-synapse.lock"
SECRET_MASK = "<secret: content not shown>"


@operation()
def apply_desired_state(
    desired: DesiredState,
    planned_workers: Sequence[str],
    account: tuple[str, str, str],
    config_dir: str = "/etc/matrix-synapse",
    systemd_dir: str = "/etc/systemd/system",
    lock_timeout: int = 600,
):
    """
    Converge every file, worker and unit of a Synapse host: write new and changed files, remove
    the files of workers no longer planned, and start, restart, enable or disable units — all in
    one remote command that carries an archive of the changed files on its standard input,
    whatever the number of workers.

    + desired: the rendered file set (``deploys.core.render.desired_state``)
    + planned_workers: the name of every planned worker
    + account: ``(user, group, home)`` Synapse runs as, created if missing
    + config_dir: Synapse's configuration directory
    + systemd_dir: directory for unit files and drop-ins
    + lock_timeout: seconds to wait for another deploy holding the host lock

    Changes are applied on the host under a lock (flock on ``/run/lock/pyinfra-synapse.lock``):
    each file is written to a temporary file in its directory and renamed into place, so a cut
    connection never leaves a half-written file. Only the processes affected by what changed are
    restarted, files with a ``check`` are validated first (and put back if it fails), and the run
    waits until every (re)started process is ready. A run with nothing to change yields no
    command.

    **Example:**

    .. code:: python

        apply_desired_state(
            name="Ship Synapse config, units and workers",
            desired=desired_state(settings, plan),
            planned_workers=[w.name for w in plan.workers],
            account=("matrix-synapse", "matrix-synapse", "/var/lib/matrix-synapse"),
        )
    """
    extra_units = sorted({u for f in desired.files.values() for u in f.reloads})
    host_state = host.get_fact(
        SynapseHostState,
        config_dir=config_dir,
        systemd_dir=systemd_dir,
        directories=[d.path for d in desired.directories],
        paths=_outside_scanned_roots(desired, config_dir, systemd_dir),
        extra_units=extra_units,
    )
    drift = compare(desired, host_state, (*desired.secrets, desired.signing_key))
    actions = plan_service_actions(drift.changes(systemd_dir), planned_workers, host_state.units)
    if drift.left_alone and (not state.is_executing or not state.check_for_changes):
        host.log(f"Leaving alone (not ours by name): {', '.join(drift.left_alone)}", logger.info)
    if not drift and not actions:
        host.noop(
            f"{len(desired.files)} files and {len(planned_workers)} workers already as planned"
        )
        return

    # The body runs twice (prepare, execute): show the preview once, before the first yield.
    if state.config.DIFF and (not state.is_executing or not state.check_for_changes):
        _show_diff(drift, actions, config_dir)

    archive = _archive(
        desired, drift, host_state, planned_workers, account, systemd_dir, lock_timeout, extra_units
    )
    # The archive travels on the command's stdin (one base64 line, one write) into a private
    # mktemp directory: one upload in the same round trip as the apply, and no secret ever sits
    # in a shared temporary directory.
    yield StringCommand(
        'stage=$(mktemp -d) && base64 -d > "$stage/apply.tgz"',
        '&& tar -xzf "$stage/apply.tgz" -C "$stage"',
        '&& (cd "$stage" && python3 -m host.apply "$stage"); rc=$?; rm -rf "$stage"; exit $rc',
        _stdin=base64.b64encode(archive).decode(),
    )


def _archive(
    desired: DesiredState,
    drift: Drift,
    host_state: HostState,
    planned_workers: Sequence[str],
    account: tuple[str, str, str],
    systemd_dir: str,
    lock_timeout: int,
    extra_units: Sequence[str],
) -> bytes:
    uploads = {f.path: f"files/{i}" for i, f in enumerate(drift.uploads)}
    user, group, home = account
    manifest = {
        "lock_path": LOCK_PATH,
        "pending_path": PENDING_PATH,
        "watched_dirs": list(desired.shared_dirs),
        "lock_timeout": lock_timeout,
        "user": user,
        "group": group,
        "home": home,
        "directories": [
            {"path": d.path, "mode": d.mode, "owner": d.owner, "group": d.group}
            for d in desired.directories
        ],
        "secrets": list(desired.secrets),
        "signing_key": desired.signing_key,
        "synapse_check": dataclasses.asdict(desired.synapse_check)
        if desired.synapse_check
        else None,
        "files": [
            {
                "path": f.path,
                "mode": f.mode,
                "owner": f.owner,
                "group": f.group,
                "sha256": sha256(f.content),
                "payload": uploads.get(f.path),
                # What this run read: the host refuses to act on a view that is stale by then.
                "read_sha256": _read_sha256(host_state, f.path),
                "restarts": sorted(f.restarts),
                "unit_file": f.unit_file,
                "reloads": sorted(f.reloads),
                "check": f.check,
            }
            for f in desired.files.values()
        ],
        "owned_globs": list(desired.owned_globs),
        "read_stale": list(drift.stale),
        "systemd_dir": systemd_dir,
        "planned_workers": list(planned_workers),
        "extra_units": list(extra_units),
        "readiness": dataclasses.asdict(desired.readiness),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        members = [("manifest.json", json.dumps(manifest).encode())]
        members += [(f"host/{m.name}", m.read_bytes()) for m in sorted(HOST_PACKAGE.glob("*.py"))]
        members += [(uploads[f.path], f.content) for f in drift.uploads]
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o600, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _outside_scanned_roots(desired: DesiredState, config_dir: str, systemd_dir: str) -> list[str]:
    """Managed files the fact's directory scan does not cover (e.g. the nginx routing file)."""
    scanned = (f"{config_dir.rstrip('/')}/*", f"{systemd_dir.rstrip('/')}/matrix-synapse*")
    return sorted(p for p in desired.files if not any(fnmatch.fnmatchcase(p, g) for g in scanned))


def _read_sha256(host_state: HostState, path: str) -> str | None:
    remote = host_state.files.get(path)
    return remote.sha256 if remote else None


def _show_diff(drift: Drift, actions: ServiceActions, config_dir: str) -> None:
    existing = [f.path for f in drift.modified if not f.secret]
    old = host.get_fact(FileLines, paths=existing) if existing else {}
    for f in drift.new:
        host.log(f"Will create {format_text(f.path, bold=True)}", logger.info)
        _log_lines(generate_color_diff([], _lines(f)), f)
    for f in drift.modified:
        host.log(f"Will modify {format_text(f.path, bold=True)}", logger.info)
        _log_lines(generate_color_diff(mask_secret_values(old.get(f.path, [])), _lines(f)), f)
    for f in drift.metadata:
        host.log(f"Will set {f.path} to mode {f.mode:o}, owner {f.owner}:{f.group}", logger.info)
    for path in drift.stale:
        host.log(f"Will remove {format_text(path, bold=True)}", logger.info)
    for path in drift.directories:
        host.log(f"Will create or fix directory {path}", logger.info)
    for path in drift.missing_secrets:
        host.log(f"Will generate secret {path}", logger.info)
    if drift.pending:
        host.log("Will finish the restarts an earlier, interrupted run left pending", logger.info)
    for command in actions.commands():
        host.log(f"Will run: {' '.join(command)}", logger.info)


def _lines(f: DesiredFile) -> list[str]:
    return [SECRET_MASK] if f.secret else mask_secret_values(f.content.decode().splitlines())


# A YAML (or nginx/ini-like) line whose key names a secret: `  form_secret: "abc"`.
_SECRET_LINE = re.compile(
    r"^(?P<key>\s*(?:-\s+)?[\"']?[\w.-]*(?:pass|secret|token|private_key)[\w.-]*[\"']?\s*[:=])"
    r"\s*(?P<value>\S.*)$",
    re.IGNORECASE,
)


def mask_secret_values(lines: Sequence[str]) -> list[str]:
    """Lines with the value of every secret-looking key (``*pass*``, ``*secret*``, ``*token*``, ...)
    replaced, so no diff ever prints one; paths to secret files (``*_path``) stay readable."""
    masked = []
    for line in lines:
        match = _SECRET_LINE.match(line)
        key = match.group("key").strip(" -:=\"'").lower() if match else ""
        if match and not key.endswith(("path", "file")):
            line = f"{match.group('key')} {SECRET_MASK}"
        masked.append(line)
    return masked


def _log_lines(lines, f: DesiredFile) -> None:
    for line in [f"    {SECRET_MASK}"] if f.secret else lines:
        logger.info(f"  {line}")
