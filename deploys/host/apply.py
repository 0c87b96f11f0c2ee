"""Apply a staged deploy on the host, in one process, under the deploy lock. Standard library only.

The controller (deploys/operations/synapse.py) uploads one archive holding the package
``deploys/host`` (as ``host/``), ``manifest.json`` and the new or changed files, and runs
``python3 -m host.apply STAGE`` in the stage directory. Here:

1. take the host lock (flock), waiting up to the manifest's timeout, so runs never interleave;
2. read the host and refuse, before changing anything, a run whose view is stale: a file that is
   neither what the controller read (``read_sha256``) nor what it wants, or an owned file that
   this run would remove although the controller did not see it (another deploy ran meanwhile);
   also refuse a corrupt pending-changes journal, and a staged copy that is missing or corrupt;
3. make sure the Synapse user, directories and generated secrets exist (secrets never change);
4. if this run changes files, journal the changes (merged by path with the restarts an earlier,
   interrupted run still owes) BEFORE the first file changes; a run that changes no file leaves
   the journal as it found it;
5. write every file whose content differs: a temporary file in the same directory with owner and
   mode set, fsync'd, then renamed over the old one (the old one kept as a hard link), so a cut
   never leaves a half-written file; if a write fails, put back every file this run wrote and
   the journal as it was, and fail naming the file and the OS error;
6. run the checks (``nginx -t``, the Synapse config check) of every file this run wrote AND of
   every file the journal says an earlier run wrote without finishing; if one fails, put this
   run's files and the journal back, touch no process, and fail naming the file;
7. fix mode/owner drift in place; remove files matching our own naming that the plan no longer
   has (found here, under the lock);
8. run the systemd actions services.plan_service_actions derives from what changed (this run and
   the journal);
9. wait until every unit this run (re)started or started is ready, each by its own criterion
   (see ``unit_not_ready``), and, if a Synapse process was among them, Redis counts every process
   subscribed (``PUBSUB NUMSUB <server_name>``); only then remove the journal.

It prints one JSON summary line prefixed ``pyinfra-synapse:``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import grp
import hashlib
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import units as services

TMP_SUFFIX = ".pyinfra-synapse-tmp"
PREVIOUS_SUFFIX = TMP_SUFFIX + "-previous"  # the replaced file, kept until the checks pass
MAX_NAMED = 5  # paths named in one error message


class ApplyError(Exception):
    pass


def main(stage: str) -> int:
    # Finish even if the SSH connection drops: the journal covers kills, this covers hangups.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    manifest = json.loads(Path(stage, "manifest.json").read_text())
    try:
        with host_lock(manifest["lock_path"], manifest["lock_timeout"]):
            summary = apply(manifest, Path(stage))
    except ApplyError as error:
        report(f"pyinfra-synapse: error: {error}", sys.stderr)
        return 1
    report("pyinfra-synapse: " + json.dumps(summary, sort_keys=True), sys.stdout)
    return 0


def report(line: str, stream: Any) -> None:
    with contextlib.suppress(OSError):  # the controller may be gone; the work is done anyway
        print(line, file=stream, flush=True)


@contextlib.contextmanager
def host_lock(path: str, timeout: float):
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
                        f"another pyinfra-synapse deploy holds {path} ({holder}); waited "
                        f"{timeout:g} s (matrix_synapse_deploy_lock_timeout)"
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
    """What this run will change, as read under the lock before anything changed."""

    owed: list[services.Change]  # restarts an earlier, interrupted run still owes (the journal)
    journal_bytes: bytes | None  # the journal as found, put back verbatim if this run fails
    writes: list[tuple[dict[str, Any], bytes]]  # manifest entry, verified staged content
    unchanged: list[dict[str, Any]]  # content already as planned (mode/owner may drift)
    stale: list[tuple[str, services.Change]]
    backups: dict[str, str | None] = field(default_factory=dict)  # path -> old copy, None: new
    written: list[services.Change] = field(default_factory=list)


def apply(manifest: dict[str, Any], stage: Path) -> dict[str, Any]:
    work = read_host(manifest, stage)
    generated = ensure_prerequisites(manifest)
    change_files(manifest, stage, work)
    stale_changes = [change for _, change in work.stale]
    changes = merge_changes(work.owed + work.written + stale_changes)
    units = unit_states(
        manifest["systemd_dir"], manifest["planned_workers"], manifest.get("extra_units", [])
    )
    actions = services.plan_service_actions(changes, manifest["planned_workers"], units)
    run_actions(actions, manifest["systemd_dir"])
    wait_until_ready(readiness_units(actions), manifest.get("readiness") or {})
    Path(manifest["pending_path"]).unlink(missing_ok=True)
    return {
        "changed": sorted({c.path for c in work.written} | {p for p, _ in work.stale}),
        "replayed": sorted({c.path for c in work.owed}),
        "left_alone": left_alone(manifest),
        "generated_secrets": generated,
        "stopped": list(actions.stop),
        "disabled": list(actions.disable),
        "daemon_reload": actions.daemon_reload,
        "enabled": list(actions.enable),
        "restarted": ([services.MAIN_UNIT] if actions.restart_main else [])
        + list(actions.restart_workers),
        "started": ([services.MAIN_UNIT] if actions.start_main else []) + list(actions.start),
        "reloaded": list(actions.reload),
    }


# --- Step 2: read the host; refuse a stale view before any change ------------------------------


def read_host(manifest: dict[str, Any], stage: Path) -> Work:
    """What this run will change. Changes nothing; raises ApplyError if the run must not go on."""
    owed, journal_bytes = load_pending(Path(manifest["pending_path"]))
    writes, unchanged, moved = [], [], []
    for entry in manifest["files"]:
        current = file_state(entry["path"])
        digest = current[0] if current else None
        if digest == entry["sha256"]:
            unchanged.append(entry)
            continue
        if digest != entry["read_sha256"]:
            moved.append(entry["path"])
            continue
        writes.append((entry, staged_content(entry, stage)))
    stale = stale_files(manifest)
    unplanned = [path for path, _ in stale if path not in set(manifest["read_stale"])]
    if moved or unplanned:
        what = [f"{p} changed on the host since this run read it" for p in moved]
        what += [
            f"{p} appeared on the host since this run read it, and this run would remove it"
            for p in unplanned
        ]
        raise ApplyError(
            _listing(what) + " (another deploy ran meanwhile?); nothing was "
            "changed; run the deploy again"
        )
    return Work(owed, journal_bytes, writes, unchanged, stale)


def staged_content(entry: dict[str, Any], stage: Path) -> bytes:
    path = entry["path"]
    if entry.get("payload") is None:  # the controller saw it as up to date: its bug, not the host's
        raise ApplyError(
            f"the archive holds no new copy of {path}, which differs from the plan "
            "on the host; nothing was changed; run the deploy again"
        )
    content = (stage / entry["payload"]).read_bytes()
    if hashlib.sha256(content).hexdigest() != entry["sha256"]:
        raise ApplyError(
            f"staged copy of {path} is corrupt; nothing was changed; run the deploy again"
        )
    return content


def _listing(items: list[str]) -> str:
    more = len(items) - MAX_NAMED
    return "; ".join(items[:MAX_NAMED]) + (f"; and {more} more" if more > 0 else "")


# --- The journal (pending changes) ---------------------------------------------------------


JOURNAL_FORMAT = (
    'a JSON list of {"path": str, "restarts": [str], "unit_file": bool, "reloads": [str]} objects'
)


def load_pending(journal: Path) -> tuple[list[services.Change], bytes | None]:
    """The changes an earlier run journaled but did not finish, and the journal's bytes."""
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as error:
        raise ApplyError(f"cannot read the pending-changes journal {journal}: {error}") from None
    try:
        items = json.loads(raw)
        if not isinstance(items, list):
            raise ValueError("not a list")
        changes = [_journal_change(item) for item in items]
    except (ValueError, TypeError, KeyError) as error:
        raise ApplyError(
            f"the pending-changes journal {journal} is corrupt ({type(error).__name__}: {error}); "
            f"it should hold {JOURNAL_FORMAT}: the files an interrupted run changed and the "
            "restarts it still owes. Nothing was changed. Repair the file, or delete it and then "
            "restart matrix-synapse.target (and reload nginx) by hand: deleting it forgoes the "
            "owed restarts."
        ) from None
    return merge_changes(changes), raw


def _journal_change(item: Any) -> services.Change:
    if not isinstance(item, dict):
        raise TypeError(f"entry {item!r} is not an object")
    path, restarts, unit_file, reloads = (
        item["path"],
        item["restarts"],
        item["unit_file"],
        item["reloads"],
    )
    if not (
        isinstance(path, str)
        and path.startswith("/")
        and isinstance(unit_file, bool)
        and _strings(restarts)
        and _strings(reloads)
    ):
        raise ValueError(f"entry {item!r} has a wrong type")
    return services.Change(path, frozenset(restarts), unit_file, frozenset(reloads))


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def merge_changes(changes: list[services.Change]) -> list[services.Change]:
    """One change per path, in first-seen order, uniting what each asked to restart or reload."""
    merged: dict[str, services.Change] = {}
    for c in changes:
        old = merged.get(c.path)
        merged[c.path] = (
            c
            if old is None
            else services.Change(
                c.path,
                old.restarts | c.restarts,
                old.unit_file or c.unit_file,
                old.reloads | c.reloads,
            )
        )
    return list(merged.values())


def save_pending(journal: Path, changes: list[services.Change]) -> None:
    items = [
        {
            "path": c.path,
            "restarts": sorted(c.restarts),
            "unit_file": c.unit_file,
            "reloads": sorted(c.reloads),
        }
        for c in merge_changes(changes)
    ]
    journal.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(str(journal), json.dumps(items).encode(), 0o600, 0, 0)


def restore_journal(journal: Path, raw: bytes | None) -> None:
    """Put the journal back exactly as this run found it (none: no journal)."""
    if raw is None:
        journal.unlink(missing_ok=True)
    else:
        write_atomically(str(journal), raw, 0o600, 0, 0)


# --- Step 3: account, directories, secrets -------------------------------------------------


def ensure_prerequisites(manifest: dict[str, Any]) -> list[str]:
    """Create what the files need; returns the secrets generated on this run."""
    user, group = manifest["user"], manifest["group"]
    ensure_account(user, group, manifest["home"])
    for directory in manifest["directories"]:
        ensure_directory(**directory)
    generated = [p for p in manifest["secrets"] if ensure_secret(p, user, group)]
    if manifest.get("signing_key") and ensure_signing_key(manifest["signing_key"], user, group):
        generated.append(manifest["signing_key"])
    return generated


def ensure_account(user: str, group: str, home: str) -> None:
    try:
        grp.getgrnam(group)
    except KeyError:
        run(["groupadd", "--system", group])
    try:
        pwd.getpwnam(user)
    except KeyError:
        run(
            [
                "useradd",
                "--system",
                "--gid",
                group,
                "--home-dir",
                home,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]
        )


def ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


def ensure_directory(path: str, mode: int, owner: str, group: str) -> None:
    os.makedirs(path, exist_ok=True)
    uid, gid = ids(owner, group)
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def ensure_secret(path: str, owner: str, group: str) -> bool:
    """Generate a secret once; an existing one is never replaced (sessions, tokens rely on it)."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        return False
    write_atomically(path, secrets.token_urlsafe(48).encode(), 0o600, *ids(owner, group))
    return True


def ensure_signing_key(path: str, owner: str, group: str) -> bool:
    """Synapse's signing key (``ed25519 a_XXXX <seed>``), generated once, never replaced."""
    import base64
    import string

    if os.path.exists(path) and os.path.getsize(path) > 0:
        return False
    key_id = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    write_atomically(path, f"ed25519 {key_id} {seed}\n".encode(), 0o600, *ids(owner, group))
    return True


# --- Steps 4-7: journal, write, check, roll back ---------------------------------------------


def change_files(manifest: dict[str, Any], stage: Path, work: Work) -> None:
    """Write, check and commit this run's files; on any failure leave files and journal as found.
    Fills ``work.written``."""
    journal = Path(manifest["pending_path"])
    planned = [change_for(entry) for entry, _ in work.writes] + [c for _, c in work.stale]
    if planned:  # before the first file changes; a run changing nothing leaves the journal alone
        try:
            save_pending(journal, work.owed + planned)
        except OSError as error:  # write_atomically left the old journal in place
            reason = error.strerror or error
            raise ApplyError(
                f"cannot write the pending-changes journal {journal}: {reason}; nothing was changed"
            ) from None
    for entry, content in work.writes:
        try:
            install_file(entry, content, work.backups)
        except OSError as error:
            problems = roll_back(work.backups)
            restore_journal(journal, work.journal_bytes)
            raise ApplyError(
                f"cannot write {entry['path']}: {error.strerror or error}; every file this run "
                f"had written was put back{_rollback_note(problems)}, and no process was touched"
            ) from None
        work.written.append(change_for(entry))

    checks = checks_for(manifest, work.written + work.owed, stage)
    refused = run_checks(checks)
    if refused is not None:
        problems = roll_back(work.backups)
        restore_journal(journal, work.journal_bytes)
        owed = (
            f"; the changes an earlier, interrupted run made are still pending ({journal})"
            if work.owed
            else ""
        )
        note = _rollback_note(problems)
        raise ApplyError(
            f"{refused[0]} was refused; the previous files were put back and no "
            f"process was touched{note}{owed}:\n{refused[1]}"
        )

    for backup in work.backups.values():  # committed: the old copies go
        if backup is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)
    for entry in work.unchanged:
        fix_metadata(entry)  # same content: nothing to restart
    for path, _ in work.stale:
        remove_owned_file(path, manifest["systemd_dir"])
    remove_leftover_temporaries(manifest)


def change_for(entry: dict[str, Any]) -> services.Change:
    return services.Change(
        entry["path"],
        frozenset(entry["restarts"]),
        entry["unit_file"],
        frozenset(entry.get("reloads", ())),
    )


def file_state(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # e.g. a directory where the file belongs
        raise ApplyError(
            f"cannot read {path}: {error.strerror or error}; nothing was changed"
        ) from None
    return digest, st.st_mode & 0o7777, st.st_uid, st.st_gid


def install_file(entry: dict[str, Any], content: bytes, backups: dict[str, str | None]) -> None:
    """Write one file atomically; record in ``backups`` how to undo it, before it happens."""
    path = entry["path"]
    uid, gid = ids(entry["owner"], entry["group"])
    if os.path.lexists(path):
        backup = _sibling(path, PREVIOUS_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)  # left by a killed run
        os.link(path, backup)  # the old inode, content, mode and owner, at no cost in space
        backups[path] = backup
    else:
        backups[path] = None
    write_atomically(path, content, entry["mode"], uid, gid)


def fix_metadata(entry: dict[str, Any]) -> None:
    uid, gid = ids(entry["owner"], entry["group"])
    st = os.stat(entry["path"])
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(entry["path"], uid, gid)
    if st.st_mode & 0o7777 != entry["mode"]:
        os.chmod(entry["path"], entry["mode"])


def roll_back(backups: dict[str, str | None]) -> list[str]:
    """Put back every file this run replaced or created; returns what could not be put back."""
    problems = []
    for path, backup in reversed(list(backups.items())):
        try:
            if backup is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                os.replace(backup, path)
        except OSError as error:
            problems.append(f"{path}: {error.strerror or error}")
    backups.clear()
    return problems


def _rollback_note(problems: list[str]) -> str:
    return f" (except, failing to put back: {_listing(problems)})" if problems else ""


def _sibling(path: str, suffix: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{suffix}")


def checks_for(
    manifest: dict[str, Any], changes: list[services.Change], stage: Path
) -> dict[str, str]:
    """Check command -> what it checks, for every changed file still in the plan (this run's and
    the journal's alike: a replayed change is checked exactly like a new one)."""
    entries = {e["path"]: e for e in manifest["files"]}
    present = [c for c in merge_changes(changes) if c.path in entries]  # removed: nothing to check
    checks: dict[str, str] = {}
    for change in present:
        check = entries[change.path].get("check")
        if check:
            checks.setdefault(check, f"{change.path} (`{check}`)")
    synapse_check = synapse_check_command(manifest.get("synapse_check"), present, stage)
    if synapse_check:
        checks[synapse_check] = "the new Synapse configuration (loaded with the installed Synapse)"
    return checks


def synapse_check_command(
    check: dict[str, Any] | None, changes: list[services.Change], stage: Path
) -> str | None:
    """The one command checking every Synapse config among ``changes``, or None."""
    configs = [c for c in changes if not c.unit_file and c.restarts and not c.reloads]
    if not check or not configs:
        return None
    if any(services.EVERY_PROCESS in c.restarts or services.MAIN in c.restarts for c in configs):
        names = ["--all"]
    else:
        names = sorted({n for c in configs for n in c.restarts})
    import shlex

    return " ".join(
        shlex.quote(a)
        for a in [
            check["python"],
            str(Path(__file__).with_name("synapse_check.py")),
            check["homeserver"],
            check["conf_d"],
            check["workers_dir"],
            *names,
        ]
    )


def run_checks(checks: dict[str, str]) -> tuple[str, str] | None:
    """Run each check with the new files in place; (what was refused, output) for the first that
    fails, None if all pass."""
    for check, what in checks.items():
        result = subprocess.run(["sh", "-c", check], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            return what, (result.stderr + result.stdout).strip()
    return None


def write_atomically(path: str, content: bytes, mode: int, uid: int, gid: int) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = _sibling(path, TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stale_files(manifest: dict[str, Any]) -> list[tuple[str, services.Change]]:
    """Owned files (by our naming) that the plan no longer has, with what removing them means."""
    wanted = {entry["path"] for entry in manifest["files"]}
    found = {path for pattern in manifest["owned_globs"] for path in glob.glob(pattern)}
    return [
        (path, services.stale_change(path, manifest["systemd_dir"]))
        for path in sorted(found)
        if path not in wanted
        and os.path.isfile(path)
        and services.is_owned(path, manifest["owned_globs"])
    ]


def remove_owned_file(path: str, systemd_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if path.startswith(systemd_dir + "/"):
        with contextlib.suppress(OSError):  # the drop-in directory, once empty
            os.rmdir(os.path.dirname(path))


def remove_leftover_temporaries(manifest: dict[str, Any]) -> None:
    """Temporary files and old copies a cut run left behind; never a live file."""
    for directory in {os.path.dirname(e["path"]) for e in manifest["files"]}:
        for pattern in (f".*{TMP_SUFFIX}", f".*{PREVIOUS_SUFFIX}"):
            for tmp in glob.glob(os.path.join(glob.escape(directory), pattern)):
                os.unlink(tmp)


def left_alone(manifest: dict[str, Any]) -> list[str]:
    """Files in directories we write to that do not match our naming: never touched, listed."""
    wanted = {e["path"] for e in manifest["files"]}
    found = []
    for directory in manifest.get("watched_dirs", []):
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            if (
                os.path.isfile(path)
                and path not in wanted
                and not services.is_owned(path, manifest["owned_globs"])
            ):
                found.append(path)
    return found


# --- Step 8: systemd ---------------------------------------------------------------------------


def unit_states(
    systemd_dir: str, planned: list[str], extra: list[str]
) -> dict[str, services.UnitState]:
    """State of every matrix-synapse* unit loaded or enabled, of every planned one, and of
    ``extra`` units (those reloaded on a config change)."""
    enabled = {os.path.basename(p) for p in glob.glob(f"{systemd_dir}/*.wants/matrix-synapse*")}
    listed = list_units(["matrix-synapse*", *extra])
    names = enabled | set(listed) | {services.MAIN_UNIT, services.TARGET_UNIT} | set(extra)
    names |= {services.worker_unit(n) for n in planned}
    # A unit list-units does not show is not loaded: UnitState's defaults say so.
    return {
        unit: services.UnitState(*listed.get(unit, ("not-found", "inactive")), unit in enabled)
        for unit in names
    }


def list_units(patterns: list[str]) -> dict[str, tuple[str, str]]:
    """(load, active) state by unit, in one cheap call (``systemctl show`` costs seconds at 1,000
    units: it asks systemd one unit at a time). ``patterns`` must not be empty (that lists all)."""
    out = run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full", *patterns]
    ).stdout
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def parse_show(output: str) -> dict[str, dict[str, str]]:
    units: dict[str, dict[str, str]] = {}
    for block in output.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def run_actions(actions: services.ServiceActions, systemd_dir: str) -> None:
    for command in actions.commands():
        if command[1] == "disable":
            # Remove the wants links directly: disabling works even when the unit is not-found.
            for unit in command[3:]:
                for link in glob.glob(f"{systemd_dir}/*.wants/{glob.escape(unit)}"):
                    os.unlink(link)
            continue
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            units = [u for u in command[2:] if u.endswith((".service", ".target"))]
            raise ApplyError(
                f"{' '.join(command[:2])} failed: {result.stderr.strip()}\n" + failure_report(units)
            )


# --- Step 9: readiness -----------------------------------------------------------------------


def readiness_units(actions: services.ServiceActions) -> list[str]:
    """Exactly the units this run (re)started or started: main, workers, and any other service it
    started (nginx when it was stopped). Reloaded or untouched units are not waited for."""
    main = [services.MAIN_UNIT] if actions.restart_main or actions.start_main else []
    started = [u for u in actions.start if u.endswith(".service")]
    return list(dict.fromkeys([*main, *actions.restart_workers, *started]))


def wait_until_ready(units: list[str], readiness: dict[str, Any]) -> None:
    """Wait until each unit is ready by its own criterion (``unit_not_ready``) and, if a Synapse
    process is among them, Redis counts every process subscribed."""
    timeout = readiness.get("timeout", 0)
    if not units or not timeout:
        return
    deadline = time.monotonic() + timeout
    waiting: dict[str, str] = dict.fromkeys(units, "not checked")
    redis = readiness.get("redis")
    redis_problem = "not checked" if redis and any(is_synapse(u) for u in units) else None
    while True:
        if waiting:
            states = list_units(sorted(waiting))  # these units by name, nginx included
            for unit in sorted(waiting):
                problem = unit_not_ready(unit, states.get(unit), readiness)
                if problem is None:
                    del waiting[unit]
                else:
                    waiting[unit] = problem
        if redis_problem is not None:
            redis_problem = redis_not_ready(redis)  # type: ignore[arg-type]
        if not waiting and redis_problem is None:
            return
        if time.monotonic() >= deadline:
            problems = [f"{unit}: {problem}" for unit, problem in sorted(waiting.items())]
            problems += [redis_problem] if redis_problem else []
            raise ApplyError(
                f"not ready after {timeout} s (matrix_synapse_readiness_timeout): "
                + "; ".join(problems)
                + "\n"
                + failure_report(sorted(waiting), every=True)
            )
        time.sleep(1)


def is_synapse(unit: str) -> bool:
    return unit == services.MAIN_UNIT or services.worker_name(unit) is not None


def unit_not_ready(
    unit: str, state: tuple[str, str] | None, readiness: dict[str, Any]
) -> str | None:
    """Why ``unit`` is not ready yet, or None. ``state`` is its (load, active) state. Every unit
    must be active; a Synapse process must also answer /health on an address its listener binds
    (``readiness["health"]``); another unit with a listen address (nginx) must accept a TCP
    connection on it (``readiness["reachable"]``)."""
    active = state[1] if state else "not loaded"
    if active != "active":
        return f"is {active}"
    url = readiness.get("health", {}).get(unit)
    if url:
        return http_problem(url)
    address = readiness.get("reachable", {}).get(unit)
    if address:
        return tcp_problem(address[0], address[1])
    return None


def http_problem(url: str) -> str | None:
    """None if ``GET url`` answers 200, else what happened."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=2) as response:
            if response.status == 200:
                return None
            return f"GET {url} answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"GET {url} answered {error.code}"
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"GET {url} failed: {reason}"


def tcp_problem(host: str, port: int) -> str | None:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as error:
        return f"nothing accepts connections on {host}:{port}: {error.strerror or error}"


def redis_where(redis: dict[str, Any]) -> str:
    return redis["path"] if redis.get("path") else f"{redis['host']}:{redis['port']}"


def redis_not_ready(redis: dict[str, Any]) -> str | None:
    """None once Redis counts every planned process subscribed; else why not."""
    try:
        count = redis_subscribers(redis)
    except (OSError, ValueError) as error:
        return f"cannot reach Redis at {redis_where(redis)}: {error}"
    if count < redis["subscribers"]:
        return (
            f"Redis at {redis_where(redis)}: {count} of {redis['subscribers']} processes "
            f"subscribed to {redis['channel']!r}"
        )
    return None


def redis_subscribers(redis: dict[str, Any]) -> int:
    """``PUBSUB NUMSUB <channel>`` over a raw socket (no redis-cli needed). Raises OSError when
    Redis cannot be reached, ValueError on an answer that is not a count."""
    import socket

    channel = redis["channel"].encode()
    request = b"*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    if redis.get("path"):
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(2)
        try:
            conn.connect(redis["path"])
        except OSError:
            conn.close()
            raise
    else:
        conn = socket.create_connection((redis["host"], redis["port"]), timeout=2)
    with conn:
        conn.sendall(request)
        reply = b""
        while not any(line.startswith((b":", b"-")) for line in reply.split(b"\r\n")[:-1]):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    # Reply: *2 / $<len> / <channel> / :<count>; an error: -<message>
    lines = reply.split(b"\r\n")
    errors = [line[1:].decode(errors="replace") for line in lines if line.startswith(b"-")]
    if errors:
        raise ValueError(f"Redis answered an error: {errors[0]}")
    counts = [line for line in lines if line.startswith(b":")]
    if not counts:
        raise ValueError(f"unexpected answer to PUBSUB NUMSUB: {reply[:200]!r}")
    return int(counts[0][1:])


def failure_report(units: list[str], every: bool = False) -> str:
    """Each unit that is not active (with ``every``: each unit), with the tail of its journal.
    Never raises: it runs on the error path, where it must not hide the original error."""
    if not units:
        return ""
    lines = []
    try:
        states = parse_show(run(["systemctl", "show", "--property=Id,ActiveState", *units]).stdout)
    except (ApplyError, OSError) as error:
        lines.append(f"--- the state of {', '.join(units)} could not be read: {error}")
        states = {}
    for unit in units:
        state = states.get(unit, {}).get("ActiveState", "unknown")
        if state == "active" and not every:
            continue
        try:
            tail = run(["journalctl", "--no-pager", "-n", "15", "-u", unit]).stdout.strip()
        except (ApplyError, OSError) as error:
            tail = f"(the journal could not be read: {error})"
        lines.append(f"--- {unit} is {state}; journal tail:\n{tail}")
    return "\n".join(lines)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ApplyError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
