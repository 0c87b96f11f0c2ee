"""Restarts section (``matrix_synapse_restart_*``): how a change reaches the running processes.

Read by the restart planner (``deploys/host/restarts.py``, shipped in the manifest) and by the
nginx drain before a process stops (``drain_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from deploys.core.settings.reader import Reader
from deploys.host.restarts import STRATEGIES

MAX_BATCH_PERCENT: Final = 50  # more would take most of a class down at once
MAX_DRAIN_SECONDS: Final = 120  # a grace period, not a maintenance window


@dataclass(frozen=True)
class RestartSettings:
    """The restart settings.

    Attributes:
        strategy: ``rolling`` (main first and alone, then each routing class in batches, each
            wave ready before the next) or ``all-at-once`` (one wave: every affected process).
        batch_percent: the share of a class's processes restarted per wave (rounded down, at
            least 1, and always fewer than the whole class when it has two or more).
        drain_seconds: the longest wait between nginx no longer sending new requests to a
            process and the process stopping (``deploys/host/drain.py``: it ends as soon as no
            request to the process is in flight).
    """

    strategy: str
    batch_percent: int
    drain_seconds: int


def read(r: Reader) -> RestartSettings:
    return RestartSettings(
        strategy=r.check(
            "matrix_synapse_restart_strategy",
            lambda v: v in STRATEGIES,
            "allowed: " + " or ".join(repr(s) for s in STRATEGIES),
        ),
        batch_percent=r.integer("matrix_synapse_restart_batch_percent", 1, MAX_BATCH_PERCENT),
        drain_seconds=r.integer("matrix_synapse_restart_drain_seconds", 0, MAX_DRAIN_SECONDS),
    )
