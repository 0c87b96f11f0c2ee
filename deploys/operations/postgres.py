"""Operation: the Synapse role and database on the local PostgreSQL server."""

from __future__ import annotations

from pyinfra import host, logger, state
from pyinfra.api import OperationError, StringCommand, operation

from deploys.core.postgres import ConnectionRule, max_connections_sql, scram_matches
from deploys.facts.postgres import PostgresDatabase


@operation()
def postgres_database(user: str, dbname: str, password: str, connections: ConnectionRule, sql: str):
    """
    Create the Synapse role and database on the local PostgreSQL (C collation), set the role's
    password when it differs, and raise ``max_connections`` when the rule says so (it restarts
    PostgreSQL, and says so and why before it runs). SQL goes on standard input.

    + user: the database role
    + dbname: the database
    + password: the role's password (compared with the stored SCRAM verifier, never printed)
    + connections: how ``max_connections`` is sized (``deploys.core.postgres.connection_rule``:
      room for the workers planned or running now and spare ones; raised, never lowered)
    + sql: the idempotent setup SQL (``deploys.core.postgres.setup_sql``)

    **Example:**

    .. code:: python

        postgres_database(
            name="Create the synapse role and database",
            user="synapse", dbname="synapse", password=password,
            connections=connection_rule(settings, plan), sql=setup_sql(settings),
        )
    """
    current = host.get_fact(PostgresDatabase, user=user, dbname=dbname)
    collation = current.collation
    sizing = connections.size(current.max_connections, current.synapse_units)
    planned = scram_matches(current.role_verifier, password) and collation == ("C", "C")
    if planned and not sizing.restart:
        host.noop(f"PostgreSQL role {user} and database {dbname} as planned")
        return
    if collation not in (None, ("C", "C")):
        raise OperationError(
            f"database {dbname} exists with collation {collation}; Synapse needs "
            "C (recreate it, or point matrix_synapse_database_name elsewhere)"
        )
    # The body runs twice (prepare, execute): say it once, before the first yield.
    if sizing.restart and (not state.is_executing or not state.check_for_changes):
        host.log(sizing.reason(), logger.warning)
    setup = sql + (max_connections_sql(sizing.value) if sizing.restart else "")
    yield StringCommand(
        "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres", _stdin=setup
    )
    if sizing.restart:
        yield StringCommand("systemctl restart postgresql")
