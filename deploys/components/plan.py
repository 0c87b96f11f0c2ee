"""The current host's settings and its part of the cluster plan, read once per run by each entry
script (``deploys/synapse.py`` deploys it, ``deploys/status.py`` reports on it), so both see the
same plan.

Every inventory host with the same ``matrix_domain`` is one cluster (``deploys.core.cluster``).
The plan is computed from every inventory host's data (hosts a ``--limit`` leaves out too, so a
limit never changes the plan), once per cluster and run: pyinfra loads the entry script once per
host in one process, and each host reads the cached plan. A one-host inventory plans exactly as
before (``build_plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host, state
from pyinfra.api.exceptions import PyinfraError

from deploys.core.cluster import (
    ClusterPlan,
    cluster_settings,
    limited_run_problem,
    plan_cluster,
    secret_problems,
)
from deploys.core.plan import WorkerPlan, build_plan
from deploys.core.settings import Settings, SettingsError, parse_settings
from deploys.core.settings.cluster import ROLE_MAIN
from deploys.facts.cluster import RunningWorkers


@dataclass(frozen=True)
class HostPlan:
    """One host's part of its cluster: its settings, what it runs (``view``; None when retired)
    and the whole cluster's plan."""

    settings: Settings
    view: WorkerPlan | None
    cluster: ClusterPlan


# (id of the pyinfra state, matrix_domain) -> the cluster's settings and plan, or its error.
_CACHE: dict[tuple[int, str], tuple[dict[str, Settings], ClusterPlan] | PyinfraError] = {}


def host_plan() -> HostPlan:
    """The current host's settings and plan. Bad settings on any host of the cluster, or a rule
    between its hosts, stop the run here, while pyinfra prepares, before any operation runs on
    any host, with one line per problem naming the host, the key, the value and what is allowed.
    A host of the cluster that pyinfra could not connect to stops the run too (every machine
    applies its part of one plan, so none applies without the others)."""
    key = (id(state), str(host.data.get("matrix_domain")))
    if key not in _CACHE:
        _CACHE[key] = _plan_cluster()
    cached = _CACHE[key]
    if isinstance(cached, PyinfraError):
        raise cached
    settings, cluster = cached
    unreachable = [h.name for h in state.failed_hosts if h.name in settings]
    if unreachable:
        raise PyinfraError(
            f"{', '.join(sorted(unreachable))}: could not connect, so no host of the cluster "
            f"{cluster.domain} ({', '.join(settings)}) is changed; fix the connection or take "
            "the host out of the inventory, then run again"
        )
    return HostPlan(settings[host.name], cluster.view(host.name), cluster)


def _plan_cluster() -> tuple[dict[str, Settings], ClusterPlan] | PyinfraError:
    data = {h.name: h.data.dict() for h in state.inventory}
    domain = data[host.name].get("matrix_domain")
    members = [h for h, d in data.items() if d.get("matrix_domain") == domain]
    try:
        if len(members) == 1:  # one machine: its errors exactly as they always were
            settings = {host.name: parse_settings(data[host.name])}
        else:
            settings = cluster_settings(data, host.name)
        try:
            cluster = plan_cluster(settings)
        except SettingsError:
            if len(members) == 1 and settings[host.name].cluster.role == ROLE_MAIN:
                build_plan(settings[host.name], host.name)  # raises the one-machine problems
            raise
        problems = secret_problems(settings)
        if problems:
            raise SettingsError(problems)
    except SettingsError as error:
        return PyinfraError(f"{host.name}: {error}")
    return settings, cluster


def refuse_unsafe_limit(planned: HostPlan) -> None:
    """Stop the run, before any operation, when a ``--limit`` leaves out machines of this
    host's cluster and this host would start a worker it does not run now (it may still run on
    a machine left out: ``deploys.core.cluster.limited_run_problem``). Reads the running
    workers only under such a limit, so an unlimited run keeps its round trips."""
    cluster = planned.cluster
    left_out = [h for h in cluster.roles if not state.is_host_in_limit(state.inventory.get_host(h))]
    if planned.view is None or not left_out:
        return
    problem = limited_run_problem(cluster, host.name, host.get_fact(RunningWorkers), left_out)
    if problem:
        raise PyinfraError(problem)


def settings_and_plan() -> tuple[Settings, WorkerPlan | None]:
    """The current host's settings and what it runs (None on a retired host)."""
    plan = host_plan()
    return plan.settings, plan.view
