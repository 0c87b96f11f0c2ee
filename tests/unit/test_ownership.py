"""Which files are ours and which are stale: one rule, the same answer on both sides (issue 9,
bug 2: the controller used fnmatch, the host glob, so a dotfile or a file in a subfolder was
previewed as "Will remove" on every run and never removed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from deploys.core.drift import FileState, HostState, compare
from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.restarts import restart_spec
from deploys.core.settings import parse_settings
from deploys.host import apply as host_apply, batch, prerequisites
from deploys.host.manifest import Account, BatchManifest, FileEntry, Manifest, Readiness
from deploys.host.ownership import is_owned, secret_present
from tests.support.settings_data import make_data


@pytest.mark.parametrize(
    ("path", "owned"),
    [
        ("/c/workers/generic-9.yaml", True),
        ("/c/workers/.generic-9.yaml", False),  # hidden: the shell's * skips it
        ("/c/workers/old/generic-9.yaml", False),  # * never crosses a /
        ("/c/workers/README", False),
        ("/s/matrix-synapse-worker@g.service.d/50-limits.conf", True),
        ("/s/matrix-synapse-worker@g.service.d/.50-limits.conf", False),
        ("/s/x/matrix-synapse-worker@g.service.d/50-limits.conf", False),
    ],
)
def test_is_owned_has_glob_semantics(path: str, owned: bool) -> None:
    globs = ("/c/workers/*.yaml", "/s/matrix-synapse-worker@*.service.d/50-limits.conf")
    assert is_owned(path, globs) is owned


def test_controller_and_host_agree_on_stale_and_foreign_files(tmp_path: Path) -> None:
    settings = parse_settings(
        make_data(
            matrix_synapse_workers_enabled=True,
            matrix_synapse_config_dir=str(tmp_path / "etc/matrix-synapse"),
            matrix_synapse_systemd_dir=str(tmp_path / "etc/systemd/system"),
        )
    )
    desired = desired_state(settings, build_plan(settings, "h"))
    for f in desired.files.values():
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_bytes(f.content)
    workers = tmp_path / "etc/matrix-synapse/workers"
    foreign = [workers / ".notes.yaml", workers / "old/generic-99.yaml", workers / "README"]
    stale = workers / "generic-99.yaml"
    for path in [*foreign, stale]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("worker_name: x\n")

    # The controller's view: every file the fact's find would list under the config dir.
    files = {
        str(p): FileState(0o640, "root", "root", hashlib.sha256(p.read_bytes()).hexdigest())
        for p in (tmp_path / "etc").rglob("*")
        if p.is_file()
    }
    drift = compare(desired, HostState(files=files))
    # The host's view: what it finds on disk, with the same globs and shared directories.
    manifest = Manifest(
        batch=BatchManifest(
            files=tuple(FileEntry(p, "", 0o640, "root", "root", None) for p in desired.files),
            lock_path="/unused",
            lock_timeout=0,
            owned_globs=desired.owned_globs,
        ),
        journal_path="/unused",
        account=Account("root", "root", "/root"),
        directories=(),
        secrets=(),
        signing_key=None,
        synapse_check=None,
        changes=(),
        systemd_dir=settings.systemd_dir,
        planned_workers=(),
        reloaded_units=(),
        shared_dirs=desired.shared_dirs,
        readiness=Readiness(0),
        drain=None,
        restarts=restart_spec(settings, build_plan(settings, "h")),
    )
    host_stale = batch.find_stale(manifest.batch)

    assert list(drift.files.stale) == host_stale == [str(stale)]
    assert (
        set(drift.left_alone)
        == set(host_apply.left_alone(manifest))
        == {
            str(workers / ".notes.yaml"),
            str(workers / "README"),
        }
    )


@pytest.mark.parametrize(("size", "present"), [(None, False), (0, False), (1, True), (64, True)])
def test_a_secret_is_present_when_its_file_is_not_empty(size: int | None, present: bool) -> None:
    assert secret_present(size) is present


def test_the_host_regenerates_an_empty_secret_and_keeps_a_real_one(tmp_path: Path) -> None:
    # The same rule on the host: an empty file (e.g. a disk that filled up) is not a secret.
    empty, kept = tmp_path / "empty", tmp_path / "kept"
    empty.write_bytes(b"")
    kept.write_bytes(b"do-not-replace")
    assert prerequisites.ensure_secret(str(empty), "root", "root") is True
    assert prerequisites.ensure_secret(str(kept), "root", "root") is False
    assert len(empty.read_bytes()) > 32 and kept.read_bytes() == b"do-not-replace"
