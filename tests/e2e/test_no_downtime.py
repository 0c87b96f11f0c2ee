"""Changes without downtime: a client under load through nginx while the deploy changes things.

One real cluster (Synapse 1.163.1 at first, PostgreSQL, Redis, nginx) on one test host: the
one-of-each preset with two generic workers and no appservice worker, so 16 workers, two of them
in the class that serves most client endpoints. While the load client
(tests/support/load_client.py, inside the host) keeps ``/sync``, ``/messages``, ``/versions``,
``/joined_rooms``, profile, pushers (main), room sends and typing going, each test deploys one
change:

- a shared homeserver setting (``max_upload_size`` through the pass-through): every process
  restarts;
- the log level: nothing restarts (every PID unchanged);
- 16 -> 24 workers and back: nothing that stays restarts, PostgreSQL neither;
- Synapse 1.163.1 -> 1.163.2 (the upgrade; it runs last, as there is no way back).

What a phase must show (`problems`, `assert_phase`): no 5xx and no connection error on an
endpoint class served by two or more processes; on a class with a single process (main
included) errors only inside that process's own restart (systemd's ActiveExit -> ActiveEnter,
give or take `MARGIN`, a fixed 2 s), none if it did not restart, and each a 503 with
``Retry-After``; no 4xx at all; every send answered 200 is in ``/messages`` afterwards; the
rerun changes nothing. Every phase prints its per-class table first, so a failing run still
gives the numbers, and a failing phase adds nginx's log of its 5xx (upstream tried, their
statuses) to the message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import build_plan
from deploys.core.routing import nginx_routes
from deploys.core.settings import load_defaults, parse_settings
from tests.support.deploying import Run, assert_no_changes, pyinfra, write_inventory
from tests.support.load_client import LoadClient, matrix_users
from tests.support.settings_data import make_data
from tests.support.synapse_tree import E2E_SETTINGS, PREVIOUS_VERSION, ensure_previous_synapse_tree
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

CURRENT_VERSION = load_defaults()["matrix_synapse_version"]
# Lifted rate limits: the load client sends far faster than a person (and logs in three users).
UNLIMITED = {"per_second": 1000, "burst_count": 1000}
RATE_LIMITS = {
    "rc_message": UNLIMITED,
    "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
}
BASE = {
    **E2E_SETTINGS,
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "one-of-each",
    "matrix_synapse_workers_generic_workers_count": 2,
    "matrix_synapse_workers_appservice_workers_count": 0,  # 16 workers in all
    "matrix_synapse_configuration_extension": RATE_LIMITS,
    "matrix_synapse_version": PREVIOUS_VERSION,  # until the upgrade test
}
USERS = ("alice", "bob", "carol")
# Errors of a single-process class lie within its own restart (systemd's stop -> ready) give or
# take this: a process with no other server is never drained ahead of its stop, and once a try
# failed nginx skips it for its fail_timeout (1 s, counted in whole seconds: 1 to 2 s).
# Independent of the drain's grace on purpose.
MARGIN = 2.0
SETTLE = 3.0  # seconds of load before and after each deploy


@dataclass
class Unit:
    pid: int
    active_exit: float  # when it last left "active" (a stop began); 0: never
    active_enter: float  # when it last became active (READY=1); 0: never


def unit_states(host: TestHost) -> dict[str, Unit]:
    """Every Synapse, PostgreSQL and nginx unit: main PID and its last stop and start, in the
    load client's clock (time.time() in the host; systemd's monotonic microseconds, converted,
    as its wall-clock timestamps have whole seconds only)."""
    out = host.ssh(
        "python3 -c 'import time; print(time.time() - time.monotonic())'; "
        "systemctl show -p Id,MainPID,ActiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic "
        "'matrix-synapse*.service' 'postgresql*.service' nginx.service"
    ).stdout
    offset, rest = out.split("\n", 1)

    def stamp(value: str) -> float:
        return float(offset) + int(value) / 1e6 if int(value) else 0.0

    units = {}
    for block in rest.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        units[props["Id"]] = Unit(
            int(props["MainPID"]),
            stamp(props["ActiveExitTimestampMonotonic"]),
            stamp(props["ActiveEnterTimestampMonotonic"]),
        )
    return units


class Cluster:
    """The module's real-Synapse host; each test first converges it to the state it starts from."""

    def __init__(self, host: TestHost, folder: Path) -> None:
        self.host, self.folder = host, folder
        self.current: dict[str, Any] = {}  # the settings on top of BASE deployed last
        self.config: dict[str, Any] = {}  # the load client's

    def deploy(self, *args: str, **extra: Any) -> Run:
        inventory = write_inventory(
            self.folder / "inventory.py", [(self.host, {**BASE, **extra})], standin=False
        )
        run = pyinfra(self.folder, inventory, *args, timeout=900)
        if run.returncode == 0 and "--dry" not in args:
            self.current = extra
        return run

    def converge(self, **extra: Any) -> None:
        run = self.deploy("-y", **extra)
        assert run.returncode == 0, run.output[-4000:]

    def upstream_units(self, extra: dict[str, Any]) -> dict[str, set[str]]:
        """Each nginx upstream -> the units of the processes behind it, from the plan."""
        settings = parse_settings(make_data(matrix_domain="example.org", **{**BASE, **extra}))
        plan = build_plan(settings, self.host.name)
        units = {p.name: p.unit for p in plan.processes}
        routes = nginx_routes(plan, settings.nginx)
        return {u.name: {units[s.process] for s in u.servers} for u in routes.upstreams}

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """One request through nginx from inside the host; its JSON answer (must be a 200)."""
        header = f"-H 'Authorization: Bearer {token}' " if token else ""
        data = "" if body is None else "--data-binary @- "
        out = self.host.ssh(
            f"curl -sS -f -X {method} {header}-H 'Content-Type: application/json' "
            f"{data}http://127.0.0.1:8088{path}",
            input=None if body is None else json.dumps(body),
        ).stdout
        return json.loads(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    host = TestHost.start(
        f"e2e-nodown-{int(time.time()) % 100000}", tree=ensure_previous_synapse_tree()
    )
    try:
        cluster = Cluster(host, tmp_path_factory.mktemp("no-downtime"))
        cluster.converge()
        cluster.config = matrix_users(host, USERS)
        yield cluster
    finally:
        host.stop()


@dataclass
class Phase:
    name: str
    summary: dict[str, Any]
    before: dict[str, Unit]
    after: dict[str, Unit]
    upstreams: dict[str, set[str]]  # as planned before and after the change, merged
    deploy_seconds: float


def under_load(cluster: Cluster, name: str, **target: Any) -> Phase:
    """Deploy ``target`` (on top of BASE) while the load client runs; the rerun must change
    nothing."""
    before = unit_states(cluster.host)
    upstreams = cluster.upstream_units(cluster.current)
    for upstream, units in cluster.upstream_units(target).items():
        upstreams.setdefault(upstream, set()).update(units)
    load = LoadClient(cluster.host, cluster.config)
    load.start()
    try:
        time.sleep(SETTLE)
        started = time.monotonic()
        run = cluster.deploy("-y", **target)
        deploy_seconds = time.monotonic() - started
        time.sleep(SETTLE)
    finally:
        summary = load.stop()
    assert run.returncode == 0, run.output[-4000:]
    phase = Phase(name, summary, before, unit_states(cluster.host), upstreams, deploy_seconds)
    print(report(phase))
    assert_no_changes(cluster.deploy(**target), cluster.host.name, commands=None)
    return phase


def restart_window(phase: Phase, unit: str) -> tuple[float, float] | None:
    """When ``unit`` was down during the phase (it restarted once at most), or None."""
    after = phase.after.get(unit)
    if after is None or after.pid == phase.before.get(unit, Unit(0, 0, 0)).pid:
        return None
    return after.active_exit or phase.summary["started"], after.active_enter


def class_units(phase: Phase, stats: dict[str, Any]) -> set[str]:
    """The units behind the upstreams that answered an endpoint class."""
    names = [u for u in stats["upstreams"] if u != "-"]
    assert names, f"no answer named its upstream: {stats}"
    return set().union(*(phase.upstreams[name] for name in names))


def problems(phase: Phase) -> list[str]:
    """What the client saw that a deploy without downtime must not show."""
    found = []
    for cls, stats in sorted(phase.summary["classes"].items()):
        if stats["4xx"] + stats["other"]:  # a client error is an error too (rate limits are off)
            found.append(f"{cls}: unexpected answers {stats['statuses']}")
        errors = stats["5xx"] + stats["conn"]
        if not errors:
            continue
        units = class_units(phase, stats)
        if len(units) >= 2:
            found.append(f"{cls}: {errors} errors from a class of {len(units)} processes")
            continue
        (unit,) = units
        bare = {k: n for k, n in stats["statuses"].items() if k.startswith("5") and k != "503"}
        if bare or any(e.get("retry_after") is None for e in stats["errors"]):
            found.append(f"{cls}: not a 503 with Retry-After: {bare} {stats['errors'][:2]}")
        window = restart_window(phase, unit)
        first, last = stats["first_error"], stats["last_error"]
        if window is None:
            found.append(f"{cls}: {errors} errors though {unit} did not restart")
        elif first < window[0] - MARGIN or last > window[1] + MARGIN:
            start = phase.summary["started"]  # times below: seconds from the load's start
            found.append(
                f"{cls}: errors {first - start:.1f}..{last - start:.1f} s outside {unit}'s "
                f"restart {window[0] - start:.1f}..{window[1] - start:.1f} s (+-{MARGIN} s)"
            )
    if phase.summary["unfinished_loops"]:
        found.append(f"{phase.summary['unfinished_loops']} client loops did not finish")
    return found


def report(phase: Phase) -> str:
    start = phase.summary["started"]
    lines = [
        f"\n== {phase.name}: deploy {phase.deploy_seconds:.1f} s, load "
        f"{phase.summary['stopped'] - start:.1f} s, "
        f"{len(phase.summary['sent'])} sends answered 200",
        f"{'class':<13}{'requests':>9}{'2xx':>7}{'4xx':>5}{'5xx':>5}{'conn':>5}  "
        "error window (s from load start)  upstreams  statuses",
    ]
    for cls, s in sorted(phase.summary["classes"].items()):
        window = (
            f"{s['first_error'] - start:6.1f} .. {s['last_error'] - start:6.1f}"
            if s["first_error"] is not None
            else "-"
        )
        lines.append(
            f"{cls:<13}{s['requests']:>9}{s['2xx']:>7}{s['4xx']:>5}{s['5xx']:>5}{s['conn']:>5}  "
            f"{window:<32} {','.join(s['upstreams'])}  {s['statuses']}"
        )
    restarted = {u: restart_window(phase, u) for u in phase.after}
    for unit, window in sorted(restarted.items()):
        if window and unit in phase.before:
            lines.append(
                f"  restarted {unit}: down {window[0] - start:.1f} .. {window[1] - start:.1f}"
            )
        elif window:
            lines.append(f"  started {unit}: ready at {window[1] - start:.1f}")
    for cls, s in sorted(phase.summary["classes"].items()):
        for error in s["errors"][:3]:
            lines.append(f"  {cls} error: {json.dumps(error)[:300]}")
    return "\n".join(lines)


def assert_phase(cluster: Cluster, phase: Phase) -> None:
    found = problems(phase)
    lost = cluster_lost_messages(cluster, phase.summary["sent"])
    if lost:
        found.append(f"{len(lost)} sends answered 200 are not in /messages: {lost[:5]}")
    for cls, stats in phase.summary["classes"].items():
        assert stats["2xx"] > 0, (cls, stats)  # every loop was really served
    assert phase.summary["sent"], "no send was answered 200"
    assert not found, "\n".join([*found, nginx_evidence(cluster.host)])


def nginx_evidence(host: TestHost) -> str:
    """What nginx logged about the failed requests: each one's upstream(s) and their statuses
    (the access log's format), and its error log."""
    settings = parse_settings(make_data(matrix_domain="example.org", **BASE))
    return host.ssh(
        f"echo '--- 5xx in {settings.nginx.access_log}:'; "
        f"grep -E '\" 5[0-9][0-9] ' {settings.nginx.access_log} | tail -n 30; "
        "echo '--- nginx error log:'; tail -n 30 /var/log/nginx/error.log",
        check=False,
    ).stdout


def cluster_lost_messages(cluster: Cluster, sent: list[dict[str, Any]]) -> list[str]:
    present = LoadClient(cluster.host, cluster.config).room_event_ids()
    return [s["event_id"] for s in sent if s["event_id"] not in present]


def pids(units: dict[str, Unit]) -> dict[str, int]:
    return {name: unit.pid for name, unit in units.items()}


# --------------------------------------------------------------------------- the phases


def test_a_shared_setting_restarts_every_process_without_an_error(cluster: Cluster) -> None:
    cluster.converge()
    phase = under_load(
        cluster,
        "max_upload_size (restarts every process)",
        matrix_synapse_configuration_extension={**RATE_LIMITS, "max_upload_size": "20M"},
    )
    synapse = [u for u in phase.before if u.startswith("matrix-synapse")]
    assert len(synapse) == 17
    assert all(phase.after[u].pid != phase.before[u].pid for u in synapse)
    assert_phase(cluster, phase)


def test_the_log_level_restarts_nothing(cluster: Cluster) -> None:
    cluster.converge()
    phase = under_load(cluster, "log level (no restart)", matrix_synapse_log_level="WARNING")
    assert pids(phase.after) == pids(phase.before)
    assert_phase(cluster, phase)
    assert_phase_had_no_error(phase)


def assert_phase_had_no_error(phase: Phase) -> None:
    for cls, stats in phase.summary["classes"].items():
        assert stats["5xx"] + stats["conn"] == 0, (cls, stats)


def test_scaling_to_24_workers_and_back_restarts_nothing_that_stays(cluster: Cluster) -> None:
    cluster.converge()
    up = under_load(cluster, "16 -> 24 workers", matrix_synapse_workers_generic_workers_count=10)
    kept = {u: pid for u, pid in pids(up.before).items() if pid}
    assert any(u.startswith("postgresql@") for u in kept), kept  # its postmaster is watched too
    assert {u: pids(up.after)[u] for u in kept} == kept  # PostgreSQL, nginx, every process
    assert (
        sum(u.startswith("matrix-synapse-worker@") and s.pid > 0 for u, s in up.after.items()) == 24
    )
    assert_phase(cluster, up)

    down = under_load(cluster, "24 -> 16 workers")
    # Every process still running (16 workers, main; PostgreSQL, nginx) kept its PID.
    running = {u for u, pid in pids(down.after).items() if pid}
    staying = {u: pid for u, pid in pids(down.before).items() if u in running}
    assert {u: pids(down.after)[u] for u in staying} == staying
    assert (
        sum(u.startswith("matrix-synapse-worker@") and s.pid > 0 for u, s in down.after.items())
        == 16
    )
    assert_phase(cluster, down)


def test_an_upgrade_migrates_main_first_then_rolls_the_workers(cluster: Cluster) -> None:
    """Runs last: 1.163.2 cannot go back to 1.163.1 (the wheelhouse holds only the new one)."""
    cluster.converge()
    assert PREVIOUS_VERSION != CURRENT_VERSION
    phase = under_load(
        cluster, "upgrade 1.163.1 -> 1.163.2", matrix_synapse_version=CURRENT_VERSION
    )
    answer = cluster.request("GET", "/_matrix/federation/v1/version")
    assert answer["server"]["version"] == CURRENT_VERSION
    synapse = [u for u in phase.before if u.startswith("matrix-synapse")]
    assert all(phase.after[u].pid != phase.before[u].pid for u in synapse)
    main = phase.after["matrix-synapse.service"]
    workers = [phase.after[u] for u in synapse if u != "matrix-synapse.service"]
    assert all(main.active_enter <= w.active_exit for w in workers)  # main migrated first
    assert_phase(cluster, phase)
