"""Component deploy: PostgreSQL on the Synapse host (only with
``matrix_synapse_database_install_postgresql``)."""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.core.plan import WorkerPlan
from deploys.core.postgres import connection_rule, setup_sql
from deploys.core.settings import Settings
from deploys.operations.postgres import postgres_database


@deploy("PostgreSQL for Synapse")
def database(settings: Settings, plan: WorkerPlan) -> None:
    """
    Create the role and the C-collated database and keep ``max_connections`` large enough for the
    plan (``deploys.core.postgres``: room to grow, raised only when needed, never lowered).

    + settings: validated settings
    + plan: the worker plan (its workers size the connection limit)
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
