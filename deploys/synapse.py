"""Deploy Matrix Synapse and its workers: `pyinfra inventories/prod.py deploys/synapse.py`.

Reads the host's settings once, plans every process of its cluster (every inventory host with
the same ``matrix_domain``), then runs the component deploys in order. Bad settings stop the run
here, while pyinfra prepares, before any operation changes any host. The main host installs and
runs what the cluster shares (PostgreSQL, Redis, nginx); a workers host runs only its workers; a
retired host has everything of ours stopped and removed.
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from deploys.components.configure import configure_synapse
from deploys.components.database import database
from deploys.components.install import install
from deploys.components.plan import host_plan, refuse_unsafe_limit
from deploys.components.redis import redis_server
from deploys.components.tls import tls_certificate
from deploys.core.machines import claim_machine
from deploys.core.settings import SettingsError
from deploys.facts.synapse import MachineId

planned = host_plan()
settings, plan, cluster = planned.settings, planned.view, planned.cluster
runs_main = plan is not None and plan.runs_main
try:
    # Read-only, at load time: every host of the run is checked before any operation runs.
    claim_machine(host.name, host.get_fact(MachineId))
except SettingsError as error:
    raise PyinfraError(f"{host.name}: {error}") from None
refuse_unsafe_limit(planned)  # a --limit that leaves out a moved worker's old machine

if settings.install.enabled and plan is not None:
    install(settings, shared=runs_main)
if runs_main and settings.database.install_postgresql:
    addresses = [a for a in cluster.private_addresses.values() if a]
    # Sized for every machine's workers; open to the other machines.
    database(settings, cluster.combined, addresses if cluster.multi_machine else None)
if runs_main and cluster.multi_machine:
    redis_server(settings, cluster)
if runs_main and settings.tls.enabled and settings.nginx.enabled:
    tls_certificate(settings)
configure_synapse(settings, plan, cluster)
