"""Component deploy: Synapse's configuration, worker files, units and services."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from deploys.core.cluster import ClusterPlan
from deploys.core.plan import WorkerPlan
from deploys.core.render import DesiredState, desired_state, retired_state
from deploys.core.restarts import restart_spec
from deploys.core.settings import Settings
from deploys.operations.cluster import main_host_applied, stop_moved_workers
from deploys.operations.synapse import apply_desired_state


@deploy("Configure Synapse and its workers")
def configure_synapse(
    settings: Settings, plan: WorkerPlan | None, cluster: ClusterPlan | None = None
) -> None:
    """
    Ship every config file, worker file and unit, remove workers no longer planned, and start or
    restart exactly the processes whose configuration changed, in waves (main first, then each
    class in batches; ``matrix_synapse_restart_*``).

    With several machines in the cluster, the order across them comes from pyinfra's: every
    host finishes an operation before any host starts the next one
    (``pyinfra/api/operations.py``, ``run_ops``), and operations run in the order of their lines
    here. So (1) every machine stops the workers the plan moved to another machine; (2) the
    main host applies its part and is ready (its apply waits for it); (3) the workers hosts
    (and retired ones) apply theirs, in parallel, unless the main host failed.

    + settings: validated settings (``deploys.core.settings.parse_settings``)
    + plan: this host's part of the plan (None: a retired host, everything of ours removed)
    + cluster: the whole cluster's plan (None: one machine, planned alone)
    """
    multi = cluster is not None and len(cluster.roles) > 1
    if multi:
        assert cluster is not None
        elsewhere = [w.name for w in cluster.workers if w.machine != host.name]
        stop_moved_workers(
            name="Stop workers the plan moved to another machine", elsewhere=elsewhere
        )
    desired = (
        desired_state(settings, plan, cluster) if plan is not None else retired_state(settings)
    )
    workers = [w.name for w in plan.workers] if plan is not None else []
    if plan is not None and plan.runs_main:
        _apply(settings, plan, desired, f"Ship Synapse config, units and {len(workers)} workers")
    if multi and (plan is None or not plan.runs_main):
        assert cluster is not None
        main_host_applied(name="Wait for the main host's apply", main_host=cluster.main_host)
        what = f"{len(workers)} workers" if plan is not None else "nothing (retired)"
        _apply(settings, plan, desired, f"Ship this machine's part of the cluster: {what}")


def _apply(settings: Settings, plan: WorkerPlan | None, desired: DesiredState, name: str) -> None:
    apply_desired_state(
        name=name,
        desired=desired,
        planned_workers=[w.name for w in plan.workers] if plan is not None else [],
        user=settings.user,
        group=settings.group,
        home=settings.data_dir,
        systemd_dir=settings.systemd_dir,
        lock_timeout=settings.deploy_lock_timeout,
        restarts=restart_spec(settings, plan),
    )
