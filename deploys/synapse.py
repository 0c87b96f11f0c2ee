"""Deploy Matrix Synapse and its workers: `pyinfra inventories/prod.py deploys/synapse.py`.

Reads the host's settings once, plans every process, then runs the component deploys in order.
Bad settings stop the run here, while pyinfra prepares, before any operation changes any host.
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from deploys.components.configure import configure_synapse
from deploys.components.database import database
from deploys.components.install import install
from deploys.components.plan import settings_and_plan
from deploys.components.tls import tls_after_nginx, tls_before_nginx
from deploys.core.machines import claim_machine
from deploys.core.settings import SettingsError
from deploys.facts.synapse import MachineId

settings, plan = settings_and_plan()
try:
    # Read-only, at load time: every host of the run is checked before any operation runs.
    claim_machine(host.name, host.get_fact(MachineId))
except SettingsError as error:
    raise PyinfraError(f"{host.name}: {error}") from None

if settings.install.enabled:
    install(settings)
if settings.database.install_postgresql:
    database(settings, plan)
if settings.tls.enabled and settings.nginx.enabled:
    tls_before_nginx(settings)
configure_synapse(settings, plan)
if settings.tls.mode == "acme" and settings.nginx.enabled:
    tls_after_nginx(settings)
