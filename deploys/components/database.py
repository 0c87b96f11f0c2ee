"""Component deploy: PostgreSQL on the Synapse host (only with
``matrix_synapse_database_install_postgresql``)."""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.core.plan import WorkerPlan
from deploys.core.postgres import cluster_network, connection_rule, setup_sql
from deploys.core.settings import Settings
from deploys.operations.postgres import postgres_database, postgres_network


@deploy("PostgreSQL for Synapse")
def database(settings: Settings, plan: WorkerPlan, peers: list[str] | None = None) -> None:
    """
    Create the role and the C-collated database and keep ``max_connections`` large enough for the
    plan (``deploys.core.postgres``: room to grow, raised only when needed, never lowered).

    + settings: validated settings
    + plan: the worker plan (its workers size the connection limit): a cluster's, every machine
    + peers: a cluster's private addresses, main's first: PostgreSQL listens on main's too and
      lets every machine in (scram-sha-256); None on one machine
    """
    db = settings.database
    postgres_database(
        name=f"Create PostgreSQL role {db.user} and database {db.name}",
        user=db.user,
        dbname=db.name,
        password=db.password or "",
        connections=connection_rule(settings, plan),
        sql=setup_sql(settings),
    )
    if peers:
        postgres_network(
            name="PostgreSQL for the cluster's machines", network=cluster_network(settings, peers)
        )
