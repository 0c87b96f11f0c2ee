"""Draining processes out of nginx's routing file (deploys/host/drain.py) on real files.

nginx itself is in tests/nginx/test_drain.py; here the reload is recorded, the check is a
command that passes or fails, and the file is the one the controller renders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from deploys.core.drift import compare
from deploys.core.plan import build_plan
from deploys.core.render import NGINX_CHECK, NGINX_UNIT, desired_state
from deploys.host import apply as host_apply, drain as host_drain, units as host_units
from deploys.host.batch import ApplyError
from deploys.host.drain import DrainError, drain, mark_down, undrain, undrained
from deploys.host.manifest import DrainSpec, Manifest
from tests.unit import test_host_apply
from tests.unit.test_host_apply import (
    HOMESERVER_CHANGED,
    WAVES,
    Root,
    deployed,
    waves_manifest,
)
from tests.unit.test_routing import config_for, planned

systemctl = test_host_apply.systemctl  # the recording systemctl fixture


def server_lines(text: str) -> dict[str, list[str]]:
    """process -> its server lines (stripped)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if m := re.match(r"\s*server \S+ .*;  # (\S+)$", line):
            found.setdefault(m[1], []).append(line.strip())
    return found


def test_marking_down_touches_only_the_named_processes_and_comes_back_exactly() -> None:
    config = config_for("one-of-each")
    named = ["generic-0", "stream-writer-1-typing", "pusher-0"]
    drained, servers = mark_down(config, named, running=())  # none of them runs
    assert [p for p, _ in servers] == ["stream-writer-1-typing", "generic-0", "generic-0"]
    before, after = server_lines(config), server_lines(drained)
    for process, lines in after.items():
        if process in ("generic-0", "stream-writer-1-typing"):
            assert all(x.endswith(f" down;  # {process}") for x in lines), lines
        else:
            assert lines == before[process]
    assert undrained(drained) == config
    assert config.count(" down;") == 0  # the managed file never has one: stripping is exact


def test_a_running_process_with_no_alternative_in_its_upstream_is_not_marked_down() -> None:
    """Typing has one writer and no fallback to main: marking it down before its stop would
    only answer its requests with 503 for the whole grace. generic-0 has main as its backup."""
    config = config_for("one-of-each")
    drained, servers = mark_down(
        config, ["generic-0", "stream-writer-1-typing", "media-repository-0"]
    )
    assert {p for p, _ in servers} == {"generic-0"}
    lines = server_lines(drained)
    assert lines["stream-writer-1-typing"] == server_lines(config)["stream-writer-1-typing"]
    assert lines["media-repository-0"] == server_lines(config)["media-repository-0"]
    assert all(x.endswith(" down;  # generic-0") for x in lines["generic-0"])
    # Main's own upstream has no other server: it stays up; its backup lines go down.
    drained, servers = mark_down(config, ["main"])
    main = server_lines(drained)["main"]
    assert not main[0].endswith("down;  # main") and main[0].startswith("server 127.0.0.1:8008 ")
    assert all(x.endswith("backup down;  # main") for x in main[1:]) and len(main) > 1
    # An upstream whose every server stops (generic-0 and its backup main together): none is
    # marked down there, as none has an alternative.
    drained, _ = mark_down(config, ["main", "generic-0"])
    generic = re.search(r"upstream synapse_generic \{.*?\}", drained, re.S)
    assert generic is not None and " down;" not in generic[0]


def test_draining_main_marks_every_backup_line_but_its_own_server() -> None:
    config = config_for("specialized-workers")
    drained, servers = mark_down(config, ["main"])
    lines = server_lines(drained)["main"]
    assert len(servers) == 5 and len(lines) == 6  # sync, room, readers, fed, user dir backups
    assert sum(x.endswith("backup down;  # main") for x in lines) == 5
    assert undrained(drained) == config
    _, servers = mark_down(config, ["main"], running=())  # not running: its own line too
    assert len(servers) == 6


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


def test_stale_workers_stop_once_no_connection_to_them_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real listening socket of this process and a real connection to it: the wait lasts
    while the connection is open (at most the grace) and ends at once when it is closed."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))  # a wildcard listener is reached on loopback
    server.listen()
    port = server.getsockname()[1]
    assert ("127.0.0.1", port) in host_drain.listening_addresses(os.getpid())
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\necho MainPID={os.getpid()}\necho MainPID=0\n")
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    waited, open_now = host_drain.wait_for_stale(["matrix-synapse-worker@generic-9.service"], 0.3)
    assert open_now == 1 and 0.3 <= waited < 2
    client.close()
    accepted.close()
    waited, open_now = host_drain.wait_for_stale(["matrix-synapse-worker@generic-9.service"], 30)
    assert open_now == 0 and waited < 2
    server.close()


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
    deployed(root)
    manifest, _ = root.read()
    assert manifest.drain is not None and not [e for e in manifest.batch.files if e.payload]
    path = Path(manifest.drain.path)
    managed = path.read_bytes()
    spec = DrainSpec(manifest.drain.path, manifest.drain.sha256, 0.0, NGINX_UNIT, "true")
    drain(spec, ["generic-0"], reload=lambda s: None)  # ... and the run is killed here
    assert path.read_bytes() != managed
    settings = root.settings()
    desired = desired_state(settings, build_plan(settings, "host-a"))
    assert [f.path for f in compare(desired, root.host_state()).files.modified] == [str(path)]
    manifest, stage = root.read()
    (changed,) = [e for e in manifest.batch.files if e.payload]
    assert changed.path == str(path)
    host_apply.change_files(manifest, stage)
    assert path.read_bytes() == managed
    assert not undrain(spec, reload=lambda s: None)


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)


# --- Around each restart wave (deploys/host/apply.py) ------------------------------------------


def wired(
    root: Root, systemctl: dict[str, Path], monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Manifest:
    """Main and three generic workers (``WAVES``, then ``overrides``) deployed and running;
    nginx's reload is recorded in the systemctl log with the processes the live file has
    ``down`` at that moment."""
    deployed(root, **{**WAVES, **overrides})
    manifest = waves_manifest(root, systemctl, **overrides)
    spec = root.read(**{**WAVES, **overrides})[0].drain
    assert spec is not None
    log = systemctl["log"]

    def reload(spec: DrainSpec) -> None:
        down = sorted(
            p
            for p, lines in server_lines(Path(spec.path).read_text()).items()
            if any(x.endswith(f" down;  # {p}") for x in lines)
        )
        with log.open("a") as f:
            f.write(f"nginx reload: down {' '.join(down) or '-'}\n")

    monkeypatch.setattr(host_drain, "reload_unit", reload)
    with systemctl["known"].open("a") as known:  # drains go only through a running nginx
        known.write(f"{NGINX_UNIT} loaded active running x\n")
    return dataclasses.replace(
        manifest, drain=dataclasses.replace(spec, check="true"), reloaded_units=(NGINX_UNIT,)
    )


def acted(systemctl: dict[str, Path]) -> list[str]:
    lines = systemctl["log"].read_text().splitlines()
    return [x for x in lines if x.startswith(("restart", "nginx"))]


def test_each_wave_drains_what_it_stops_and_puts_the_file_back_once_ready(
    root: Root, systemctl: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = wired(root, systemctl, monkeypatch)
    assert manifest.drain is not None
    managed = Path(manifest.drain.path).read_bytes()
    host_apply.restart(manifest, [HOMESERVER_CHANGED])
    # Main is the only server of its upstream here (no worker class with main as backup):
    # nothing to drain, it serves until it stops.
    expected = [f"restart {host_units.MAIN_UNIT}"]
    for i in range(3):
        worker = f"generic-{i}"
        expected += [
            f"nginx reload: down {worker}",
            f"restart {host_units.worker_unit(worker)}",
            "nginx reload: down -",
        ]
    assert acted(systemctl) == expected
    assert Path(manifest.drain.path).read_bytes() == managed


def test_each_process_is_back_in_nginx_as_soon_as_it_is_ready(
    root: Root, systemctl: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wave of two generic workers: generic-1 is ready first and goes back into nginx while
    generic-0 is still starting; then generic-0 too, before the wave ends."""
    manifest = wired(
        root,
        systemctl,
        monkeypatch,
        matrix_synapse_workers_generic_workers_count=4,
        matrix_synapse_restart_batch_percent=50,
    )
    assert manifest.drain is not None
    managed = Path(manifest.drain.path).read_bytes()
    first, second = (host_units.worker_unit(f"generic-{i}") for i in (0, 1))
    systemctl["stuck"].write_text(first + "\n")
    while_ready = host_drain.while_ready

    def then_unstick(spec: DrainSpec, restarting: list[str], *args: Any) -> None:
        while_ready(spec, restarting, *args)
        if restarting == ["generic-0"]:
            systemctl["stuck"].write_text("")  # generic-0 ready at the next poll

    monkeypatch.setattr(host_drain, "while_ready", then_unstick)
    host_apply.restart(manifest, [HOMESERVER_CHANGED])
    assert acted(systemctl)[1:5] == [
        "nginx reload: down generic-0 generic-1",
        f"restart {first} {second}",
        "nginx reload: down generic-0",  # generic-1 ready, generic-0 not yet
        "nginx reload: down -",  # generic-0 ready: the managed file, before the wave ends
    ]
    assert Path(manifest.drain.path).read_bytes() == managed


def test_a_wave_that_fails_stays_drained_and_later_waves_drain_nothing(
    root: Root, systemctl: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = wired(root, systemctl, monkeypatch)
    assert manifest.drain is not None
    systemctl["stuck"].write_text(host_units.worker_unit("generic-0") + "\n")
    with pytest.raises(ApplyError, match="restart wave 2/4"):
        host_apply.restart(manifest, [HOMESERVER_CHANGED])
    assert acted(systemctl)[-2:] == [
        "nginx reload: down generic-0",
        f"restart {host_units.worker_unit('generic-0')}",
    ]
    assert down_now(Path(manifest.drain.path)) == ["generic-0"]  # the next run writes it back


def test_no_drain_without_a_running_nginx(
    root: Root, systemctl: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = wired(root, systemctl, monkeypatch)
    lines = systemctl["known"].read_text().splitlines(keepends=True)
    systemctl["known"].write_text("".join(x for x in lines if not x.startswith(NGINX_UNIT)))
    monkeypatch.setattr(host_drain, "route", lambda *a, **k: pytest.fail("drained"))
    host_apply.restart(dataclasses.replace(manifest, reloaded_units=()), [HOMESERVER_CHANGED])
    assert not [x for x in acted(systemctl) if x.startswith("nginx")]


def test_units_map_to_the_processes_nginx_names() -> None:
    assert host_drain.process_name(host_units.MAIN_UNIT) == "main"
    assert host_drain.process_name(host_units.worker_unit("generic-7")) == "generic-7"
    assert host_drain.process_name(host_units.TARGET_UNIT) is None


def down_now(path: Path) -> list[str]:
    lines = server_lines(path.read_text())
    return sorted(p for p, xs in lines.items() if any(x.endswith(f" down;  # {p}") for x in xs))


def test_workers_a_later_wave_starts_stay_down_until_their_wave_has_run(
    live: tuple[DrainSpec, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, path, reloads = live
    managed = path.read_bytes()
    monkeypatch.setattr(
        host_drain, "reload_unit", lambda s: reloads.append(",".join(down_now(path)) or "-")
    )
    # A wave that stops nothing while the file is the managed one: nginx still runs the file it
    # had before this run, without its new workers: nothing to do, before or after.
    assert host_drain.before_wave(spec, [], ["generic-0"], ["generic-2"]) is None
    host_drain.after_wave(spec, ["generic-2"])
    assert reloads == [] and path.read_bytes() == managed
    # Wave 1 restarts generic-0; generic-2 is new and starts in wave 2.
    done = host_drain.before_wave(spec, ["generic-0"], [], ["generic-2"])
    assert done is not None and {p for p, _ in done.servers} == {"generic-0"}
    assert down_now(path) == ["generic-0", "generic-2"]
    host_drain.after_wave(spec, ["generic-2"])
    assert down_now(path) == ["generic-2"]
    assert host_drain.before_wave(spec, [], ["generic-2"], []) is not None  # wave 2 starts it
    assert down_now(path) == ["generic-2"]
    host_drain.after_wave(spec, [])
    assert path.read_bytes() == managed
    assert reloads == ["generic-0,generic-2", "generic-2", "-"]  # no reload when nothing changes
