"""Apply a batch of files atomically, under a lock, in one process. Standard library only.

The generic program behind ``deploys/operations/files.py::batch``; the Synapse apply
(``host/apply.py``) runs the same steps with its journal, checks and units around them. The
controller ships ``manifest.json`` (a ``manifest.BatchManifest``), this package as ``host/`` and
the new contents, and runs ``python3 -m host.batch STAGE`` with the stage as working directory:

1. take the lock (flock), waiting up to ``lock_timeout``, so runs never interleave;
2. read the host and refuse, before changing anything, a run whose view is stale: a file that is
   neither what the controller read (``read_sha256``) nor what it wants, or a file of ours that
   this run would remove although the controller did not see it; also a staged copy that is
   missing or corrupt;
3. write every file whose content differs (``files.replace_file``); if a write fails, put back
   every file this run wrote and fail naming the file;
4. run the ``check`` of every file written; if one fails, put the previous files back and fail;
5. fix mode/owner drift, remove stale files (ours by ``owned_globs``, no longer planned);
6. run ``on_change`` (``sh -c``) with the changed paths on standard input, one per line, if any
   file was written or removed; a failing hook fails the run (the files stay as planned).

It prints one JSON summary line prefixed ``pyinfra-batch:``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import files, ownership
from .manifest import BatchManifest, FileEntry, ManifestError, from_json

MAX_NAMED = 5  # paths named in one error message


class ApplyError(Exception):
    """The run cannot go on; the message says what happened to the host and what to do."""


def main(stage: str) -> int:
    # Finish even if the SSH connection drops.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        manifest = from_json(BatchManifest, Path(stage, "manifest.json").read_bytes())
        with host_lock(manifest.lock_path, manifest.lock_timeout, "lock_timeout", "batch"):
            summary = apply(manifest, Path(stage))
    except (ApplyError, ManifestError) as error:
        report(f"pyinfra-batch: error: {error}", sys.stderr)
        return 1
    report("pyinfra-batch: " + json.dumps(summary, sort_keys=True), sys.stdout)
    return 0


def apply(manifest: BatchManifest, stage: Path) -> dict[str, Any]:
    work = read_host(manifest, stage)
    write_files(work, consequence=" and the on_change hook did not run")
    check_files(work, file_checks(work), consequence=" and the on_change hook did not run")
    commit(manifest, work)
    changed = work.changed_paths()
    if changed and manifest.on_change:
        run_hook(manifest.on_change, changed)
    return {"changed": changed, "hook": bool(changed and manifest.on_change)}


def report(line: str, stream: Any) -> None:
    with contextlib.suppress(OSError):  # the controller may be gone; the work is done anyway
        print(line, file=stream, flush=True)


@contextlib.contextmanager
def host_lock(path: str, timeout: float, setting: str, who: str = "deploy") -> Iterator[None]:
    """Hold ``path`` exclusively (flock), waiting up to ``timeout`` s (named by ``setting``);
    ``who`` names the other holder in the error."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.seek(0)
                    holder = lock.read().strip() or "unknown"
                    raise ApplyError(
                        f"another {who} holds {path} ({holder}); waited {timeout:g} s ({setting})"
                    ) from None
                time.sleep(0.2)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


@dataclass
class Work:
    """What this run changes, as read under the lock before anything changed."""

    writes: list[tuple[FileEntry, bytes]]  # manifest entry, verified staged content
    unchanged: list[FileEntry]  # content already as planned (mode/owner may drift)
    stale: list[str]  # ours by name, no longer planned: removed on commit
    backups: dict[str, str | None] = field(default_factory=dict)  # path -> old copy, None: new
    written: list[FileEntry] = field(default_factory=list)

    def changed_paths(self) -> list[str]:
        return sorted({e.path for e in self.written} | set(self.stale))


# --- Step 2: read the host; refuse a stale view before any change ------------------------------


def read_host(manifest: BatchManifest, stage: Path) -> Work:
    """What this run will change. Changes nothing; raises ApplyError if the run must not go on."""
    writes, unchanged, moved = [], [], []
    for entry in manifest.files:
        try:
            digest = files.file_sha256(entry.path)
        except files.FileError as error:
            raise ApplyError(f"{error}; nothing was changed") from None
        if digest == entry.sha256:
            unchanged.append(entry)
        elif digest != entry.read_sha256:
            moved.append(entry.path)
        else:
            writes.append((entry, staged_content(entry, stage)))
    stale = find_stale(manifest)
    unplanned = [path for path in stale if path not in set(manifest.read_stale)]
    if moved or unplanned:
        what = [f"{p} changed on the host since this run read it" for p in moved]
        what += [
            f"{p} appeared on the host since this run read it, and this run would remove it"
            for p in unplanned
        ]
        raise ApplyError(
            listing(what) + " (another deploy ran meanwhile?); nothing was "
            "changed; run the deploy again"
        )
    return Work(writes, unchanged, stale)


def staged_content(entry: FileEntry, stage: Path) -> bytes:
    if entry.payload is None:  # the controller saw it as up to date: its bug, not the host's
        raise ApplyError(
            f"the archive holds no new copy of {entry.path}, which differs from the plan "
            "on the host; nothing was changed; run the deploy again"
        )
    content = (stage / entry.payload).read_bytes()
    if hashlib.sha256(content).hexdigest() != entry.sha256:
        raise ApplyError(
            f"staged copy of {entry.path} is corrupt; nothing was changed; run the deploy again"
        )
    return content


def find_stale(manifest: BatchManifest) -> list[str]:
    """Files of ours (by ``owned_globs``, as the shell expands them) that the plan no longer has."""
    found = {p for pattern in manifest.owned_globs for p in glob.glob(pattern) if os.path.isfile(p)}
    return ownership.stale_paths(found, (e.path for e in manifest.files), manifest.owned_globs)


def listing(items: list[str]) -> str:
    more = len(items) - MAX_NAMED
    return "; ".join(items[:MAX_NAMED]) + (f"; and {more} more" if more > 0 else "")


# --- Steps 3-5: write, check, commit ------------------------------------------------------------


def write_files(work: Work, consequence: str = "", undo: Callable[[], str] = lambda: "") -> None:
    """Write every file whose content differs. On a failure put back every file written, call
    ``undo`` (its answer is added to the message), and raise ApplyError naming the file.
    ``consequence`` says what else did not happen (e.g. " and no process was touched")."""
    for entry, content in work.writes:
        try:
            files.replace_file(
                entry.path, content, entry.mode, entry.owner, entry.group, work.backups
            )
        except OSError as error:
            problems = files.roll_back(work.backups)
            tail = undo()
            raise ApplyError(
                f"cannot write {entry.path}: {error.strerror or error}; every file this run "
                f"had written was put back{consequence}{rollback_note(problems)}{tail}"
            ) from None
        work.written.append(entry)


def file_checks(work: Work, entries: list[FileEntry] | None = None) -> dict[str, str]:
    """Check command -> what it checks, for each entry with a ``check`` (default: the files this
    run wrote); one command shared by several files runs once."""
    checks: dict[str, str] = {}
    for entry in work.written if entries is None else entries:
        if entry.check:
            checks.setdefault(entry.check, f"{entry.path} (`{entry.check}`)")
    return checks


def check_files(
    work: Work,
    checks: dict[str, str],
    consequence: str = "",
    undo: Callable[[], str] = lambda: "",
) -> None:
    """Run each check with the new files in place; if one fails, put the previous files back,
    call ``undo`` and raise ApplyError naming what was refused, with the check's output."""
    for check, what in checks.items():
        result = subprocess.run(["sh", "-c", check], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems = files.roll_back(work.backups)
            tail = undo()
            output = (result.stderr + result.stdout).strip()
            raise ApplyError(
                f"{what} was refused; the previous files were put back{consequence}"
                f"{rollback_note(problems)}{tail}:\n{output}"
            )


def commit(
    manifest: BatchManifest,
    work: Work,
    prune_empty_parent: Callable[[str], bool] = lambda path: False,
) -> None:
    """The new files stand: drop the old copies, fix mode/owner of unchanged files, remove stale
    files (and their directory once empty, where ``prune_empty_parent(path)``) and leftovers."""
    files.drop_backups(work.backups)
    for entry in work.unchanged:  # same content: nothing to restart
        files.fix_attributes(entry.path, entry.mode, entry.owner, entry.group)
    for path in work.stale:
        files.remove_file(path, prune_empty_parent=prune_empty_parent(path))
    files.remove_leftover_temporaries({os.path.dirname(e.path) for e in manifest.files})


def rollback_note(problems: list[str]) -> str:
    return f" (except, failing to put back: {listing(problems)})" if problems else ""


def run_hook(command: str, changed: list[str]) -> None:
    """``sh -c command`` with the changed paths on standard input, one per line."""
    result = subprocess.run(
        ["sh", "-c", command],
        input="".join(f"{p}\n" for p in changed),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise ApplyError(
            f"the on_change hook `{command}` failed (exit {result.returncode}) after "
            f"{len(changed)} files changed; the files stay as planned:\n{output}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
