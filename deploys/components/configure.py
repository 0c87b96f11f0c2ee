"""Component deploy: Synapse's configuration, worker files, units and services."""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.core.plan import WorkerPlan
from deploys.core.render import desired_state
from deploys.core.restarts import restart_spec
from deploys.core.settings import Settings
from deploys.operations.synapse import apply_desired_state


@deploy("Configure Synapse and its workers")
def configure_synapse(settings: Settings, plan: WorkerPlan) -> None:
    """
    Ship every config file, worker file and unit, remove workers no longer planned, and start or
    restart exactly the processes whose configuration changed, in waves (main first, then each
    class in batches; ``matrix_synapse_restart_*``).

    + settings: validated settings (``deploys.core.settings.parse_settings``)
    + plan: the worker plan built from them
    """
    apply_desired_state(
        name=f"Ship Synapse config, units and {len(plan.workers)} workers",
        desired=desired_state(settings, plan),
        planned_workers=[w.name for w in plan.workers],
        user=settings.user,
        group=settings.group,
        home=settings.data_dir,
        systemd_dir=settings.systemd_dir,
        lock_timeout=settings.deploy_lock_timeout,
        restarts=restart_spec(settings, plan),
    )
