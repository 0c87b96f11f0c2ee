"""Fact: the Synapse role and database on the local PostgreSQL server, and the Synapse units
that run now (who may hold connections). Paired with ``deploys/operations/postgres.py``."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.postgres import HbaRule, quote_literal
from deploys.host.units import MAIN_UNIT, WORKER_UNIT_PREFIX


@dataclass(frozen=True)
class Database:
    """What PostgreSQL has; all None before PostgreSQL is installed."""

    role_verifier: str | None = None  # the role's stored password verifier; None: no role
    collation: tuple[str, str] | None = None  # the database's (collate, ctype); None: no database
    max_connections: int | None = None
    # Synapse units running now (active, activating, reloading or deactivating).
    synapse_units: tuple[str, ...] = ()


# Units whose processes may hold connections: running, starting, reloading or stopping.
RUNNING_STATES = "active,activating,reloading,deactivating"


class PostgresDatabase(FactBase[Database]):
    """
    Returns, from the local PostgreSQL server, the role's stored password verifier (or None if
    the role is missing), whether the database exists with its collation and ctype, and
    ``max_connections``; and the Synapse units running now; in one command.

    + user: the database role
    + dbname: the database

    .. code:: python

        host.get_fact(PostgresDatabase, user="synapse", dbname="synapse")
    """

    default = Database

    @override
    def command(self, user: str, dbname: str) -> StringCommand:
        queries = [
            "SELECT 'role', coalesce(rolpassword, '') FROM pg_authid"
            f" WHERE rolname = {quote_literal(user)}",
            "SELECT 'db', datcollate, datctype FROM pg_database"
            f" WHERE datname = {quote_literal(dbname)}",
            "SELECT 'max', setting FROM pg_settings WHERE name = 'max_connections'",
        ]
        units = (MAIN_UNIT, f"{WORKER_UNIT_PREFIX}*.service")
        return StringCommand(
            # No pipefail in sh: a failing systemctl must fail the fact, not read as "none run".
            f"units=$(systemctl list-units --plain --no-legend --full --state={RUNNING_STATES}",
            *[QuoteString(u) for u in units],
            ") || exit 1; printf '%s\\n' \"$units\" | sed 's/^/unit|/';",
            # Before PostgreSQL is installed there is nothing to read; once it is, errors count.
            "if command -v psql >/dev/null; then runuser -u postgres -- psql -XAt -F '|'",
            *[part for q in queries for part in ("-c", QuoteString(q))],
            "|| exit 1; fi",
        )

    @override
    def process(self, output: list[str]) -> Database:
        role_verifier, collation, max_connections = None, None, None
        units: list[str] = []
        for line in output:
            kind, _, rest = line.partition("|")
            if kind == "unit" and rest.split():
                units.append(rest.split()[0])
            elif kind == "role":
                role_verifier = rest
            elif kind == "db":
                collate, _, ctype = rest.partition("|")
                collation = (collate, ctype)
            elif kind == "max":
                max_connections = int(rest)
        return Database(role_verifier, collation, max_connections, tuple(units))


@dataclass(frozen=True)
class Network:
    """The local PostgreSQL's ``listen_addresses``, its hba file and that file's valid rules in
    order; all empty before PostgreSQL is installed."""

    listen_addresses: str | None = None
    hba_file: str | None = None
    rules: tuple[HbaRule, ...] = ()


class PostgresNetwork(FactBase[Network]):
    """
    Returns the local PostgreSQL's ``listen_addresses``, the path of its ``pg_hba.conf`` and the
    file's ``host`` rules in order (``pg_hba_file_rules``), in one command.

    .. code:: python

        host.get_fact(PostgresNetwork)
    """

    default = Network

    @override
    def command(self) -> StringCommand:
        queries = [
            "SELECT 'listen', setting FROM pg_settings WHERE name = 'listen_addresses'",
            "SELECT 'hba', setting FROM pg_settings WHERE name = 'hba_file'",
            "SELECT 'rule', type, array_to_string(database, ','), array_to_string(user_name, ','),"
            " coalesce(address, ''), coalesce(netmask, ''), auth_method FROM pg_hba_file_rules"
            " WHERE error IS NULL ORDER BY line_number",
        ]
        return StringCommand(
            "if command -v psql >/dev/null; then runuser -u postgres -- psql -XAt -F '|'",
            *[part for q in queries for part in ("-c", QuoteString(q))],
            "|| exit 1; fi",
        )

    @override
    def process(self, output: list[str]) -> Network:
        listen, hba, rules = None, None, []
        for line in output:
            kind, _, rest = line.partition("|")
            if kind == "listen":
                listen = rest
            elif kind == "hba":
                hba = rest
            elif kind == "rule":
                kind, database, user, address, netmask, method = rest.split("|")
                if kind == "host":
                    rules.append(HbaRule(database, user, address, netmask, method))
        return Network(listen, hba, tuple(rules))
