"""Operation: many files in one command, applied atomically under a lock (``batch``), and the
archive/command/preview helpers the Synapse operation builds on. Paired with
``deploys/facts/files.py``; runs ``deploys/host/batch.py`` on the host."""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import StringCommand, operation
from pyinfra.api.util import format_text, get_template
from pyinfra.operations.util.files import generate_color_diff

from deploys.core.drift import FileDrift, FileState, PlannedFile, compare_files, sha256
from deploys.facts.files import FileLines, FileStates
from deploys.host.manifest import BatchManifest, FileEntry, to_json
from deploys.host.ownership import is_owned

# The host program: every module of ``deploys/host`` shipped as the package ``host``.
HOST_PACKAGE = Path(__file__).resolve().parent.parent / "host"
BATCH_LOCK_PATH = "/run/lock/pyinfra-batch.lock"
SECRET_MASK = "<secret: content not shown>"


@dataclass(frozen=True)
class BatchFile:
    """One file of a ``batch``: its content (``content``, or ``template`` rendered with
    ``context`` and ``host``), where it goes, its mode and owner, and an optional check."""

    path: str
    content: str | bytes | None = None
    template: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    check: str | None = None
    secret: bool = False  # never print its content


@dataclass(frozen=True)
class _Planned:
    path: str
    content: bytes = field(repr=False)
    mode: int
    owner: str
    group: str
    check: str | None
    secret: bool


@operation()
def batch(
    files: Sequence[BatchFile],
    owned_globs: Sequence[str] = (),
    on_change: str | None = None,
    lock_path: str = BATCH_LOCK_PATH,
    lock_timeout: float = 600,
):
    """
    Write many files in one remote command, atomically: one fact reads the sha256, mode and owner
    of every file, and if any differs, one command carries an archive of the new contents on its
    standard input and applies it under a lock. Files matching ``owned_globs`` that are not in
    ``files`` are stale and removed.

    + files: the files (``BatchFile(path, content= or template=, mode, owner, group, check)``)
    + owned_globs: shell globs naming files this batch owns (``*`` never crosses a ``/`` nor
      matches a leading dot); a match not in ``files`` is removed
    + on_change: shell command run on the host after a change, with the changed (written or
      removed) paths on its standard input, one per line; it fails the operation if it fails
    + lock_path: the lock (flock) runs of this batch share; a second run waits for the first
    + lock_timeout: seconds to wait for the lock before failing

    On the host, each file is written to a temporary file in its directory and renamed into
    place, so a cut never leaves a half-written file. A file's ``check`` runs with every new file
    in place; if one fails (or a write fails), every file this run wrote is put back and the hook
    does not run. A run whose read of the host is stale by the time it holds the lock (another
    run changed a file since) stops before changing anything. With nothing to change it yields
    no command ("No changes"). Needs ``python3`` on the host.

    **Example:**

    .. code:: python

        batch(
            name="Ship 200 demo configs",
            files=[
                BatchFile(f"/etc/demo/conf.d/{n}.conf", content=f"id = {n}\\n", mode=0o640)
                for n in range(200)
            ]
            + [BatchFile("/etc/demo/demo.conf", template="templates/demo.conf.j2",
                         context={"port": 8080}, check="demo --check-config")],
            owned_globs=["/etc/demo/conf.d/*.conf"],
            on_change="xargs -r -d '\\\\n' touch /run/demo-reload-needed",
        )
    """
    planned = {f.path: _plan(f) for f in files}
    paths = [p for p in planned if not is_owned(p, owned_globs)]  # the rest: globbed
    found = host.get_fact(FileStates, paths=paths, globs=list(owned_globs))
    drift = compare_files(planned, found, owned_globs)
    if not drift:
        host.noop(f"{len(planned)} files already as planned")
        return
    if state.config.DIFF and (not state.is_executing or not state.check_for_changes):
        show_file_diff(drift)  # once: the body runs at prepare and again at execute

    entries, uploads = file_entries(planned, drift, found, check=lambda f: f.check)
    manifest = BatchManifest(
        files=entries,
        lock_path=lock_path,
        lock_timeout=lock_timeout,
        owned_globs=tuple(owned_globs),
        read_stale=drift.stale,
        on_change=on_change,
    )
    yield apply_command(archive(to_json(manifest), uploads), "host.batch")


def _plan(f: BatchFile) -> _Planned:
    if (f.content is None) == (f.template is None):
        raise ValueError(f"BatchFile {f.path}: give exactly one of content= and template=")
    if f.template is not None:
        text = get_template(f.template).render({"host": host, **f.context})
    else:
        text = f.content
    content = text.encode() if isinstance(text, str) else text
    return _Planned(f.path, content, f.mode, f.owner, f.group, f.check, f.secret)


# --- Shared with the Synapse operation --------------------------------------------------------


def file_entries(
    planned: Mapping[str, PlannedFile],
    drift: FileDrift[Any],
    found: Mapping[str, FileState],
    check: Callable[[Any], str | None],
) -> tuple[tuple[FileEntry, ...], list[tuple[str, bytes]]]:
    """The manifest's file entries (with what this run read, so the host can refuse a stale
    read) and the archive members holding the new contents."""
    members = {f.path: f"files/{i}" for i, f in enumerate(drift.uploads)}
    entries = tuple(
        FileEntry(
            path=f.path,
            sha256=sha256(f.content),
            mode=f.mode,
            owner=f.owner,
            group=f.group,
            read_sha256=found[f.path].sha256 if f.path in found else None,
            payload=members.get(f.path),
            check=check(f),
        )
        for f in planned.values()
    )
    return entries, [(members[f.path], f.content) for f in drift.uploads]


def archive(manifest_json: str, uploads: Sequence[tuple[str, bytes]]) -> bytes:
    """A gzipped tar of ``manifest.json``, the host package (as ``host/``) and ``uploads``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        members = [("manifest.json", manifest_json.encode())]
        members += [(f"host/{m.name}", m.read_bytes()) for m in sorted(HOST_PACKAGE.glob("*.py"))]
        members += list(uploads)
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o600, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def apply_command(archive_bytes: bytes, module: str) -> StringCommand:
    """One command: the archive on standard input (one base64 line) into a private mktemp
    directory, then ``python3 -m MODULE STAGE`` there; the stage is removed whatever happens. One
    upload in the same round trip as the apply, and no secret ever sits in a shared directory."""
    return StringCommand(
        'stage=$(mktemp -d) && base64 -d > "$stage/apply.tgz"',
        '&& tar -xzf "$stage/apply.tgz" -C "$stage"',
        f'&& (cd "$stage" && python3 -m {module} "$stage"); rc=$?; rm -rf "$stage"; exit $rc',
        _stdin=base64.b64encode(archive_bytes).decode(),
    )


def show_file_diff(
    drift: FileDrift[Any], mask: Callable[[list[str]], list[str]] = lambda lines: lines
) -> None:
    """Log what a run will do to the files, with colour diffs (``mask`` hides secret values;
    a file with ``secret`` set shows no content at all)."""
    existing = [f.path for f in drift.modified if not getattr(f, "secret", False)]
    old = host.get_fact(FileLines, paths=existing) if existing else {}

    def lines(f: Any) -> list[str]:
        return (
            [SECRET_MASK] if getattr(f, "secret", False) else mask(f.content.decode().splitlines())
        )

    for f in drift.new:
        host.log(f"Will create {format_text(f.path, bold=True)}", logger.info)
        _log_lines(generate_color_diff([], lines(f)), f)
    for f in drift.modified:
        host.log(f"Will modify {format_text(f.path, bold=True)}", logger.info)
        _log_lines(generate_color_diff(mask(old.get(f.path, [])), lines(f)), f)
    for f in drift.attributes_only:
        host.log(f"Will set {f.path} to mode {f.mode:o}, owner {f.owner}:{f.group}", logger.info)
    for path in drift.stale:
        host.log(f"Will remove {format_text(path, bold=True)}", logger.info)


def _log_lines(lines: Any, f: Any) -> None:
    for line in [f"    {SECRET_MASK}"] if getattr(f, "secret", False) else lines:
        logger.info(f"  {line}")
