"""The fact behind the status report (``deploys/status.py``): what runs on a Synapse host now."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.status import HEALTH_TIMEOUT, StatusReading, parse_probe_output
from deploys.host import status_probe
from deploys.host.units import LIST_UNITS, UNIT_GLOB

PROBE_SOURCE = Path(status_probe.__file__).read_text()


class SynapseStatus(FactBase[StatusReading]):
    """
    Returns what runs on the host now, in one command whatever the number of workers, changing
    nothing (not even a bytecode file): the state of every ``matrix-synapse*`` unit
    (``systemctl list-units``), each running unit's main PID, uptime and resident memory (read
    from its cgroup and ``/proc``), every listening TCP socket and its processes (``ss -ltnp``),
    and whether each health URL answers 200 (all probed at once, each within ``timeout``). The
    program is ``deploys/host/status_probe.py``, sent on the command line to the host's
    ``python3``. The command fails only when systemd does not answer.

    + health: unit -> the URL that answers 200 when its process is ready
    + timeout: seconds each health request may take

    .. code:: python

        host.get_fact(SynapseStatus,
                      health={"matrix-synapse.service": "http://127.0.0.1:8008/health"})
    """

    default = StatusReading

    @override
    def command(self, health: Mapping[str, str], timeout: float = HEALTH_TIMEOUT) -> StringCommand:
        request = status_probe.encode_request([*LIST_UNITS, UNIT_GLOB], dict(health), timeout)
        return StringCommand("python3", "-B", "-c", QuoteString(PROBE_SOURCE), QuoteString(request))

    @override
    def process(self, output: list[str]) -> StatusReading:
        return parse_probe_output(output)
