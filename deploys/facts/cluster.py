"""Fact: the Synapse worker units that run on a host now, read by the cluster's "stop the
workers that moved away" step. Paired with ``deploys/operations/cluster.py``."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.host.units import LIST_UNITS, WORKER_UNIT_PREFIX, worker_name

# A unit that runs or may run again by itself (Restart=always after a failure).
RUNNING_STATES = "active,activating,reloading,failed"


class RunningWorkers(FactBase[list[str]]):
    """
    Returns the names of the workers whose ``matrix-synapse-worker@NAME.service`` is active,
    starting, reloading or failed on the host, in one command.

    .. code:: python

        host.get_fact(RunningWorkers)
    """

    @staticmethod
    def default() -> list[str]:
        return []

    @override
    def command(self) -> StringCommand:
        return StringCommand(
            *LIST_UNITS, f"--state={RUNNING_STATES}", QuoteString(f"{WORKER_UNIT_PREFIX}*.service")
        )

    @override
    def process(self, output: list[str]) -> list[str]:
        names = (worker_name(line.split()[0]) for line in output if line.split())
        return sorted(n for n in names if n)
