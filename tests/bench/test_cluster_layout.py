"""The benchmark's one-cluster layout (tests/bench/cluster_layout.py) plans as one cluster of 8
machines x 130 workers, with its shared secrets accepted. Pure and fast (no test host)."""

from __future__ import annotations

from collections import Counter

import pytest

from deploys.core.cluster import cluster_settings, plan_cluster, secret_problems
from deploys.core.processes import Process
from tests.bench.cluster_layout import (
    DOMAIN,
    MACHINES,
    WORKERS_HOST_COUNTS,
    WORKERS_PER_MACHINE,
    cluster_data,
)
from tests.support.settings_data import make_data

ADDRESSES = [f"10.213.0.{i + 2}" for i in range(MACHINES)]


def types(workers: tuple[Process, ...]) -> Counter[str]:
    """Worker type key -> count; a stream writer as ``stream_writer_<stream>_stream``."""
    return Counter(
        f"stream_writer_{w.stream.name}_stream" if w.stream else w.worker_type.key
        for w in workers
        if w.worker_type is not None
    )


def test_eight_machines_plan_as_one_cluster_of_130_workers_each() -> None:
    data = {f"m{i}": make_data(**d) for i, d in enumerate(cluster_data(ADDRESSES))}
    settings = cluster_settings(data, "m3")
    assert list(settings) == [f"m{i}" for i in range(MACHINES)]
    assert secret_problems(settings) == []
    plan = plan_cluster(settings)
    assert (plan.domain, plan.main_host) == (DOMAIN, "m0")
    assert plan.machines == tuple(data)
    assert dict(plan.private_addresses) == dict(zip(data, ADDRESSES, strict=True))
    assert [len(plan.machine_workers[m]) for m in plan.machines] == [WORKERS_PER_MACHINE] * 8
    assert len({w.name for w in plan.workers}) == MACHINES * WORKERS_PER_MACHINE
    # main: the single-host row's 130; every other machine the same mix of types.
    assert types(plan.machine_workers["m0"]) == {"generic": 129, "federation_sender": 1}
    for machine in plan.machines[1:]:
        assert types(plan.machine_workers[machine]) == WORKERS_HOST_COUNTS, machine
    # The first workers host's generic workers follow main's in the numbering.
    assert plan.machine_workers["m1"][0].name == "generic-129"


def test_too_few_workers_per_machine_is_refused() -> None:
    with pytest.raises(ValueError, match="30 workers per machine: need more than 30"):
        cluster_data(ADDRESSES, workers=30)
