"""Report what runs where: `pyinfra inventories/prod.py deploys/status.py`.

For each host, one table of every process the deploy plans there (the same settings and plan as
``deploys/synapse.py``): unit state, main PID, uptime, resident memory, listening TCP ports, and
ready or not (by the deploy's readiness criterion: active and answering /health), plus every unit
of ours (``matrix-synapse*``) that systemd has loaded or running and the plan does not have.

One SSH command per host whatever the number of workers (the ``SynapseStatus`` fact), read while
pyinfra loads this file; there are no operations, so nothing on any host changes. With the
environment variable ``SYNAPSE_STATUS_JSON=DIR`` each host's report is also written as JSON to
``DIR/<host>.json`` on the controller.
"""

import json
import os
import sys

import click
from pyinfra import host

from deploys.components.plan import settings_and_plan
from deploys.core.render import health_urls
from deploys.core.status import host_status
from deploys.core.status_table import status_lines
from deploys.facts.status import SynapseStatus

_, plan = settings_and_plan()  # None on a retired host: nothing planned
health = health_urls(plan) if plan is not None else {}
reading = host.get_fact(SynapseStatus, health=health)
units = [p.unit for p in plan.processes] if plan is not None else []
status = host_status(host.name, units, health, reading)
# The report is the output: on standard output, apart from pyinfra's progress on standard error;
# with pyinfra's --json, standard output is pyinfra's JSON, and the tables go to standard error.
click.echo("\n".join(status_lines(status)) + "\n", err="--json" in sys.argv)
if directory := os.environ.get("SYNAPSE_STATUS_JSON"):
    with open(os.path.join(directory, f"{host.name}.json"), "w") as out:
        json.dump(status.as_dict(), out, indent=1)
