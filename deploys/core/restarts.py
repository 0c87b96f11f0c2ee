"""What the restart planner (``deploys/host/restarts.py``) needs from the plan: each worker's
class and the shared topology Synapse's coupling rules depend on. Pure: no pyinfra imports."""

from __future__ import annotations

from deploys.core.processes import Process, WorkerPlan
from deploys.core.render import NGINX_UNIT, paths_for
from deploys.core.settings import Settings
from deploys.host.restarts import RestartSpec, Topology


def process_class(worker: Process) -> str:
    """Workers of one class serve the same requests or duty: the worker type, and for stream
    writers the stream too (the typing writer cannot stand in for a receipts writer)."""
    assert worker.worker_type is not None, "main is a class of its own"
    if worker.stream is not None:
        return f"{worker.worker_type.key}:{worker.stream.name}"
    return worker.worker_type.key


def topology(plan: WorkerPlan) -> Topology:
    shared = plan.shared
    return Topology(
        event_persisters=tuple(shared.stream_writers.get("events", ())),
        federation_senders=tuple(shared.federation_sender_instances),
        pushers=tuple(shared.pusher_instances),
    )


def restart_spec(settings: Settings, plan: WorkerPlan | None) -> RestartSpec:
    """The planner's inputs for ``plan``: strategy, batch size, classes, topology, whether main
    runs here (``plan`` None: a retired host, nothing runs)."""
    runs_main = plan is not None and plan.runs_main
    return RestartSpec(
        strategy=settings.restarts.strategy,
        batch_percent=settings.restarts.batch_percent,
        classes={w.name: process_class(w) for w in plan.workers} if plan is not None else {},
        topology=topology(plan) if plan is not None else Topology(),
        topology_file=paths_for(settings).shared_workers,
        runs_main=runs_main,
        # A host that no longer runs main removes nginx's routing file: nginx must let it go.
        reload_on_removal={} if runs_main else {settings.nginx.config_path: NGINX_UNIT},
    )
