"""The host program's steps (deploys/host/apply.py and the modules it builds on) run for real, as
root, on real files under a temporary root: the manifest and the staged files are built by the
controller's own code (render -> compare -> operations.synapse.build_manifest -> archive) and
unpacked as the host would. systemd cannot act on temporary units, so these tests stop before
the systemd step (``change_files``: steps 2 to 7) or call the readiness steps directly; the
integration tests cover the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import grp
import hashlib
import http.server
import io
import json
import os
import pwd
import socket
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploys.core.drift import FileState, HostState, compare
from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.restarts import restart_spec
from deploys.core.settings import parse_settings
from deploys.host import (
    apply as host_apply,
    readiness as host_readiness,
    restarts as host_restarts,
    systemd,
    units as host_units,
)
from deploys.host.batch import ApplyError
from deploys.host.manifest import (
    Account,
    FileEntry,
    Manifest,
    Readiness,
    RedisCheck,
    from_json,
    to_json,
)
from deploys.operations.files import archive
from deploys.operations.synapse import build_manifest
from tests.support.settings_data import make_data

REPO = Path(__file__).resolve().parents[2]
ACCOUNT_USER, ACCOUNT_GROUP = "daemon", "daemon"  # exist on Debian; no account created here
LOG_WARNING = {"matrix_synapse_log_level": "WARNING"}


class Root:
    """A host's file system under ``tmp_path``, deployed to with the host program's own steps."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "root"
        self.path.mkdir()
        self.journal = self.path / "var/lib/pyinfra-synapse/pending-changes.json"
        self.runs = 0
        self.tmp = tmp_path

    def settings(self, **overrides: Any):
        root = self.path
        defaults = dict(
            matrix_synapse_config_dir=f"{root}/etc/matrix-synapse",
            matrix_synapse_systemd_dir=f"{root}/etc/systemd/system",
            matrix_synapse_data_dir=f"{root}/var/lib/matrix-synapse",
            matrix_synapse_media_store_path=f"{root}/var/lib/matrix-synapse/media_store",
            matrix_synapse_nginx_config_path=f"{root}/etc/nginx/conf.d/synapse.conf",
            matrix_synapse_metrics_file_sd_path=f"{root}/etc/prometheus/file_sd/synapse.json",
            matrix_synapse_user=ACCOUNT_USER,
            matrix_synapse_group=ACCOUNT_GROUP,
            matrix_synapse_database_password="not-used-at-load",
            matrix_synapse_workers_enabled=True,
            matrix_synapse_workers_preset="one-of-each",
            matrix_synapse_config_check=False,
        )
        return parse_settings(make_data(**{**defaults, **overrides}))

    def read(self, **overrides: Any) -> tuple[Manifest, Path]:
        """What the controller does: read the host, compare, build the archive; unpacked into a
        fresh stage directory as the host would. Returns (manifest, stage)."""
        settings = self.settings(**overrides)
        plan = build_plan(settings, "host-a")
        desired = desired_state(settings, plan)
        host_state = self.host_state()
        manifest, uploads = build_manifest(
            desired,
            compare(desired, host_state),
            host_state,
            [w.name for w in plan.workers],
            Account(ACCOUNT_USER, ACCOUNT_GROUP, f"{self.path}/var/lib/matrix-synapse"),
            settings.systemd_dir,
            5,
            restart_spec(settings, plan),
        )
        self.runs += 1
        stage = self.tmp / f"stage-{self.runs}"
        stage.mkdir()
        tgz = archive(to_json(manifest), uploads)
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            tar.extractall(stage, filter="data")
        shipped = from_json(Manifest, (stage / "manifest.json").read_bytes())
        # The only host paths the archive fixes: the journal and the lock.
        batch = dataclasses.replace(shipped.batch, lock_path=str(self.tmp / "lock"))
        return dataclasses.replace(shipped, journal_path=str(self.journal), batch=batch), stage

    def host_state(self) -> HostState:
        """What the host fact reports: every file with sha256, mode and owner; the journal."""
        state = HostState(journal_found=self.journal.exists())
        for path in sorted(self.path.rglob("*")):
            if path.is_file() and path != self.journal:
                st = path.stat()
                state.files[str(path)] = FileState(
                    stat.S_IMODE(st.st_mode),
                    pwd.getpwuid(st.st_uid).pw_name,
                    grp.getgrgid(st.st_gid).gr_name,
                    sha256(path.read_bytes()),
                    st.st_size,
                )
        return state

    def files(self) -> dict[str, tuple[str, int, int, int]]:
        """Every file under the root: sha256, mode, uid, gid."""
        found = {}
        for path in sorted(self.path.rglob("*")):
            if path.is_file() or path.is_symlink():
                st = path.lstat()
                found[str(path)] = (
                    sha256(path.read_bytes()),
                    stat.S_IMODE(st.st_mode),
                    st.st_uid,
                    st.st_gid,
                )
        return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def apply_files(manifest: Manifest, stage: Path) -> host_apply.FilesRun:
    """The host program up to (not including) the systemd step."""
    return host_apply.change_files(manifest, stage)


def deployed(root: Root, **overrides: Any) -> None:
    """A finished run: files in place and, its services ready, no journal."""
    apply_files(*root.read(**overrides))
    root.journal.unlink(missing_ok=True)


def entry(manifest: Manifest, suffix: str) -> FileEntry:
    return next(e for e in manifest.batch.files if e.path.endswith(suffix))


def with_entry(manifest: Manifest, suffix: str, **changes: Any) -> Manifest:
    """``manifest`` with the file entry ending in ``suffix`` changed."""
    files = tuple(
        dataclasses.replace(e, **changes) if e.path.endswith(suffix) else e
        for e in manifest.batch.files
    )
    return dataclasses.replace(manifest, batch=dataclasses.replace(manifest.batch, files=files))


def journal_items(root: Root) -> list[dict[str, Any]]:
    return json.loads(root.journal.read_text())


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: even root cannot create, replace or link entries in the directory."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# --- Stale reads (serialization) and bug 12 -----------------------------------------------------


def test_a_first_run_writes_every_file_and_journals_its_changes(root: Root) -> None:
    manifest, stage = root.read()
    apply_files(manifest, stage)
    for e in manifest.batch.files:
        assert sha256(Path(e.path).read_bytes()) == e.sha256, e.path
    assert {i["path"] for i in journal_items(root)} == {e.path for e in manifest.batch.files}
    assert not glob.glob(f"{root.path}/**/.*pyinfra-synapse-tmp*", recursive=True)


def test_a_file_changed_since_the_read_refuses_the_run_before_any_change(root: Root) -> None:
    deployed(root)
    manifest, stage = root.read(**LOG_WARNING)  # this run's read of the host...
    log = Path(entry(manifest, "/log.yaml").path)
    log.write_text(log.read_text().replace("INFO", "DEBUG"))  # ...then another deploy ran
    before = root.files()
    with pytest.raises(ApplyError) as refused:
        apply_files(manifest, stage)
    assert (
        f"{log} changed on the host since this run read it (another deploy ran meanwhile?); "
        "nothing was changed; run the deploy again"
    ) in str(refused.value)
    assert root.files() == before  # the other run's change stands; no journal of its own
    assert not root.journal.exists()


def test_an_owned_file_that_appeared_since_the_read_is_not_removed(root: Root) -> None:
    deployed(root, matrix_synapse_workers_enabled=False)
    manifest, stage = root.read(matrix_synapse_workers_enabled=False, **LOG_WARNING)
    deployed(root)  # another controller, with workers, ran meanwhile
    before = root.files()
    with pytest.raises(ApplyError) as refused:
        apply_files(manifest, stage)
    assert "appeared on the host since this run read it, and this run would remove it" in str(
        refused.value
    )
    assert "nothing was changed" in str(refused.value)
    assert root.files() == before and not root.journal.exists()


def test_concurrent_runs_with_the_same_settings_converge(root: Root) -> None:
    deployed(root)
    first, first_stage = root.read(**LOG_WARNING)
    second, second_stage = root.read(**LOG_WARNING)  # both read before either ran
    apply_files(first, first_stage)
    root.journal.unlink()  # the first run finished
    run = apply_files(second, second_stage)
    assert run.work.written == [] and run.work.writes == []
    assert not root.journal.exists()  # changes nothing: no journal
    assert "level: WARNING" in Path(entry(second, "/log.yaml").path).read_text()


def test_a_run_that_changes_nothing_keeps_an_earlier_journal_as_it_was(root: Root) -> None:
    manifest, stage = root.read()
    apply_files(manifest, stage)  # an interrupted run: files written, restarts still owed
    owed = root.journal.read_bytes()
    run = apply_files(*root.read())
    assert run.work.writes == [] and len(run.owed) == len(json.loads(owed))
    assert root.journal.read_bytes() == owed


def test_a_missing_staged_copy_is_a_clear_error_before_any_change(root: Root) -> None:
    deployed(root)
    manifest, stage = root.read(**LOG_WARNING)
    # A controller that saw no change but the host differs.
    manifest = with_entry(manifest, "/log.yaml", payload=None)
    log = entry(manifest, "/log.yaml")
    before = root.files()
    with pytest.raises(ApplyError, match=f"archive holds no new copy of {log.path}"):
        apply_files(manifest, stage)
    assert root.files() == before and not root.journal.exists()


# --- Bug 8: the journal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"path": "/etc/x"}',
        b'[{"path": "/etc/x", "restarts": ["*"]}]',
        b'[{"path": "/etc/x", "restarts": "*", "unit_file": false, "reloads": []}]',
    ],
    ids=["empty", "not-json", "not-a-list", "missing-keys", "wrong-type"],
)
def test_a_corrupt_journal_fails_the_run_saying_how_to_recover(root: Root, content: bytes) -> None:
    deployed(root)
    root.journal.parent.mkdir(parents=True, exist_ok=True)
    root.journal.write_bytes(content)
    manifest, stage = root.read(**LOG_WARNING)
    before = root.files()
    with pytest.raises(ApplyError) as failed:
        apply_files(manifest, stage)
    message = str(failed.value)
    assert f"the journal {root.journal} of changes an interrupted run still owes is corrupt" in (
        message
    )
    assert '"restarts": [str]' in message  # what it should contain
    assert "restart matrix-synapse.target (and reload nginx) by hand" in message
    assert "forgoes the owed restarts" in message
    assert root.files() == before and root.journal.read_bytes() == content


def test_journal_entries_are_merged_by_path(root: Root) -> None:
    manifest, stage = root.read()
    apply_files(manifest, stage)  # interrupted: every file journaled
    homeserver = entry(manifest, "/homeserver.yaml").path
    worker = entry(manifest, "/workers/generic-0.yaml").path
    items = journal_items(root)
    # An older journal with a duplicate, and a worker entry owing a different restart.
    items.append({"path": homeserver, "restarts": ["main"], "unit_file": False, "reloads": []})
    items.append({"path": worker, "restarts": ["other"], "unit_file": False, "reloads": []})
    root.journal.write_text(json.dumps(items))
    apply_files(*root.read(**LOG_WARNING))  # this run changes files again: journal rewritten
    paths = [i["path"] for i in journal_items(root)]
    assert len(paths) == len(set(paths))
    merged = {i["path"]: i for i in journal_items(root)}
    assert merged[homeserver]["restarts"] == ["*", "main"]
    assert merged[worker]["restarts"] == ["generic-0", "other"]


# --- Bug 9: a write that fails half-way -----------------------------------------------------


def test_a_write_failing_half_way_puts_back_every_file_and_the_journal(root: Root) -> None:
    deployed(root)
    log = Path(root.settings().config_dir, "log.yaml")
    os.chmod(log, 0o600)  # metadata drift the rollback must bring back too (content the same)
    owed = b'[{"path": "/x/y.yaml", "restarts": ["*"], "unit_file": false, "reloads": []}]'
    root.journal.write_bytes(owed)  # an earlier interrupted run's journal stays exactly as it was
    root.journal.chmod(0o600)
    before = root.files()
    # New config (log level), a new worker file and new unit files (another venv): the config
    # files come first in the manifest, the unit files after them, in a directory no one can write.
    changed = {
        **LOG_WARNING,
        "matrix_synapse_venv_path": "/opt/other-venv",
        "matrix_synapse_workers_generic_workers_count": 2,
    }
    manifest, stage = root.read(**changed)
    systemd_dir = Path(manifest.systemd_dir)
    with immutable(systemd_dir), pytest.raises(ApplyError) as failed:
        apply_files(manifest, stage)
    message = str(failed.value)
    assert f"cannot write {systemd_dir}/matrix-synapse.service: Operation not permitted" in message
    assert "every file this run had written was put back" in message
    assert root.files() == before  # content, mode, owner; new files gone; the journal as it was
    assert not glob.glob(f"{root.path}/**/.*pyinfra-synapse-tmp*", recursive=True)


def test_a_write_failing_on_a_new_file_leaves_no_journal(root: Root) -> None:
    deployed(root)
    manifest, stage = root.read(matrix_synapse_venv_path="/opt/other-venv", **LOG_WARNING)
    # A regular file where the directory of a file to write should be.
    blocked = Path(manifest.systemd_dir, "matrix-synapse.service.d")
    limits = {"matrix_synapse_systemd_resource_limits": {"MemoryMax": "2G"}}
    manifest, stage = root.read(**LOG_WARNING, **limits)
    blocked.write_text("in the way\n")
    before = root.files()
    with pytest.raises(ApplyError) as failed:
        apply_files(manifest, stage)
    assert f"cannot write {blocked}/50-pyinfra-synapse-limits.conf: File exists" in str(
        failed.value
    )
    assert root.files() == before and not root.journal.exists()


# --- Checks, and bug 3: replayed changes are checked like new ones ----------------------------


def test_a_refused_check_puts_the_previous_files_back(root: Root) -> None:
    deployed(root)
    before = root.files()
    manifest, stage = root.read(**LOG_WARNING)
    manifest = with_entry(manifest, "/log.yaml", check="echo 'no such level' >&2; exit 3")
    with pytest.raises(ApplyError) as refused:
        apply_files(manifest, stage)
    assert (
        "log.yaml (`echo 'no such level' >&2; exit 3`) was refused; the previous files were "
        "put back and no process was touched" in str(refused.value)
    )
    assert "no such level" in str(refused.value)
    assert root.files() == before and not root.journal.exists()


def test_a_replayed_nginx_change_is_checked(root: Root) -> None:
    manifest, stage = root.read()
    apply_files(manifest, stage)  # killed during its check: files in place, restarts owed
    owed = root.journal.read_bytes()
    manifest, stage = root.read()  # the next run: nothing left to write
    refusing = "echo 'nginx: [emerg] unknown directive' >&2; false"  # nginx -t refusing
    manifest = with_entry(manifest, "/nginx/conf.d/synapse.conf", check=refusing)
    nginx = entry(manifest, "/nginx/conf.d/synapse.conf")
    with pytest.raises(ApplyError) as refused:
        apply_files(manifest, stage)
    assert f"{nginx.path} (`{nginx.check}`) was refused" in str(refused.value)
    assert "unknown directive" in str(refused.value)
    assert root.journal.read_bytes() == owed  # the restarts are still owed


@pytest.mark.synapse
def test_a_replayed_synapse_config_is_checked_with_the_real_synapse(root: Root) -> None:
    check = {
        "matrix_synapse_config_check": True,
        "matrix_synapse_venv_path": str(REPO / ".venv"),
    }  # the real Synapse
    # Passes our validation (a pass-through setting), but Synapse cannot parse the size.
    bad = {**check, "matrix_synapse_configuration_extension": {"max_upload_size": "lots"}}
    manifest, stage = root.read(**bad)
    manifest = dataclasses.replace(manifest, synapse_check=None)  # killed during its check:
    apply_files(manifest, stage)  # new files in place, journal written, nothing restarted
    owed = root.journal.read_bytes()
    manifest, stage = root.read(**bad)  # the next run: every file already as planned
    with pytest.raises(ApplyError) as refused:
        apply_files(manifest, stage)
    message = str(refused.value)
    assert (
        "the new Synapse configuration (loaded with the installed Synapse) was refused" in message
    )
    assert "workers/media-repository-0.yaml: ValueError" in message  # the file, Synapse's words
    assert f"still owed ({root.journal})" in message
    assert root.journal.read_bytes() == owed

    manifest, stage = root.read(**check)  # fixed: the replayed and the new configs load
    apply_files(manifest, stage)
    homeserver = entry(manifest, "/homeserver.yaml").path
    assert homeserver in {i["path"] for i in journal_items(root)}  # still owed, now checked


# --- Readiness: bugs 4 and 5 --------------------------------------------------------------------


def free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving_health(address: str, port: int) -> Iterator[None]:
    """A real HTTP server answering /health, bound to ``address`` only."""

    class Server(http.server.HTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = Server((address, port), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def readiness_for(root: Root, **overrides: Any) -> Readiness:
    """The readiness section as the host receives it (through the manifest's JSON codec)."""
    settings = root.settings(matrix_synapse_readiness_timeout=30, **overrides)
    state = desired_state(settings, build_plan(settings, "host-a"))
    return from_json(Readiness, to_json(state.readiness))


@pytest.mark.parametrize(
    ("bind", "serve"),
    [
        ("127.0.0.5", "127.0.0.5"),
        ("::1", "::1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "::1"),
    ],
)
def test_health_is_probed_on_an_address_the_listener_binds(
    root: Root, bind: str, serve: str
) -> None:
    port = free_port(serve)
    readiness = readiness_for(
        root,
        matrix_synapse_bind_addresses=[bind],
        matrix_synapse_workers_enabled=False,
        matrix_synapse_http_port=port,
    )
    main = host_units.MAIN_UNIT
    host = f"[{serve}]" if ":" in serve else serve
    assert readiness.health[main] == f"http://{host}:{port}/health"
    assert host_readiness.unit_not_ready(main, ("loaded", "active"), readiness) is not None
    with serving_health(serve, port):  # bound to that address only
        assert host_readiness.unit_not_ready(main, ("loaded", "active"), readiness) is None
        assert "is activating" in host_readiness.unit_not_ready(
            main, ("loaded", "activating"), readiness
        )


def test_nginx_started_by_the_run_is_waited_for_by_its_own_criterion(root: Root) -> None:
    port = free_port("127.0.0.1")
    readiness = readiness_for(root, matrix_synapse_nginx_listen_port=port)
    up = host_units.UnitState("loaded", "active", enabled=True)
    units = {
        host_units.MAIN_UNIT: up,
        host_units.TARGET_UNIT: up,
        "nginx.service": host_units.UnitState("loaded", "inactive"),
    }
    nginx_changed = host_units.Change(
        "/etc/nginx/conf.d/x.conf", reloads=frozenset({"nginx.service"})
    )
    spec = restart_spec(root.settings(), build_plan(root.settings(), "host-a"))
    plan = host_restarts.plan_restarts([nginx_changed], spec, [], units, spec.topology)
    assert plan.waves == ()  # nothing else restarted
    assert plan.after_ready_units() == ["nginx.service"]
    assert readiness.reachable["nginx.service"] == ("127.0.0.1", port)
    problem = host_readiness.unit_not_ready("nginx.service", ("loaded", "active"), readiness)
    assert problem is not None and f"127.0.0.1:{port}" in problem
    with socket.create_server(("127.0.0.1", port)):  # nginx listening
        assert (
            host_readiness.unit_not_ready("nginx.service", ("loaded", "active"), readiness) is None
        )
    assert (
        host_readiness.unit_not_ready("nginx.service", ("loaded", "failed"), readiness)
        == "is failed"
    )


# --- The restart waves, run by the host program against a recording systemctl -------------------
# systemd cannot act on temporary units: a stand-in systemctl on PATH records every command and
# answers list-units from a file, so the wave loop, its order and its stop on a wave that never
# becomes ready run for real (the integration tests do it with systemd).

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> {log}
case "$1" in
  list-units)
    shift 5
    for u in "$@"; do
      case "$u" in *'*'*) cat {known}; continue;; esac
      if grep -qx "$u" {stuck}; then echo "$u loaded activating start x";
      else echo "$u loaded active running x"; fi
    done;;
  show)
    shift 2
    for u in "$@"; do printf 'Id=%s\\nActiveState=activating\\n\\n' "$u"; done;;
esac
exit 0
"""

WAVES = {
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_federation_sender_workers_count": 0,
    "matrix_synapse_workers_generic_workers_count": 3,
}


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A recording systemctl (and journalctl) on PATH; ``known`` lists the running units."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    paths = {n: tmp_path / f"systemctl.{n}" for n in ("log", "known", "stuck")}
    for path in paths.values():
        path.write_text("")
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(**paths))
    script.chmod(0o755)
    journalctl = bin_dir / "journalctl"
    journalctl.write_text("#!/bin/sh\necho 'last words of the unit'\n")
    journalctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return paths


def recorded(systemctl: dict[str, Path]) -> list[str]:
    return [
        line
        for line in systemctl["log"].read_text().splitlines()
        if not line.startswith(("list-units", "show"))
    ]


def waves_manifest(root: Root, systemctl: dict[str, Path], **overrides: Any) -> Manifest:
    """Main and three generic workers running (``WAVES``, then ``overrides``); readiness by
    systemd state only."""
    manifest, _ = root.read(**{**WAVES, **overrides})
    units = [
        host_units.MAIN_UNIT,
        host_units.TARGET_UNIT,
        *map(host_units.worker_unit, manifest.planned_workers),
    ]
    systemctl["known"].write_text("".join(f"{u} loaded active running x\n" for u in units))
    restarts = dataclasses.replace(
        manifest.restarts, state_path=str(root.tmp / "applied-topology.json")
    )
    return dataclasses.replace(
        manifest, readiness=Readiness(timeout=1), restarts=restarts, reloaded_units=()
    )


HOMESERVER_CHANGED = host_units.Change(
    "/etc/matrix-synapse/homeserver.yaml", frozenset({host_units.EVERY_PROCESS})
)


def test_the_host_runs_the_waves_in_order_main_first_then_one_worker_at_a_time(
    root: Root, systemctl: dict[str, Path]
) -> None:
    manifest = waves_manifest(root, systemctl)
    plan = host_apply.restart(manifest, [HOMESERVER_CHANGED])
    workers = [host_units.worker_unit(f"generic-{i}") for i in range(3)]
    assert recorded(systemctl)[-4:] == [
        f"restart {host_units.MAIN_UNIT}",
        f"restart {workers[0]}",
        f"restart {workers[1]}",
        f"restart {workers[2]}",
    ]
    assert [w["restart"] for w in plan.summary()] == [
        [host_units.MAIN_UNIT],
        *[[w] for w in workers],
    ]
    # Each wave was checked ready before the next one's command ran.
    log = systemctl["log"].read_text().splitlines()
    for unit in workers:
        restart_at = log.index(f"restart {unit}")
        assert any(unit in line for line in log[restart_at:] if line.startswith("list-units"))


def test_a_wave_that_never_becomes_ready_stops_the_run_there(
    root: Root, systemctl: dict[str, Path]
) -> None:
    manifest = waves_manifest(root, systemctl)
    stuck = host_units.worker_unit("generic-0")
    systemctl["stuck"].write_text(stuck + "\n")
    with pytest.raises(ApplyError) as failed:
        host_apply.restart(manifest, [HOMESERVER_CHANGED])
    message = str(failed.value)
    assert message.startswith(f"restart wave 2/4 ({stuck}) failed: not ready after 1 s")
    assert "matrix_synapse_readiness_timeout" in message and f"{stuck}: is activating" in message
    assert "last words of the unit" in message  # its journal tail
    assert "waves 3 to 4 were not run" in message
    later = [host_units.worker_unit("generic-1"), host_units.worker_unit("generic-2")]
    acted = [line for line in recorded(systemctl) if not line.startswith("enable")]
    assert not [line for line in acted if any(u in line for u in later)], acted
    assert not Path(manifest.restarts.state_path).exists()  # recorded only once all are ready


def test_the_applied_topology_is_recorded_once_every_wave_is_ready(
    root: Root, systemctl: dict[str, Path]
) -> None:
    manifest = waves_manifest(root, systemctl)
    host_apply.restart(manifest, [HOMESERVER_CHANGED])
    host_apply.record_topology(manifest.restarts)
    state = Path(manifest.restarts.state_path)
    assert host_restarts.parse_topology(state.read_text()) == manifest.restarts.topology
    assert stat.S_IMODE(state.stat().st_mode) == 0o644


# --- Bug 10: Redis and the error path ---------------------------------------------------------


def test_an_unreachable_redis_is_reported_as_such(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")  # nothing listens there any more
    redis = RedisCheck(host="127.0.0.1", port=port, path=None, channel="example.org", subscribers=3)
    problem = host_readiness.redis_not_ready(redis)
    assert problem is not None
    assert problem.startswith(f"cannot reach Redis at 127.0.0.1:{port}: ")
    assert "refused" in problem
    socket_path = str(tmp_path / "redis.sock")
    problem = host_readiness.redis_not_ready(dataclasses.replace(redis, path=socket_path))
    assert problem is not None and problem.startswith(f"cannot reach Redis at {socket_path}: ")


def test_failure_report_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault stand-in: systemctl and journalctl that cannot reach systemd (as on a host whose
    # systemd is gone or hung); it cannot be produced portably for real.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "journalctl"):
        script = bin_dir / tool
        script.write_text("#!/bin/sh\necho 'Failed to connect to bus: Host is down' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    unit = "matrix-synapse-worker@generic-0.service"
    report = systemd.failure_report([unit], every=True)
    assert f"the state of {unit} could not be read" in report
    assert "Failed to connect to bus" in report
    assert f"--- {unit} is unknown; journal tail:" in report
