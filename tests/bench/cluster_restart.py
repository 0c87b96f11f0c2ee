"""Measurement: what clients see while a cluster's workers host restarts its workers.

    .venv/bin/python -m tests.bench.cluster_restart               # both scenarios, 1 round each
    .venv/bin/python -m tests.bench.cluster_restart --rounds 2    # two restarts per scenario
    .venv/bin/python -m tests.bench.cluster_restart --only cluster

Not a test and not part of ``make test`` / ``make bench``: it prints numbers, it asserts nothing
about them. Two scenarios with the same processes and the same change, one after the other in one
invocation, real Synapse (tests/support/synapse_tree.py) on fresh test hosts:

- **cluster**: two test hosts on one private bridge (tests/support/testhost_net.py), as
  tests/e2e/test_cluster_machines.py sets them up: the main host runs main, PostgreSQL, Redis and
  nginx and no worker; the workers host runs 4 generic workers and 1 ``events`` stream writer.
- **one machine**: one test host running main, PostgreSQL, Redis, nginx and the same 5 workers.

Each round: the load client (tests/support/load_client.py, as tests/e2e/test_no_downtime.py runs
it: GETs, ``/sync`` long-polls, sends and typing as PUTs) and a POST loop per user (``keys/query``,
served by the generic workers; nginx never passes a POST that reached a worker to another) run
inside the main host against nginx, then the deploy changes
``matrix_synapse_database_workers_cp_max`` (3 -> 4, then back), which restarts every worker and
not main nor PostgreSQL (their pid is checked and printed), and the load goes on a few seconds
after the deploy. On one machine the restart waves drain each worker out of nginx first
(deploys/host/drain.py); in the cluster the workers host restarts its workers without draining
them out of main's nginx (it has no nginx file; the drain edits the local one). Printed per
round: the client's requests and errors (5xx and connection errors) by endpoint class and
status, the deploy's wall time, the restart's span (first worker stop to last worker ready,
systemd's timestamps; the guests share this machine's clock with the load client), what
nginx's error log gained on the main host (each entry a try nginx gave up on a worker, by method
and class), the POST loop's statuses, and the sends answered 200 that are not in the room or are
stored twice (a send cut mid-request is passed to another worker with its transaction id).

Every test host and the bridge are stopped by the PIDs they recorded on the way out, on an error,
Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploys.core.settings import REPO_ROOT
from tests.bench.cluster_layout import SECRETS
from tests.bench.restarts import upstream_processes
from tests.e2e.test_no_downtime import RATE_LIMITS, Unit, unit_states
from tests.support.deploying import pyinfra, write_inventory
from tests.support.load_client import LoadClient, matrix_users
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import BridgeNetwork, TestHost, missing_prerequisites

SETTLE = 3.0  # seconds of load before and after each deploy
USERS = ("alice", "bob", "carol")
WORKERS = {"generic": 4, "stream_writer_events_stream": 1}
COMMON = {
    **E2E_SETTINGS,
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_federation_sender_workers_count": 0,  # no worker unless counted
    "matrix_synapse_configuration_extension": RATE_LIMITS,
}
CP_MAX = "matrix_synapse_database_workers_cp_max"
CP_MAX_VALUES = (4, 3)  # round 1 sets 4 (the default is 3), round 2 sets 3 again, ...
NGINX_ERROR_LOG = "/var/log/nginx/error.log"
MAIN_UNIT = "matrix-synapse.service"
# The load client's endpoint classes, as parts of their paths ("send" after "sendToDevice" etc.).
LOAD_CLASSES = (
    "sync",
    "send",
    "typing",
    "messages",
    "versions",
    "joined_rooms",
    "profile",
    "pushers",
)
WORKER_UNIT = "matrix-synapse-worker@"

# A POST loop per user beside the load client, which sends only GETs and PUTs: nginx never passes
# a POST that reached a worker to another (README, Routing), so a POST in flight when its worker
# stops is an error the client sees. ``keys/query`` is a generic worker's, cheap and read-only.
POST_LOOP = r"""
import json, os, signal, sys, threading, time, urllib.error, urllib.request
config, out = json.load(open(sys.argv[1])), sys.argv[2]
stop, lock, statuses, errors = threading.Event(), threading.Lock(), {}, []
signal.signal(signal.SIGTERM, lambda *_: stop.set())
def loop(user):
    body = json.dumps({"device_keys": {user["user_id"]: []}}).encode()
    while not stop.is_set():
        request = urllib.request.Request(
            config["base"] + "/_matrix/client/v3/keys/query", data=body, method="POST")
        request.add_header("Authorization", "Bearer " + user["token"])
        request.add_header("Content-Type", "application/json")
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                status, upstream = response.status, response.headers.get("X-Synapse-Upstream")
                response.read()
        except urllib.error.HTTPError as error:
            status, upstream = error.code, error.headers.get("X-Synapse-Upstream")
            error.read()
        except OSError as error:
            status, upstream = "conn", str(error)
        with lock:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status != 200:
                errors.append({"t": started, "status": status, "upstream": upstream})
        stop.wait(0.05)
threads = [threading.Thread(target=loop, args=(u,)) for u in config["users"]]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with open(out + ".tmp", "w") as stream:
    json.dump({"statuses": statuses, "errors": errors}, stream)
os.replace(out + ".tmp", out)
"""
# Every message of the load's room by body: a send nginx passed to a second worker after the
# first was cut must not be stored twice (Synapse deduplicates by transaction id).
ROOM_BODIES = r"""
import json, sys, urllib.parse, urllib.request
config = json.load(open(sys.argv[1]))
room, user = urllib.parse.quote(config["room_id"]), config["users"][0]
bodies, token = [], None
while True:
    query = {"dir": "b", "limit": "1000", **({"from": token} if token else {})}
    request = urllib.request.Request(config["base"] + f"/_matrix/client/v3/rooms/{room}/messages?"
                                     + urllib.parse.urlencode(query))
    request.add_header("Authorization", "Bearer " + user["token"])
    page = json.load(urllib.request.urlopen(request, timeout=90))
    bodies += [[e["event_id"], e.get("content", {}).get("body"), e["origin_server_ts"]]
               for e in page.get("chunk", []) if e.get("type") == "m.room.message"]
    if not page.get("chunk") or not page.get("end"):
        break
    token = page["end"]
print(json.dumps(bodies))
"""


def counts(**extra: int) -> dict[str, int]:
    return {f"matrix_synapse_workers_{k}_workers_count": n for k, n in {**WORKERS, **extra}.items()}


def one_machine_shape(host: TestHost) -> list[tuple[TestHost, dict[str, Any]]]:
    return [(host, {**COMMON, **counts()})]


def cluster_shape(main: TestHost, workers: TestHost) -> list[tuple[TestHost, dict[str, Any]]]:
    def machine(host: TestHost, role: str) -> dict[str, Any]:
        return {
            **COMMON,
            **SECRETS,
            "matrix_synapse_role": role,
            "matrix_synapse_private_address": host.address,
        }

    return [(main, machine(main, "main")), (workers, {**machine(workers, "workers"), **counts()})]


@dataclass
class Round:
    scenario: str
    number: int
    summary: dict[str, Any]
    deploy_seconds: float
    restarted: int  # worker units whose pid changed
    workers: int  # worker units in all
    window: tuple[float, float] | None  # first worker stop .. last worker ready (time.time())
    kept: list[str]  # main and PostgreSQL: "unit pid unchanged" or "... RESTARTED"
    nginx_errors: Counter[str]
    posts: dict[str, Any]  # the POST loop's statuses and errors
    lost: int  # sends answered 200 not in the room
    doubled: int  # sends stored twice (same body, two events)


@contextmanager
def hosts(count: int, names: list[str], bridged: bool) -> Iterator[list[TestHost]]:
    """``count`` fresh hosts from the Synapse tree (on one new bridge when ``bridged``); each
    stopped by its recorded PIDs, and the bridge removed, whatever happens."""
    tree = ensure_synapse_tree()
    network = BridgeNetwork.create(keep=True) if bridged else None
    started: list[TestHost] = []
    try:
        for index in range(count):
            started.append(
                TestHost.start(
                    f"clrestart{os.getpid()}-{'c' if bridged else 'm'}{index}",
                    tree=tree,
                    network=network,
                    aliases=[names[index]] if bridged else (),
                )
            )
        yield started
    finally:
        try:
            for host in reversed(started):
                try:
                    host.stop()
                except Exception as error:  # stop the others anyway
                    print(f"could not stop {host.name}: {error}", file=sys.stderr)
        finally:
            if network is not None:
                network.close()


def nginx_error_lines(host: TestHost) -> int:
    out = host.ssh(f"wc -l < {NGINX_ERROR_LOG} 2>/dev/null || echo 0").stdout
    return int(out.strip() or 0)


def nginx_errors_since(host: TestHost, line: int) -> Counter[str]:
    """nginx's error-log entries after ``line``, by what happened (the message without numbers),
    the request's method and the load client's endpoint class."""
    out = host.ssh(f"tail -n +{line + 1} {NGINX_ERROR_LOG} 2>/dev/null", check=False).stdout
    kinds: Counter[str] = Counter()
    for entry in out.splitlines():
        match = re.search(r"\*\d+ (.*?)(?:, client:|$)", entry)
        text = match.group(1) if match else entry
        text = re.sub(r"\d+", "N", re.sub(r"\(\d+: [^)]*\)", "", text)).strip()
        request = re.search(r'request: "(\w+) ([^ ?"]*)', entry)
        if request:
            method, path = request.groups()
            cls = next((c for c in LOAD_CLASSES if c in path), path)
            text = f"{method} {cls}: {text}"
        kinds[text] += 1
    return kinds


def measure_round(
    scenario: str,
    number: int,
    main: TestHost,
    worker_host: TestHost,
    config: dict[str, Any],
    deploy: Callable[..., float],
) -> Round:
    """One restart of every worker under load: the deploy sets ``workers_cp_max``."""
    before = {"main": unit_states(main), "workers": unit_states(worker_host)}
    errors_from = nginx_error_lines(main)
    load = LoadClient(main, config)
    main.ssh("cat > /root/post.json", input=json.dumps(config))
    main.ssh("cat > /root/post_loop.py; rm -f /root/post.out.json", input=POST_LOOP)
    post_pid = int(
        main.ssh(
            "setsid python3 /root/post_loop.py /root/post.json /root/post.out.json </dev/null "
            ">/root/post.log 2>&1 & echo $!"
        ).stdout.strip()
    )
    try:
        load.start()
        try:
            time.sleep(SETTLE)
            seconds = deploy(**{CP_MAX: CP_MAX_VALUES[(number - 1) % len(CP_MAX_VALUES)]})
            time.sleep(SETTLE)
        finally:
            summary = load.stop()
    finally:
        main.ssh(
            f"kill -TERM {post_pid}; for i in $(seq 1200); do test -e /root/post.out.json && "
            "break; sleep 0.1; done",
            timeout=180,
        )
    posts = json.loads(main.ssh("cat /root/post.out.json || cat /root/post.log").stdout)
    stored = json.loads(main.ssh("python3 - /root/post.json", input=ROOM_BODIES).stdout)
    ids = {event_id for event_id, _, _ in stored}
    lost = sum(1 for sent in summary["sent"] if sent["event_id"] not in ids)
    # Bodies repeat from round to round (each load client counts from 1): this round's only.
    this_round = Counter(body for _, body, ts in stored if ts >= summary["started"] * 1000)
    doubled = sum(n - 1 for n in this_round.values() if n > 1)
    after = {"main": unit_states(main), "workers": unit_states(worker_host)}
    workers = {
        u: unit for u, unit in after["workers"].items() if u.startswith(WORKER_UNIT) and unit.pid
    }
    restarted = {
        u: unit
        for u, unit in workers.items()
        if unit.pid != before["workers"].get(u, Unit(0, 0, 0)).pid
    }
    window = (
        (
            min(u.active_exit for u in restarted.values()),
            max(u.active_enter for u in restarted.values()),
        )
        if restarted
        else None
    )
    kept = []
    for unit, state in sorted(after["main"].items()):
        if unit == MAIN_UNIT or unit.startswith("postgresql"):
            same = state.pid == before["main"].get(unit, Unit(0, 0, 0)).pid
            kept.append(f"{unit} {'pid unchanged' if same else 'RESTARTED'}")
    return Round(
        scenario,
        number,
        summary,
        seconds,
        len(restarted),
        len(workers),
        window,
        kept,
        nginx_errors_since(main, errors_from),
        posts,
        lost,
        doubled,
    )


def run_scenario(
    scenario: str, rounds: int, workdir: Path, print_round: Callable[[Round], None]
) -> list[Round]:
    bridged = scenario == "cluster"
    count = 2 if bridged else 1
    with hosts(count, ["hs-main.test", "hs-w.test"], bridged) as booted:
        main = booted[0]
        worker_host = booted[-1]

        def deploy(**change: Any) -> float:
            shape = cluster_shape(*booted) if bridged else one_machine_shape(main)
            shape = [(host, {**data, **change}) for host, data in shape]
            inventory = write_inventory(workdir / f"{scenario}.py", shape, standin=False)
            started = time.monotonic()
            run = pyinfra(workdir, inventory, "-y", timeout=900)
            if run.returncode != 0:
                raise RuntimeError(f"{scenario}: deploy failed:\n{run.output[-6000:]}")
            return time.monotonic() - started

        first = deploy()
        print(f"  {scenario}: first deploy {first:.0f} s", file=sys.stderr, flush=True)
        config = matrix_users(main, USERS)
        results = []
        for number in range(1, rounds + 1):
            result = measure_round(scenario, number, main, worker_host, config, deploy)
            print_round(result)
            results.append(result)
        return results


def format_round(result: Round, sizes: dict[str, int]) -> str:
    summary = result.summary
    start = summary["started"]
    classes = summary["classes"]
    requests = sum(c["requests"] for c in classes.values())
    errors = sum(c["5xx"] + c["conn"] for c in classes.values())
    span = (
        f"{result.window[1] - result.window[0]:.1f} s (at {result.window[0] - start:.1f} .. "
        f"{result.window[1] - start:.1f} s of the load)"
        if result.window
        else "-"
    )
    lines = [
        f"\n== {result.scenario}, round {result.number}: deploy {result.deploy_seconds:.1f} s, "
        f"{result.restarted}/{result.workers} workers restarted over {span}; "
        f"load {summary['stopped'] - start:.1f} s",
        f"   {'; '.join(result.kept)}",
        f"   requests {requests}, errors (5xx + connection) {errors}",
        f"   {'class':<13}{'procs':>6}{'requests':>9}{'2xx':>7}{'4xx':>5}{'5xx':>5}{'conn':>5}"
        f"{'max s':>7}  error window (s of the load)  statuses",
    ]
    for cls, s in sorted(classes.items()):
        procs = max((sizes.get(u, 1) for u in s["upstreams"] if u != "-"), default=0)
        window = (
            f"{s['first_error'] - start:6.1f} .. {s['last_error'] - start:6.1f}"
            if s["first_error"] is not None
            else "-"
        )
        statuses = {k: n for k, n in s["statuses"].items() if not k.startswith("2")}
        lines.append(
            f"   {cls:<13}{procs:>6}{s['requests']:>9}{s['2xx']:>7}{s['4xx']:>5}{s['5xx']:>5}"
            f"{s['conn']:>5}{s['max_seconds']:>7.2f}  {window:<28} {statuses or ''} "
            f"via {','.join(s['upstreams'])}"
        )
    for cls, s in sorted(classes.items()):
        for error in s["errors"][:2]:
            lines.append(f"   {cls} error: {json.dumps(error)[:240]}")
    for kind, n in result.nginx_errors.most_common(8):
        lines.append(f"   nginx error log x{n}: {kind[:160]}")
    if summary.get("unfinished_loops"):
        lines.append(f"   {summary['unfinished_loops']} client loops did not finish")
    post_errors = result.posts.get("errors", [])
    lines.append(
        f"   POST keys/query (generic): {sum(result.posts.get('statuses', {}).values())} "
        f"requests, statuses {result.posts.get('statuses')}"
    )
    for error in post_errors[:4]:
        lines.append(f"   POST error at {error['t'] - start:.1f} s: {json.dumps(error)[:200]}")
    lines.append(
        f"   sends answered 200: {len(summary['sent'])}, not in the room {result.lost}, "
        f"stored twice {result.doubled}"
    )
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.cluster_restart", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=1, help="restarts per scenario (1)")
    parser.add_argument("--only", choices=("cluster", "one-machine"), help="one scenario only")
    args = parser.parse_args(argv)
    if problems := missing_prerequisites():
        parser.error("; ".join(problems))
    # SIGTERM unwinds like Ctrl-C, so every test host and the bridge are removed by their finally.
    signal.signal(signal.SIGTERM, _interrupt)
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, revision {revision}, "
        f"python -m tests.bench.cluster_restart {' '.join(argv or sys.argv[1:])}",
        flush=True,
    )
    # Both layouts route the same classes to the same number of processes.
    sizes = upstream_processes({**COMMON, **counts()}, "one")
    scenarios = [args.only] if args.only else ["cluster", "one-machine"]
    results: dict[str, list[Round]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            results[scenario] = run_scenario(
                scenario,
                args.rounds,
                Path(tmp),
                lambda r: print(format_round(r, sizes), flush=True),
            )
    print(
        "\n== side by side (per round: the load client's requests and errors by class and "
        "status, then the POST loop's, then sends lost or stored twice)"
    )
    for scenario, rounds in results.items():
        for r in rounds:
            classes = r.summary["classes"]
            requests = sum(c["requests"] for c in classes.values())
            by_class = {
                cls: {k: n for k, n in c["statuses"].items() if k == "conn" or k.startswith("5")}
                for cls, c in sorted(classes.items())
                if c["5xx"] + c["conn"]
            }
            errors = sum(sum(v.values()) for v in by_class.values())
            span = f"{r.window[1] - r.window[0]:.1f} s" if r.window else "-"
            posts = r.posts.get("statuses", {})
            print(
                f"{scenario:<12} round {r.number}: {requests} requests, {errors} errors "
                f"{by_class or ''}; POST {sum(posts.values())} requests, "
                f"{sum(n for k, n in posts.items() if k != '200')} errors "
                f"{ {k: n for k, n in posts.items() if k != '200'} or '' }; sends lost {r.lost}, "
                f"twice {r.doubled}; deploy {r.deploy_seconds:.1f} s, workers restarted over "
                f"{span}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
