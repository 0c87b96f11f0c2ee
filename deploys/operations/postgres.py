"""Operation: the Synapse role and database on the local PostgreSQL server."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, StringCommand, operation

from deploys.core.postgres import scram_matches
from deploys.facts.postgres import PostgresDatabase


@operation()
def postgres_database(user: str, dbname: str, password: str, max_connections: int, sql: str):
    """
    Create the Synapse role and database on the local PostgreSQL (C collation) and size
    ``max_connections``; set the role's password when it differs. SQL goes on standard input.

    + user: the database role
    + dbname: the database
    + password: the role's password (compared with the stored SCRAM verifier, never printed)
    + max_connections: the server's ``max_connections``; PostgreSQL restarts when it changes
    + sql: the idempotent setup SQL (``deploys.core.postgres.setup_sql``)

    **Example:**

    .. code:: python

        postgres_database(
            name="Create the synapse role and database",
            user="synapse", dbname="synapse", password=password, max_connections=200,
            sql=setup_sql(settings, plan),
        )
    """
    current = host.get_fact(PostgresDatabase, user=user, dbname=dbname)
    collation = current.collation
    if (
        scram_matches(current.role_verifier, password)
        and collation == ("C", "C")
        and current.max_connections == max_connections
    ):
        host.noop(f"PostgreSQL role {user} and database {dbname} as planned")
        return
    if collation not in (None, ("C", "C")):
        raise OperationError(
            f"database {dbname} exists with collation {collation}; Synapse needs "
            "C (recreate it, or point matrix_synapse_database_name elsewhere)"
        )
    yield StringCommand(
        "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres", _stdin=sql
    )
    if current.max_connections != max_connections:
        yield StringCommand("systemctl restart postgresql")
