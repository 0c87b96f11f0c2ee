"""Component deploy: the main host's Redis for a cluster of several machines."""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.core.cluster import ClusterPlan
from deploys.core.render import redis_server_config
from deploys.core.settings import Settings
from deploys.operations.files import BatchFile, batch

REDIS_CONF = "/etc/redis/redis.conf"
REDIS_INCLUDE = "/etc/redis/pyinfra-synapse.conf"
# Redis reads the include where it stands: at the end, its lines win over Debian's defaults.
INCLUDE_AND_RESTART = (
    f"grep -qxF 'include {REDIS_INCLUDE}' {REDIS_CONF} "
    f"|| echo 'include {REDIS_INCLUDE}' >> {REDIS_CONF}; systemctl restart redis-server"
)


@deploy("Redis for the cluster")
def redis_server(settings: Settings, cluster: ClusterPlan) -> None:
    """
    On the main host of a cluster of several machines, when Redis is this host's (Synapse's
    Redis left at loopback): Redis listens on the main host's private address as well as
    loopback, and requires ``matrix_synapse_redis_password``. One file of ours
    (``/etc/redis/pyinfra-synapse.conf``, 0640 root:redis, never printed), included at the end
    of Debian's ``redis.conf``; a change restarts Redis (every process reconnects, and the
    Synapse processes whose config changed restart in the next step).

    + settings: validated settings of the main host
    + cluster: the cluster's plan
    """
    content = redis_server_config(settings, cluster)
    if content is None:
        return
    batch(
        name="Redis listens on the private address and requires the password",
        files=[BatchFile(REDIS_INCLUDE, content=content, mode=0o640, group="redis", secret=True)],
        on_change=INCLUDE_AND_RESTART,
    )
