"""Draining processes out of nginx's routing file (deploys/host/drain.py) on real files.

nginx itself is in tests/nginx/test_drain.py; here the reload is recorded, the check is a
command that passes or fails, and the file is the one the controller renders.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from deploys.core.drift import compare
from deploys.core.plan import build_plan
from deploys.core.render import NGINX_CHECK, NGINX_UNIT, desired_state
from deploys.host import apply as host_apply, drain as host_drain
from deploys.host.drain import DrainError, drain, mark_down, undrain, undrained
from deploys.host.manifest import DrainSpec
from tests.unit.test_host_apply import Root, deployed
from tests.unit.test_routing import config_for, planned

NO_FILE_SD = {"matrix_synapse_metrics_file_sd_path": None}


def server_lines(text: str) -> dict[str, list[str]]:
    """process -> its server lines (stripped)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if m := re.match(r"\s*server \S+ .*;  # (\S+)$", line):
            found.setdefault(m[1], []).append(line.strip())
    return found


def test_marking_down_touches_only_the_named_processes_and_comes_back_exactly() -> None:
    config = config_for("one-of-each")
    drained, servers = mark_down(config, ["generic-0", "stream-writer-1-typing", "pusher-0"])
    assert [p for p, _ in servers] == ["stream-writer-1-typing", "generic-0", "generic-0"]
    before, after = server_lines(config), server_lines(drained)
    for process, lines in after.items():
        if process in ("generic-0", "stream-writer-1-typing"):
            assert all(x.endswith(f" down;  # {process}") for x in lines), lines
        else:
            assert lines == before[process]
    assert undrained(drained) == config
    assert config.count(" down;") == 0  # the managed file never has one: stripping is exact


def test_draining_main_marks_its_own_server_and_every_backup_line() -> None:
    config = config_for("specialized-workers")
    drained, servers = mark_down(config, ["main"])
    lines = server_lines(drained)["main"]
    assert len(servers) == len(lines) == 6  # synapse_main + sync, room, readers, fed, user dir
    assert sum(x.endswith("backup down;  # main") for x in lines) == 5
    assert undrained(drained) == config


@pytest.fixture
def live(tmp_path: Path) -> tuple[DrainSpec, Path, list[str]]:
    """A rendered routing file (0640, group daemon), its spec and a reload recorder."""
    path = tmp_path / "synapse-workers.conf"
    path.write_text(config_for("generic-only"))
    os.chown(path, 0, 1)
    path.chmod(0o640)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = DrainSpec(path=str(path), sha256=sha, grace=0.0, unit=NGINX_UNIT, check="true")
    return spec, path, []


def test_drain_and_undrain_rewrite_atomically_with_mode_and_owner_and_reload(
    live: tuple[DrainSpec, Path, list[str]],
) -> None:
    spec, path, reloads = live
    managed = path.read_bytes()
    inode = path.stat().st_ino
    done = drain(spec, ["generic-1"], reload=lambda s: reloads.append(s.path))
    assert [p for p, _ in done.servers] == ["generic-1", "generic-1"]  # by user, by room
    st = path.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 0, 1)
    assert st.st_ino != inode  # renamed into place, never written in place
    assert server_lines(path.read_text())["generic-1"][0].endswith("down;  # generic-1")
    assert reloads == [str(path)]
    assert undrain(spec, reload=lambda s: reloads.append(s.path))
    assert path.read_bytes() == managed and len(reloads) == 2
    assert not undrain(spec, reload=lambda s: reloads.append(s.path))  # nothing drained
    assert len(reloads) == 2
    assert drain(spec, ["pusher-0"], reload=lambda s: reloads.append(s.path)).servers == ()
    assert path.read_bytes() == managed and len(reloads) == 2  # no server line: no work


def test_a_drain_only_edits_the_managed_file(live: tuple[DrainSpec, Path, list[str]]) -> None:
    spec, path, reloads = live
    path.write_text(path.read_text() + "# edited by hand\n")
    edited = path.read_bytes()
    with pytest.raises(DrainError, match="not the routing file this deploy manages"):
        drain(spec, ["generic-1"], reload=lambda s: reloads.append(s.path))
    with pytest.raises(DrainError, match="not the routing file this deploy manages"):
        undrain(spec, reload=lambda s: reloads.append(s.path))
    assert path.read_bytes() == edited and reloads == []


def test_a_refused_check_or_reload_puts_the_managed_file_back(
    live: tuple[DrainSpec, Path, list[str]],
) -> None:
    spec, path, reloads = live
    managed = path.read_bytes()
    refused = DrainSpec(spec.path, spec.sha256, 0.0, NGINX_UNIT, "echo bad config >&2; false")
    with pytest.raises(DrainError, match="bad config"):
        drain(refused, ["generic-1"], reload=lambda s: reloads.append(s.path))
    assert path.read_bytes() == managed and reloads == []

    def failing(_: DrainSpec) -> None:
        raise DrainError("systemctl reload nginx.service failed: not running")

    with pytest.raises(DrainError, match="not running"):
        drain(spec, ["generic-1"], reload=failing)
    assert path.read_bytes() == managed


def test_the_drain_waits_for_open_connections_at_most_the_grace(
    live: tuple[DrainSpec, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _, reloads = live
    open_now = iter([2, 1, 0])
    monkeypatch.setattr(host_drain, "connections_to", lambda addresses: next(open_now))
    graced = DrainSpec(spec.path, spec.sha256, 30.0, NGINX_UNIT, "true")
    done = drain(graced, ["generic-1"], reload=lambda s: reloads.append(s.path))
    assert done.in_flight == 0 and done.waited < 5
    undrain(graced, reload=lambda s: reloads.append(s.path))
    monkeypatch.setattr(host_drain, "connections_to", lambda addresses: 1)
    short = DrainSpec(spec.path, spec.sha256, 0.3, NGINX_UNIT, "true")
    done = drain(short, ["generic-1"], reload=lambda s: reloads.append(s.path))
    assert done.in_flight == 1 and 0.3 <= done.waited < 2


def test_the_controller_ships_the_managed_sha256_and_the_grace_setting() -> None:
    settings, plan = planned("one-of-each", matrix_synapse_restart_drain_seconds=7)
    desired = desired_state(settings, plan)
    spec = desired.drain
    assert spec is not None
    content = desired.files[settings.nginx.config_path].content
    assert spec.path == settings.nginx.config_path
    assert spec.sha256 == hashlib.sha256(content).hexdigest()
    assert (spec.grace, spec.unit, spec.check) == (7, NGINX_UNIT, NGINX_CHECK)
    off = planned("one-of-each", matrix_synapse_nginx_enabled=False)
    assert desired_state(*off).drain is None


def test_a_run_killed_while_drained_is_converged_by_the_next_run(root: Root) -> None:
    deployed(root, **NO_FILE_SD)
    manifest, _ = root.read(**NO_FILE_SD)
    assert manifest.drain is not None and not [e for e in manifest.batch.files if e.payload]
    path = Path(manifest.drain.path)
    managed = path.read_bytes()
    spec = DrainSpec(manifest.drain.path, manifest.drain.sha256, 0.0, NGINX_UNIT, "true")
    drain(spec, ["generic-0"], reload=lambda s: None)  # ... and the run is killed here
    assert path.read_bytes() != managed
    settings = root.settings(**NO_FILE_SD)
    desired = desired_state(settings, build_plan(settings, "host-a"))
    assert [f.path for f in compare(desired, root.host_state()).files.modified] == [str(path)]
    manifest, stage = root.read(**NO_FILE_SD)
    (changed,) = [e for e in manifest.batch.files if e.payload]
    assert changed.path == str(path)
    host_apply.change_files(manifest, stage)
    assert path.read_bytes() == managed
    assert not undrain(spec, reload=lambda s: None)


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)
