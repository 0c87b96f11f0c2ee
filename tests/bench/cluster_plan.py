"""Benchmark row: the controller's pure work for one cluster, no host involved.

    python -m tests.bench.run --cluster-plan-only      # just this row (seconds, no test hosts)
    python -m tests.bench.cluster_plan                 # the same, on its own

What a deploy of 10,000 workers over 100 machines (100 each) costs the controller before any SSH:
every host's settings parsed, the one cluster plan (``deploys.core.cluster.plan_inventory``),
and each machine's desired state rendered from its view (``deploys.core.render.desired_state``),
plus what the main host renders from the whole cluster once that is wired (nginx routes and the
Prometheus targets of all 10,000 workers). Time is the median wall time of the runs (no tracing);
peak memory is tracemalloc's peak of Python allocations during one more run, and the process's
peak RSS. One machine with 1,000 workers (``build_plan`` + ``desired_state``) is the reference.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from deploys.core.cluster import plan_inventory
from deploys.core.metrics import scrape_targets
from deploys.core.plan import build_plan
from deploys.core.render import desired_state, nginx_config
from deploys.core.settings import parse_settings
from tests.support.settings_data import make_data

TIMES = "\N{MULTIPLICATION SIGN}"
MACHINES = 100
WORKERS_PER_MACHINE = 100


def cluster_data(machines: int = MACHINES) -> dict[str, dict[str, Any]]:
    """Host data of one cluster: main runs the one-of-each preset (16 workers) and 84 more generic
    workers; every other machine 70 generic workers, 10 federation senders, 10 pushers and 10
    event persisters. Exactly ``WORKERS_PER_MACHINE`` workers on each."""
    data = {
        "main": make_data(
            matrix_synapse_workers_enabled=True,
            matrix_synapse_private_address="10.1.0.1",
            matrix_synapse_workers_generic_workers_count=85,
        )
    }
    for index in range(1, machines):
        data[f"workers-{index}"] = make_data(
            matrix_synapse_workers_enabled=True,
            matrix_synapse_role="workers",
            matrix_synapse_private_address=f"10.1.{index // 250}.{index % 250 + 1}",
            matrix_synapse_workers_preset="little-federation-helper",
            matrix_synapse_workers_generic_workers_count=70,
            matrix_synapse_workers_federation_sender_workers_count=10,
            matrix_synapse_workers_pusher_workers_count=10,
            matrix_synapse_workers_stream_writer_events_stream_workers_count=10,
        )
    return data


def plan_and_render_cluster(data: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Plan the cluster (as the main host would) and render every machine. Returns the workers
    planned and the files rendered."""
    plan = plan_inventory(data, "main")
    files = 0
    for machine in plan.machines:
        settings = parse_settings(data[machine])
        view = plan.view(machine)
        assert view is not None
        files += len(desired_state(settings, view).files)
    main = parse_settings(data["main"])
    nginx_config(plan.combined, main.nginx)
    scrape_targets(plan.combined.processes, main.domain)
    return len(plan.workers), files


def plan_and_render_one_machine(data: dict[str, Any]) -> tuple[int, int]:
    settings = parse_settings(data)
    plan = build_plan(settings, "main")
    return len(plan.workers), len(desired_state(settings, plan).files)


@dataclasses.dataclass(frozen=True)
class Measured:
    label: str
    workers: int
    files: int
    seconds: float
    peak_mib: float


def measure(label: str, work: Callable[[], tuple[int, int]], runs: int) -> Measured:
    work()  # warm: templates compiled, modules imported
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        workers, files = work()
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    try:
        work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Measured(label, workers, files, statistics.median(seconds), peak / 2**20)


def cluster_rows(runs: int = 3) -> str:
    """The Markdown table: 100 machines x 100 workers, and one machine x 1,000 for reference."""
    one = make_data(
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_preset="little-federation-helper",
        matrix_synapse_workers_generic_workers_count=999,
    )
    data = cluster_data()
    rows = [
        measure(f"1 machine {TIMES} 1,000 workers", lambda: plan_and_render_one_machine(one), runs),
        measure(
            f"{MACHINES} machines {TIMES} {WORKERS_PER_MACHINE} workers (one cluster)",
            lambda: plan_and_render_cluster(data),
            runs,
        ),
    ]
    assert rows[1].workers == MACHINES * WORKERS_PER_MACHINE, rows[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "| Controller, pure (plan + render) | Workers | Files rendered | Wall time (s) | "
        "Peak Python allocations (MiB) |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {r.label} | {r.workers:,} | {r.files:,} | {r.seconds:.2f} | {r.peak_mib:.0f} |"
            for r in rows
        ),
    ]
    ratio = rows[1].seconds / rows[0].seconds
    return (
        "\n".join(lines)
        + f"\n\nMedian of {runs} runs; 10,000 ÷ 1,000 workers: {ratio:.1f}{TIMES} the time. "
        f"Peak RSS of the benchmark process: {rss:.0f} MiB; load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + "."
    )


if __name__ == "__main__":
    print(cluster_rows(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
