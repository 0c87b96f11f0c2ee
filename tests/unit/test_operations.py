"""Every operation, pyinfra-style: fact values -> the commands it yields, or a noop.

Operations run through ``op._inner`` with a fake host answering each fact with a canned value
(tests/support/pyinfra_fake.py), as pyinfra's own operation tests do. What the yielded command
does on a host is tested for real elsewhere (test_host_apply, test_batch_real, integration).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import tarfile
from typing import Any

import pytest
from pyinfra.api import OperationError

from deploys.core.drift import FileState, HostState, sha256
from deploys.core.plan import build_plan
from deploys.core.postgres import ConnectionRule
from deploys.core.render import desired_state
from deploys.core.restarts import restart_spec, topology
from deploys.core.settings import parse_settings
from deploys.facts.files import FileLines, FileStates
from deploys.facts.install import Installation, SynapseInstallation
from deploys.facts.postgres import Database, PostgresDatabase
from deploys.facts.synapse import SynapseHostState
from deploys.host.manifest import BatchManifest, Manifest, from_json
from deploys.host.restarts import topology_json
from deploys.host.units import MAIN_UNIT, TARGET_UNIT, UnitState, worker_unit
from deploys.operations.files import BatchFile, batch
from deploys.operations.install import install_synapse
from deploys.operations.postgres import postgres_database
from deploys.operations.synapse import apply_desired_state
from tests.support.pyinfra_fake import run_operation
from tests.support.settings_data import make_data


def shipped(stdin: str) -> dict[str, bytes]:
    """The archive an apply command carries on stdin: member name -> content."""
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(stdin)), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


# --- install_synapse ----------------------------------------------------------------------------

INSTALL = {"packages": ["redis-server", "nginx-light"], "venv_path": "/opt/v", "version": "1.2.3"}


@pytest.mark.parametrize(
    ("installed", "commands"),
    [
        (Installation((), "1.2.3"), []),
        (Installation(("nginx-light",), "1.2.3"), ["sh -c 'the script'"]),
        (Installation((), "1.2.2"), ["sh -c 'the script'"]),  # a new pin upgrades
        (Installation((), None), ["sh -c 'the script'"]),
    ],
)
def test_install_synapse(installed: Installation, commands: list[str]) -> None:
    outcome = run_operation(
        install_synapse, {SynapseInstallation: installed}, script="the script", **INSTALL
    )
    assert outcome.shell == commands
    assert bool(outcome.host.noops) == (commands == [])


# --- postgres_database --------------------------------------------------------------------------


def scram_verifier(password: str, salt: bytes = b"0123456789abcdef", iterations: int = 4096) -> str:
    """PostgreSQL's stored SCRAM-SHA-256 verifier for ``password`` (RFC 5802 / 7677)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = base64.b64encode(hashlib.sha256(client_key).digest()).decode()
    server = base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode()
    return f"SCRAM-SHA-256${iterations}:{base64.b64encode(salt).decode()}${stored}:{server}"


PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres"
RESTART = "systemctl restart postgresql"
# One planned worker: needs 10 + 3 + 2 + 20 = 35 connections; generous: 100 (33 workers).
POSTGRES = {
    "user": "synapse",
    "dbname": "synapse",
    "password": "pw",
    "connections": ConnectionRule(10, 3, 32, frozenset({"w"})),
}
RUNNING = ("matrix-synapse.service",)


@pytest.mark.parametrize(
    ("database", "commands"),
    [
        (Database(scram_verifier("pw"), ("C", "C"), 200, RUNNING), []),
        (Database(None, None, None), [PSQL, RESTART]),  # PostgreSQL just installed
        (Database(scram_verifier("old"), ("C", "C"), 200, RUNNING), [PSQL]),  # new password
        (Database(None, ("C", "C"), 200, RUNNING), [PSQL]),  # role missing
        (Database(scram_verifier("pw"), ("C", "C"), 30, RUNNING), [PSQL, RESTART]),  # too few
    ],
    ids=["as-planned", "fresh", "password", "no-role", "max-connections"],
)
def test_postgres_database(database: Database, commands: list[str]) -> None:
    outcome = run_operation(postgres_database, {PostgresDatabase: database}, sql="SQL", **POSTGRES)
    assert outcome.shell == commands
    assert all(stdin.startswith("SQL") for stdin in outcome.stdin[:1])  # SQL (password) on stdin
    assert bool(outcome.host.noops) == (commands == [])


def test_postgres_database_refuses_a_database_with_another_collation() -> None:
    with pytest.raises(OperationError, match=r"collation .*en_US.UTF-8.*Synapse needs C"):
        run_operation(
            postgres_database,
            {PostgresDatabase: Database(None, ("en_US.UTF-8", "en_US.UTF-8"), 200, RUNNING)},
            sql="SQL",
            **POSTGRES,
        )


# --- files.batch --------------------------------------------------------------------------------

DEMO = [BatchFile(f"/etc/demo/{n}.conf", content=f"id = {n}\n", mode=0o640) for n in range(3)]
MAIN = BatchFile("/etc/demo/main.conf", content="main\n", check="demo --check")


def state_of(f: BatchFile, **changes: Any) -> FileState:
    content = f.content.encode() if isinstance(f.content, str) else f.content
    state = {"mode": f.mode, "owner": f.owner, "group": f.group, "sha256": sha256(content)}
    return FileState(**{**state, "size": len(content), **changes})  # type: ignore[arg-type]


def converged() -> dict[str, FileState]:
    return {f.path: state_of(f) for f in [*DEMO, MAIN]}


@pytest.mark.parametrize(
    ("found", "payloads", "stale"),
    [
        (converged(), None, ()),  # None: noop
        ({**converged(), "/etc/demo/1.conf": state_of(DEMO[1], sha256="0" * 64)}, {"1"}, ()),
        ({k: v for k, v in converged().items() if k != MAIN.path}, {"main"}, ()),
        ({**converged(), "/etc/demo/2.conf": state_of(DEMO[2], mode=0o600)}, set(), ()),
        ({**converged(), "/etc/demo/9.conf": state_of(DEMO[0])}, set(), ("/etc/demo/9.conf",)),
    ],
    ids=["converged", "one-modified", "one-new", "mode-only", "stale"],
)
def test_batch(found: dict[str, FileState], payloads: set[str] | None, stale: tuple) -> None:
    outcome = run_operation(
        batch,
        {FileStates: found},
        files=[*DEMO, MAIN],
        owned_globs=["/etc/demo/[0-9]*.conf"],
        on_change="cat > /tmp/changed",
    )
    # One fact read: the files not covered by a glob by path, the rest by the glob.
    ((fact, arguments),) = outcome.host.reads
    assert fact is FileStates
    assert arguments == {"paths": [MAIN.path], "globs": ["/etc/demo/[0-9]*.conf"]}
    if payloads is None:
        assert outcome.commands == [] and outcome.host.noops == ["4 files already as planned"]
        return
    (command,) = outcome.shell
    assert "python3 -m host.batch" in command
    archive = shipped(outcome.stdin[0])
    manifest = from_json(BatchManifest, archive["manifest.json"])
    with_payload = {e.path.rsplit("/", 1)[1][:-5] for e in manifest.files if e.payload}
    assert with_payload == payloads
    for e in manifest.files:
        if e.payload:
            assert sha256(archive[e.payload]) == e.sha256
    assert manifest.read_stale == stale
    assert manifest.on_change == "cat > /tmp/changed"
    assert {e.path: e.check for e in manifest.files}[MAIN.path] == "demo --check"
    assert "host/batch.py" in archive


def test_batch_renders_templates_with_their_context(tmp_path) -> None:
    template = tmp_path / "demo.conf.j2"
    template.write_text("port = {{ port }}\n")
    outcome = run_operation(
        batch,
        {FileStates: {}},
        files=[BatchFile("/etc/demo/t.conf", template=str(template), context={"port": 8080})],
    )
    archive = shipped(outcome.stdin[0])
    (entry,) = from_json(BatchManifest, archive["manifest.json"]).files
    assert archive[entry.payload] == b"port = 8080\n"  # type: ignore[index]


def test_batch_file_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of content= and template="):
        run_operation(batch, {FileStates: {}}, files=[BatchFile("/etc/x")])


# --- apply_desired_state ------------------------------------------------------------------------


def synapse_converged(desired, workers: list[str]) -> HostState:
    """The fact's value on a host where every file, directory, secret and unit is as planned."""
    files = {
        f.path: FileState(f.mode, f.owner, f.group, sha256(f.content), len(f.content))
        for f in desired.files.values()
    }
    for secret in (*desired.secrets, desired.signing_key):
        files[secret] = FileState(0o600, "matrix-synapse", "matrix-synapse", "0" * 64, 64)
    up = UnitState("loaded", "active", True)
    units = {MAIN_UNIT: up, TARGET_UNIT: up, "nginx.service": up}
    units |= {worker_unit(w): up for w in workers}
    directories = {d.path: (d.mode, d.owner, d.group) for d in desired.directories}
    return HostState(files=files, directories=directories, units=units)


def synapse_case(mutate, diff: bool = False, **overrides: Any) -> tuple[list[str], Any]:
    settings = parse_settings(make_data(matrix_synapse_workers_enabled=True, **overrides))
    plan = build_plan(settings, "h")
    desired = desired_state(settings, plan)
    workers = [w.name for w in plan.workers]
    state = synapse_converged(desired, workers)
    state.applied_topology = topology_json(topology(plan))
    mutate(state, desired)
    outcome = run_operation(
        apply_desired_state,
        {SynapseHostState: state, FileLines: {}},
        diff=diff,
        desired=desired,
        planned_workers=workers,
        user="matrix-synapse",
        group="matrix-synapse",
        home="/var/lib/matrix-synapse",
        systemd_dir=settings.systemd_dir,
        lock_timeout=settings.deploy_lock_timeout,
        restarts=restart_spec(settings, plan),
    )
    return outcome.shell, outcome


def _modify(path_suffix: str):
    def mutate(state: HostState, desired) -> None:
        path = next(p for p in desired.files if p.endswith(path_suffix))
        state.files[path] = FileState(0o640, "root", "matrix-synapse", "0" * 64, 1)

    return mutate


def _empty_secret(state: HostState, desired) -> None:
    state.files[desired.secrets[0]] = FileState(0o600, "matrix-synapse", "matrix-synapse", "e", 0)


def _journal(state: HostState, desired) -> None:
    state.journal_found = True


def _stopped_worker(state: HostState, desired) -> None:
    state.units[worker_unit("generic-0")] = UnitState("loaded", "failed", True)


@pytest.mark.parametrize(
    ("mutate", "payloads", "secrets_missing"),
    [
        (lambda state, desired: None, None, False),
        (_modify("/workers/generic-0.yaml"), ["/workers/generic-0.yaml"], False),
        (_empty_secret, [], True),  # an empty secret counts as missing on both sides
        (_journal, [], False),  # owed changes: the host finishes them
        (_stopped_worker, [], False),  # nothing to write, a unit to start
    ],
    ids=["converged", "one-worker", "empty-secret", "journal", "stopped-worker"],
)
def test_apply_desired_state(mutate, payloads: list[str] | None, secrets_missing: bool) -> None:
    commands, outcome = synapse_case(mutate)
    if payloads is None:
        assert commands == [] and len(outcome.host.noops) == 1
        return
    (command,) = commands
    assert 'python3 -m host.apply "$stage"' in command
    archive = shipped(outcome.stdin[0])
    manifest = from_json(Manifest, archive["manifest.json"])
    shipped_paths = sorted(e.path for e in manifest.batch.files if e.payload)
    assert [p for p in shipped_paths] == [
        p for p in shipped_paths if any(p.endswith(s) for s in payloads)
    ]
    assert len(shipped_paths) == len(payloads)
    assert len(manifest.changes) == len(manifest.batch.files)
    assert (manifest.account.user, manifest.account.home) == (
        "matrix-synapse",
        "/var/lib/matrix-synapse",
    )


def test_the_preview_and_the_run_log_print_the_restart_waves() -> None:
    generic = {
        "matrix_synapse_workers_preset": "little-federation-helper",
        "matrix_synapse_workers_generic_workers_count": 2,
    }
    for diff in (True, False):
        _, outcome = synapse_case(_modify("/homeserver.yaml"), diff=diff, **generic)
        waves = [line for line in outcome.host.logs if line.startswith("Wave ")]
        assert waves == [
            f"Wave 1/3: restart {MAIN_UNIT} (homeserver.yaml changed)",
            f"Wave 2/3: restart {worker_unit('generic-0')}, "
            f"{worker_unit('federation-sender-0')} (homeserver.yaml changed)",
            f"Wave 3/3: restart {worker_unit('generic-1')} (homeserver.yaml changed)",
        ], diff
    _, outcome = synapse_case(
        _modify("/homeserver.yaml"), matrix_synapse_restart_strategy="all-at-once", **generic
    )
    assert len([line for line in outcome.host.logs if line.startswith("Wave ")]) == 1


def test_the_preview_stops_a_stale_worker_after_the_nginx_reload() -> None:
    stale = worker_unit("generic-9")

    def scaled_down(state: HostState, desired) -> None:
        _modify("/matrix-synapse-workers.conf")(state, desired)
        state.units[stale] = UnitState("loaded", "active", False)

    _, outcome = synapse_case(scaled_down, diff=True)
    runs = [line for line in outcome.host.logs if line.startswith("Will run: ")]
    assert runs[-2:] == [
        "Will run: systemctl reload nginx.service",
        f"Will run: systemctl stop {stale}",
    ]


def test_batch_previews_each_change_once_with_diff() -> None:
    found = {
        **converged(),
        "/etc/demo/1.conf": state_of(DEMO[1], sha256="0" * 64),
        "/etc/demo/2.conf": state_of(DEMO[2], mode=0o600),
        "/etc/demo/9.conf": state_of(DEMO[0]),
    }
    del found[MAIN.path]
    outcome = run_operation(
        batch,
        {FileStates: found, FileLines: {"/etc/demo/1.conf": ["id = old"]}},
        diff=True,
        files=[*DEMO, MAIN],
        owned_globs=["/etc/demo/[0-9]*.conf"],
    )
    logs = "\n".join(outcome.host.logs)
    for line in ("Will create", MAIN.path, "Will modify", "/etc/demo/1.conf", "Will remove"):
        assert line in logs
    assert "Will set /etc/demo/2.conf to mode 640, owner root:root" in logs
    # The old content was read in one fact, for the modified file only.
    assert [args for fact, args in outcome.host.reads if fact is FileLines] == [
        {"paths": ["/etc/demo/1.conf"]}
    ]
