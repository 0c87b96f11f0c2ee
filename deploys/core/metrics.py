"""Prometheus service discovery: every Synapse process's metrics endpoint as a ``file_sd`` target.

Pure: the plan in, JSON out. Synapse's metrics guide says every worker must be scraped on its own
(docs/metrics-howto.md), and its Grafana dashboard (contrib/grafana/synapse.json) filters every
panel by three labels, so each target carries them:

- ``instance``: the homeserver (``matrix_domain``), the same on every process. The dashboard's
  ``$instance`` is a single choice matched exactly (``instance="$instance"``) in panels titled
  "all workers", so one value per process would show one process at a time. Prometheus keeps a
  target's own ``instance`` instead of setting it to the address.
- ``job``: ``synapse`` for the main process (the dashboard's "deploys" annotation reads
  ``synapse_build_info{job="synapse"}``), and the worker type for a worker, in
  matrix-docker-ansible-deploy's spelling (``generic_worker``, ``stream_writer``,
  ``federation_sender``, ``media_repository``, ...): the dashboard's ``$job`` groups by it.
- ``index``: the process's number within its job, from 0 in plan order, which is the number in a
  preset worker's name (``generic-3`` is ``generic_worker`` 3; stream writers count across
  streams, as their names do).

and one more, ``worker``: the process name (``main``, ``generic-3``), which says which unit to
look at (``matrix-synapse-worker@generic-3.service``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from deploys.core.processes import Listener, Process, connect_address

MAIN_JOB: Final = "synapse"
METRICS_PATH: Final = "/_synapse/metrics"  # what Synapse's metrics listener serves (any path)


@dataclass(frozen=True)
class Target:
    """One scrape target: ``address`` is ``host:port``; ``labels`` are strings (file_sd's rule)."""

    address: str
    labels: Mapping[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.address}{METRICS_PATH}"


def job(process: Process) -> str:
    """The ``job`` label of a process: ``synapse`` for main, else its worker type."""
    if process.worker_type is None:
        return MAIN_JOB
    return process.worker_type.mdad_type


def scrape_targets(
    processes: Iterable[Process],
    instance: str,
    reach: Callable[[Process, Listener], str] | None = None,
) -> tuple[Target, ...]:
    """One target per process that has a metrics listener, in the order given.

    Args:
        processes: every process of the homeserver (``WorkerPlan.processes``), main first.
        instance: the ``instance`` label of every target: the homeserver's name.
        reach: the address Prometheus connects to a metrics listener at; by default one the
            listener binds, for a Prometheus on the same machine (``0.0.0.0`` -> 127.0.0.1).

    Returns:
        The targets; ``index`` counts within each job in the order given.
    """
    counts: Counter[str] = Counter()
    targets = []
    for process in processes:
        listener = process.listener("metrics")
        if listener is None:
            continue
        name = job(process)
        index = counts[name]
        counts[name] += 1
        host = reach(process, listener) if reach else connect_address(listener.bind_addresses)
        if ":" in host:
            host = f"[{host}]"
        targets.append(
            Target(
                address=f"{host}:{listener.port}",
                labels={
                    "instance": instance,
                    "job": name,
                    "index": str(index),
                    "worker": process.name,
                },
            )
        )
    return tuple(targets)


def file_sd_json(targets: Iterable[Target]) -> str:
    """The ``file_sd`` document: one target group per process (its own labels), stable bytes."""
    groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
    return json.dumps(groups, indent=2) + "\n"
