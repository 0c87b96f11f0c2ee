"""Operations that order the machines of one cluster (``deploys.core.cluster``): a worker that
moved to another machine stops on its old machine before any machine applies, and the workers
hosts apply only once the main host has. Paired with ``deploys/facts/cluster.py``."""

from __future__ import annotations

from collections.abc import Collection

from pyinfra import host, state
from pyinfra.api import OperationError, StringCommand, operation

from deploys.facts.cluster import RunningWorkers
from deploys.host.units import worker_unit


@operation()
def stop_moved_workers(elsewhere: Collection[str]):
    """
    Stop the workers running on this machine that the cluster plan now places on another
    machine. It runs on every machine of the cluster before any of them applies its plan, so
    a worker that moves is stopped on its old machine before its new machine starts it: two
    processes of one name never run at once. The old machine's own apply then disables the
    unit and removes its files, as for any worker it no longer plans.

    + elsewhere: the names of the workers the cluster plan places on other machines

    **Example:**

    .. code:: python

        stop_moved_workers(
            name="Stop workers that moved to another machine",
            elsewhere=["generic-10", "generic-11"],
        )
    """
    wanted = set(elsewhere)
    moved = [n for n in host.get_fact(RunningWorkers) if n in wanted]
    if not moved:
        host.noop("no worker here is planned on another machine")
        return
    yield StringCommand("systemctl", "stop", *(worker_unit(n) for n in moved))


@operation()
def main_host_applied(main_host: str):
    """
    Fail this host, before it changes anything, when the cluster's main host failed its apply:
    workers hosts apply only after the main process (and the shared config it serves) is in
    place and ready. Runs no command.

    + main_host: the inventory name of the cluster's main host

    **Example:**

    .. code:: python

        main_host_applied(name="Wait for the main host", main_host="matrix-1")
    """
    failed = {h.name for h in state.failed_hosts}
    if main_host in failed:
        raise OperationError(
            f"the cluster's main host {main_host} failed, so this workers host changes nothing "
            "(its workers need the main process and the shared config main serves)"
        )
    host.noop(f"main host {main_host} applied")
    yield from ()  # an operation is a generator, even one that never runs a command
