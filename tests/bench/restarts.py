"""Benchmark rows: a change that restarts every process, rolling vs all-at-once, under load.

On one host per cluster (behind the benchmark's latency proxy), after a first deploy, each run
changes ``max_upload_size`` (a shared homeserver setting, so every Synapse process must restart)
once with ``matrix_synapse_restart_strategy = "rolling"`` and once with ``"all-at-once"``, in
alternating order, while the load client (tests/support/load_client.py, inside the host) keeps
``/sync``, ``/messages``, ``/versions``, ``/joined_rooms``, profile, pushers, sends and typing
going through nginx. Each cell is the median over the runs of:

- the deploy's wall time (a normal pyinfra run: prepare, then execute);
- the client's requests, and its errors (5xx and connection errors) on endpoint classes served
  by two or more processes and on those served by one (main included);
- the longest error window of any endpoint class (first to last error).

Clusters:

- the stand-in (tests/support/standin_synapse.py) with 130 workers (one federation sender and
  129 generic workers, as the table above): it answers 200 to every path, so only the status
  and the serving upstream mean anything there (no event ids, no ``/sync`` tokens); every
  endpoint the client uses goes to the generic workers except typing and pushers (main);
- the real Synapse at the demo's size (tests/support/demo.py: one-of-each, 16 workers, every
  class one process; PostgreSQL on the host), with rate limits lifted for the client.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deploys.core.plan import build_plan
from deploys.core.routing import nginx_routes
from deploys.core.settings import parse_settings
from tests.support.demo import DEMO_SETTINGS
from tests.support.deploying import STANDIN_SETTINGS, write_inventory
from tests.support.load_client import LoadClient, matrix_users, standin_users
from tests.support.settings_data import make_data
from tests.support.synapse_tree import ensure_synapse_tree

STRATEGIES = ("rolling", "all-at-once")
SETTLE = 2.0  # seconds of load before and after each deploy
UNLIMITED = {"per_second": 1000, "burst_count": 1000}
RATE_LIMITS = {
    "rc_message": UNLIMITED,
    "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
}


@dataclasses.dataclass(frozen=True)
class Cluster:
    label: str
    data: dict[str, Any]
    real: bool  # the real Synapse (else the stand-in)


def clusters(standin_workers: int) -> list[Cluster]:
    return [
        Cluster(
            f"stand-in, {standin_workers} workers",
            {
                "matrix_synapse_workers_enabled": True,
                "matrix_synapse_workers_preset": "little-federation-helper",
                "matrix_synapse_workers_generic_workers_count": standin_workers - 1,
            },
            real=False,
        ),
        Cluster(
            "real Synapse, demo (16 workers)",
            {**DEMO_SETTINGS, "matrix_synapse_configuration_extension": RATE_LIMITS},
            real=True,
        ),
    ]


@dataclasses.dataclass(frozen=True)
class RestartSample:
    seconds: float
    requests: int
    errors_multi: int  # 5xx + connection errors on classes served by >= 2 processes
    errors_single: int  # the same on classes served by one process
    window: float  # the longest first-to-last-error span of any class
    classes: tuple[str, ...]  # classes with errors


def upstream_processes(data: dict[str, Any], machine: str) -> dict[str, int]:
    """Each nginx upstream -> how many processes serve it, from the plan."""
    settings = parse_settings(make_data(matrix_domain="example.org", **data))
    routes = nginx_routes(build_plan(settings, machine), settings.nginx)
    return {u.name: len({s.process for s in u.servers}) for u in routes.upstreams}


def judge(summary: dict[str, Any], sizes: dict[str, int], seconds: float) -> RestartSample:
    multi = single = 0
    window = 0.0
    classes = []
    for cls, stats in sorted(summary["classes"].items()):
        errors = stats["5xx"] + stats["conn"]
        if not errors:
            continue
        classes.append(cls)
        processes = max((sizes.get(u, 1) for u in stats["upstreams"] if u != "-"), default=1)
        if processes >= 2:
            multi += errors
        else:
            single += errors
        window = max(window, stats["last_error"] - stats["first_error"])
    requests = sum(stats["requests"] for stats in summary["classes"].values())
    return RestartSample(seconds, requests, multi, single, window, tuple(classes))


def measure_cluster(cluster: Cluster, runs: int, delay: float) -> dict[str, list[RestartSample]]:
    # Imported here: run.py imports this module.
    from tests.bench.run import BenchHost, run_pyinfra

    samples: dict[str, list[RestartSample]] = {s: [] for s in STRATEGIES}
    bench_host = BenchHost(delay, tree=ensure_synapse_tree() if cluster.real else None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)

            def deploy(**extra: Any) -> float:
                data = {**cluster.data, **extra}
                if not cluster.real:
                    data = {**STANDIN_SETTINGS, **data}
                inventory = write_inventory(
                    workdir / "inventory.py",
                    [(bench_host, data)],  # type: ignore[list-item]
                    standin=not cluster.real,
                )
                return run_pyinfra(workdir, inventory, "deploys/synapse.py", [bench_host]).seconds

            deploy()
            host = bench_host.host
            config = (
                matrix_users(host, ("alice", "bob", "carol"))
                if cluster.real
                else (standin_users(4))
            )
            sizes = upstream_processes(cluster.data, host.name)
            extension = dict(cluster.data.get("matrix_synapse_configuration_extension", {}))
            change = 0
            for index in range(runs):
                order = STRATEGIES if index % 2 == 0 else STRATEGIES[::-1]
                for strategy in order:
                    change += 1
                    load = LoadClient(host, config)
                    load.start()
                    try:
                        time.sleep(SETTLE)
                        seconds = deploy(
                            matrix_synapse_restart_strategy=strategy,
                            matrix_synapse_configuration_extension={
                                **extension,
                                "max_upload_size": f"{10 + change}M",
                            },
                        )
                        time.sleep(SETTLE)
                    finally:
                        summary = load.stop()
                    sample = judge(summary, sizes, seconds)
                    samples[strategy].append(sample)
                    print(
                        f"  {cluster.label} {strategy} run {index + 1}/{runs}: {sample}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        bench_host.stop()
    return samples


HEADER = (
    "| Cluster | Restart strategy | Deploy restarting every process (s) | Client requests | "
    "5xx + connection errors, classes with ≥ 2 processes | "
    "5xx + connection errors, single-process classes | Longest error window (s) | "
    "Classes with errors |\n"
    "|---|---|--:|--:|--:|--:|--:|---|"
)


def format_rows(label: str, samples: dict[str, list[RestartSample]]) -> list[str]:
    lines = []
    for strategy in STRATEGIES:
        runs = samples[strategy]

        def median(field: str, runs: list[RestartSample] = runs) -> float:
            return statistics.median(getattr(s, field) for s in runs)

        classes = sorted({c for s in runs for c in s.classes})
        cells = [
            label,
            strategy,
            f"{median('seconds'):.1f}",
            f"{median('requests'):.0f}",
            f"{median('errors_multi'):.0f}",
            f"{median('errors_single'):.0f}",
            f"{median('window'):.1f}",
            ", ".join(classes) or "none",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def restart_table(runs: int, delay: float, standin_workers: int = 130) -> str:
    lines = [HEADER]
    for cluster in clusters(standin_workers):
        lines.extend(format_rows(cluster.label, measure_cluster(cluster, runs, delay)))
    return "\n".join(lines)
