"""Operation: the Synapse role and database on the local PostgreSQL server."""

from __future__ import annotations

from pyinfra import host, logger, state
from pyinfra.api import OperationError, QuoteString, StringCommand, operation

from deploys.core.postgres import (
    HBA_SCRIPT,
    ClusterAccess,
    ConnectionRule,
    hba_block,
    max_connections_sql,
    quote_literal,
    scram_matches,
)
from deploys.facts.postgres import PostgresDatabase, PostgresNetwork


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


@operation()
def postgres_network(network: ClusterAccess):
    """
    Open the local PostgreSQL to a cluster's machines: ``listen_addresses`` (a change restarts
    PostgreSQL, and says so first) and our block of ``host ... scram-sha-256`` rules at the top
    of ``pg_hba.conf`` (replaced as a whole, atomically; PostgreSQL reloads it).

    + network: where to listen and whom to let in (``deploys.core.postgres.cluster_network``)

    **Example:**

    .. code:: python

        postgres_network(
            name="PostgreSQL for the cluster's machines",
            network=cluster_network(settings, ["10.0.0.1", "10.0.0.2"]),
        )
    """
    current = host.get_fact(PostgresNetwork)
    if current.hba_file is None:
        raise OperationError("PostgreSQL is not installed or not running: no hba_file to read")
    listen = current.listen_addresses != network.listen_addresses
    hba = current.rules[: len(network.rules)] != network.rules
    if not listen and not hba:
        host.noop(f"PostgreSQL listens on {network.listen_addresses} and lets the cluster in")
        return
    if hba:
        yield StringCommand(
            "python3", "-c", QuoteString(HBA_SCRIPT), current.hba_file, _stdin=hba_block(network)
        )
    if listen:
        listen_sql = quote_literal(network.listen_addresses)
        if not state.is_executing or not state.check_for_changes:
            host.log(
                f"listen_addresses {current.listen_addresses!r} -> "
                f"{network.listen_addresses!r}: PostgreSQL restarts",
                logger.warning,
            )
        yield StringCommand(
            "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres",
            _stdin=f"ALTER SYSTEM SET listen_addresses = {listen_sql};\n",
        )
        yield StringCommand("systemctl restart postgresql")
    else:
        yield StringCommand("runuser -u postgres -- psql -XAtq -c 'SELECT pg_reload_conf()'")
