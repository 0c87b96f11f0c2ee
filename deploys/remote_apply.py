"""Apply a staged deploy on the host, in one process, under the deploy lock. Standard library only.

The controller (deploys/operations.py) uploads one archive holding this script, deploys/services.py,
``manifest.json`` and the new or changed files, and runs ``python3 remote_apply.py STAGE``. Here:

1. take the host lock (flock), waiting up to the manifest's timeout, so runs never interleave;
2. make sure the Synapse user, directories and generated secrets exist (secrets never change);
3. write every file that differs from the manifest: a temporary file in the same directory with
   owner and mode set, fsync'd, then renamed over the old one, so a cut never leaves a
   half-written file; fix mode/owner drift in place;
4. remove files matching our own naming that the plan no longer has, and disable stale workers
   (found here, under the lock, not from the controller's earlier read);
5. run each changed file's check (``nginx -t`` ...) with the new files in place; if one fails,
   put the previous files back, touch no process, and fail naming the file;
6. run the systemd actions services.plan_service_actions derives from what actually changed;
7. wait until every (re)started process is ready: active under systemd, ``/health`` answering on
   its HTTP listener, and every process subscribed to Redis (``PUBSUB NUMSUB <server_name>``).

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
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import services

TMP_SUFFIX = ".pyinfra-synapse-tmp"


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


def apply(manifest: dict[str, Any], stage: Path) -> dict[str, Any]:
    ensure_account(manifest["user"], manifest["group"], manifest["home"])
    for directory in manifest["directories"]:
        ensure_directory(**directory)
    generated = [p for p in manifest["secrets"] if ensure_secret(p, manifest["user"],
                                                                 manifest["group"])]  # fmt: skip
    if manifest.get("signing_key") and ensure_signing_key(manifest["signing_key"], manifest["user"],
                                                          manifest["group"]):  # fmt: skip
        generated.append(manifest["signing_key"])

    # Journal what this run will change BEFORE the first file changes, and clear it only once the
    # services are ready: a run killed in between leaves it behind, and the next run (which sees
    # it through the host fact) replays the restarts even though the files already match.
    journal = Path(manifest["pending_path"])
    pending = load_pending(journal)
    to_write = [e for e in manifest["files"] if content_differs(e)]
    stale = stale_files(manifest)
    planned = [change_for(e) for e in to_write] + [change for _, change in stale]
    save_pending(journal, pending + planned)

    previous: dict[str, tuple[bytes, int, int, int] | None] = {}
    checks: dict[str, str] = {}
    written: list[services.Change] = []
    for entry in manifest["files"]:
        change = install_file(entry, stage, previous)
        if change is not None:
            written.append(change)
            if entry.get("check"):
                checks.setdefault(entry["check"], f"{entry['path']} (`{entry['check']}`)")
    synapse_check = synapse_check_command(manifest.get("synapse_check"), written, stage)
    if synapse_check:
        checks[synapse_check] = "the new Synapse configuration (loaded with the installed Synapse)"
    try:
        run_checks(checks, previous)
    except ApplyError:
        save_pending(journal, pending)  # nothing of this run reached the host
        raise
    for path, _ in stale:
        remove_owned_file(path, manifest["systemd_dir"])
    remove_leftover_temporaries(manifest)

    changes = pending + written + [change for _, change in stale]
    units = unit_states(manifest["systemd_dir"], manifest["planned_workers"],
                        manifest.get("extra_units", []))  # fmt: skip
    actions = services.plan_service_actions(changes, manifest["planned_workers"], units)
    run_actions(actions, manifest["systemd_dir"])
    touched = [*(["matrix-synapse.service"] if actions.restart_main or actions.start_main else []),
               *actions.restart_workers, *(u for u in actions.start if u.endswith(".service"))]
    wait_until_ready(touched, manifest.get("readiness") or {})
    journal.unlink(missing_ok=True)
    return {
        "changed": sorted({c.path for c in written} | {p for p, _ in stale}),
        "replayed": sorted({c.path for c in pending}),
        "left_alone": left_alone(manifest),
        "generated_secrets": generated,
        "stopped": list(actions.stop),
        "disabled": list(actions.disable),
        "daemon_reload": actions.daemon_reload,
        "enabled": list(actions.enable),
        "restarted": (["matrix-synapse.service"] if actions.restart_main else [])
        + list(actions.restart_workers),
        "started": (["matrix-synapse.service"] if actions.start_main else []) + list(actions.start),
        "reloaded": list(actions.reload),
    }


def change_for(entry: dict[str, Any]) -> services.Change:
    return services.Change(entry["path"], frozenset(entry["restarts"]), entry["unit_file"],
                           frozenset(entry.get("reloads", ())))  # fmt: skip


def load_pending(journal: Path) -> list[services.Change]:
    try:
        items = json.loads(journal.read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [services.Change(i["path"], frozenset(i["restarts"]), i["unit_file"],
                            frozenset(i["reloads"])) for i in items]  # fmt: skip


def save_pending(journal: Path, changes: list[services.Change]) -> None:
    if not changes:
        journal.unlink(missing_ok=True)
        return
    items = [{"path": c.path, "restarts": sorted(c.restarts), "unit_file": c.unit_file,
              "reloads": sorted(c.reloads)} for c in changes]  # fmt: skip
    journal.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(str(journal), json.dumps(items).encode(), 0o600, 0, 0)


def content_differs(entry: dict[str, Any]) -> bool:
    current = file_state(entry["path"])
    return current is None or current[0] != entry["sha256"]


def ensure_account(user: str, group: str, home: str) -> None:
    try:
        grp.getgrnam(group)
    except KeyError:
        run(["groupadd", "--system", group])
    try:
        pwd.getpwnam(user)
    except KeyError:
        run(["useradd", "--system", "--gid", group, "--home-dir", home, "--no-create-home",
             "--shell", "/usr/sbin/nologin", user])  # fmt: skip


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
    """Generate a secret once; an existing one is never replaced (sessions and tokens rely on it)."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        return False
    write_atomically(path, secrets.token_urlsafe(48).encode(), 0o600, *ids(owner, group))
    return True


def file_state(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None
    return digest, st.st_mode & 0o7777, st.st_uid, st.st_gid


def install_file(entry: dict[str, Any], stage: Path,
                 previous: dict[str, tuple[bytes, int, int, int] | None]) -> services.Change | None:  # fmt: skip
    """Write one file if it differs; remember what it replaced so a failed check can restore it."""
    path, mode = entry["path"], entry["mode"]
    uid, gid = ids(entry["owner"], entry["group"])
    current = file_state(path)
    if current == (entry["sha256"], mode, uid, gid):
        return None
    if current is not None and current[0] == entry["sha256"]:
        os.chown(path, uid, gid)  # metadata drift only: fix in place, nothing to restart
        os.chmod(path, mode)
        return None
    if entry["payload"] is None:
        raise ApplyError(f"{path} changed on the host since it was read; run the deploy again")
    content = (stage / entry["payload"]).read_bytes()
    if hashlib.sha256(content).hexdigest() != entry["sha256"]:
        raise ApplyError(f"staged copy of {path} is corrupt; run the deploy again")
    if current is None:
        previous[path] = None
    else:
        previous[path] = (Path(path).read_bytes(), current[1], current[2], current[3])
    write_atomically(path, content, mode, uid, gid)
    return services.Change(path, frozenset(entry["restarts"]), entry["unit_file"],
                           frozenset(entry.get("reloads", ())))  # fmt: skip


def synapse_check_command(check: dict[str, Any] | None, changes: list[services.Change],
                          stage: Path) -> str | None:  # fmt: skip
    """The one command checking every Synapse config this run changed, or None."""
    configs = [c for c in changes if not c.unit_file and c.restarts and not c.reloads]
    if not check or not configs:
        return None
    if any(services.EVERY_PROCESS in c.restarts or services.MAIN in c.restarts for c in configs):
        names = ["--all"]
    else:
        names = sorted({n for c in configs for n in c.restarts})
    import shlex

    return " ".join(shlex.quote(a) for a in [check["python"], str(stage / "synapse_check.py"),
                                             check["homeserver"], check["conf_d"],
                                             check["workers_dir"], *names])  # fmt: skip


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


def run_checks(checks: dict[str, str],
               previous: dict[str, tuple[bytes, int, int, int] | None]) -> None:  # fmt: skip
    """Validate the new files before any process sees them; on failure put the old ones back."""
    for check, path in checks.items():
        result = subprocess.run(["sh", "-c", check], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            for changed, old in previous.items():
                if old is None:
                    os.unlink(changed)
                else:
                    write_atomically(changed, *old)
            output = (result.stderr + result.stdout).strip()
            raise ApplyError(f"{path} was refused; the previous files were put back and no "
                             f"process was touched:\n{output}")


def write_atomically(path: str, content: bytes, mode: int, uid: int, gid: int) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stale_files(manifest: dict[str, Any]) -> list[tuple[str, services.Change]]:
    """Owned files (by our naming) that the plan no longer has, with what removing them means."""
    wanted = {entry["path"] for entry in manifest["files"]}
    found = {path for pattern in manifest["owned_globs"] for path in glob.glob(pattern)}
    return [(path, services.stale_change(path, manifest["systemd_dir"]))
            for path in sorted(found)
            if path not in wanted and os.path.isfile(path)
            and services.is_owned(path, manifest["owned_globs"])]  # fmt: skip


def remove_owned_file(path: str, systemd_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if path.startswith(systemd_dir + "/"):
        with contextlib.suppress(OSError):  # the drop-in directory, once empty
            os.rmdir(os.path.dirname(path))


def remove_leftover_temporaries(manifest: dict[str, Any]) -> None:
    """Temporary files a cut run left behind; never a live file."""
    for directory in {os.path.dirname(e["path"]) for e in manifest["files"]}:
        for tmp in glob.glob(os.path.join(glob.escape(directory), f".*{TMP_SUFFIX}")):
            os.unlink(tmp)


def left_alone(manifest: dict[str, Any]) -> list[str]:
    """Files in directories we write to that do not match our naming: never touched, listed."""
    wanted = {e["path"] for e in manifest["files"]}
    found = []
    for directory in manifest.get("watched_dirs", []):
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            if (os.path.isfile(path) and path not in wanted
                    and not services.is_owned(path, manifest["owned_globs"])):  # fmt: skip
                found.append(path)
    return found


def unit_states(systemd_dir: str, planned: list[str],
                extra: list[str]) -> dict[str, services.UnitState]:  # fmt: skip
    """State of every matrix-synapse* unit loaded or enabled, of every planned one, and of
    ``extra`` units (those reloaded on a config change)."""
    enabled = {os.path.basename(p) for p in glob.glob(f"{systemd_dir}/*.wants/matrix-synapse*")}
    listed = list_units(["matrix-synapse*", *extra])
    names = enabled | set(listed) | {services.MAIN_UNIT, services.TARGET_UNIT} | set(extra)
    names |= {services.worker_unit(n) for n in planned}
    # A unit list-units does not show is not loaded: UnitState's defaults say so.
    return {unit: services.UnitState(*listed.get(unit, ("not-found", "inactive")), unit in enabled)
            for unit in names}  # fmt: skip


def list_units(patterns: list[str]) -> dict[str, tuple[str, str]]:
    """(load, active) state by unit, in one cheap call (``systemctl show`` costs seconds at 1,000
    units: it asks systemd one unit at a time)."""
    out = run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full",
               *patterns]).stdout  # fmt: skip
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
            raise ApplyError(f"{' '.join(command[:2])} failed: {result.stderr.strip()}\n"
                             + failure_report(units))  # fmt: skip


def wait_until_ready(units: list[str], readiness: dict[str, Any]) -> None:
    """Wait until each unit is active and answers /health, and Redis counts every process."""
    timeout = readiness.get("timeout", 0)
    if not units or not timeout:
        return
    deadline = time.monotonic() + timeout
    health = readiness.get("health_ports", {})
    pending = set(units)
    redis_ok = readiness.get("redis") is None
    while True:
        states = list_units(["matrix-synapse*"]) if pending else {}
        for unit in sorted(pending):
            if states.get(unit, ("", ""))[1] == "active" and (
                    unit not in health or http_ok(health[unit])):  # fmt: skip
                pending.discard(unit)
        if not redis_ok:
            redis_ok = redis_subscribers(readiness["redis"]) >= readiness["redis"]["subscribers"]
        if not pending and redis_ok:
            return
        if time.monotonic() >= deadline:
            waiting = sorted(pending) or [f"Redis: fewer than {readiness['redis']['subscribers']} "
                                          "processes subscribed"]  # fmt: skip
            raise ApplyError(f"not ready after {timeout} s (matrix_synapse_readiness_timeout): "
                             + ", ".join(waiting) + "\n" + failure_report(sorted(pending)))  # fmt: skip
        time.sleep(1)


def http_ok(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def redis_subscribers(redis: dict[str, Any]) -> int:
    """``PUBSUB NUMSUB <channel>`` over a raw socket (no redis-cli needed)."""
    import socket

    channel = redis["channel"].encode()
    request = b"*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    try:
        if redis.get("path"):
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(2)
            conn.connect(redis["path"])
        else:
            conn = socket.create_connection((redis["host"], redis["port"]), timeout=2)
        with conn:
            conn.sendall(request)
            reply = b""
            while not any(line.startswith(b":") for line in reply.split(b"\r\n")[:-1]):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return -1
    # Reply: *2 / $<len> / <channel> / :<count>
    counts = [line for line in reply.split(b"\r\n") if line.startswith(b":")]
    return int(counts[0][1:]) if counts else -1


def failure_report(units: list[str]) -> str:
    """Name each unit that is not active, with the tail of its journal."""
    lines = []
    states = parse_show(run(["systemctl", "show", "--property=Id,ActiveState", *units]).stdout)
    for unit in units:
        state = states.get(unit, {}).get("ActiveState", "unknown")
        if state != "active":
            tail = run(["journalctl", "--no-pager", "-n", "15", "-u", unit]).stdout.strip()
            lines.append(f"--- {unit} is {state}; journal tail:\n{tail}")
    return "\n".join(lines)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ApplyError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
