"""Fact: the Synapse role and database on the local PostgreSQL server."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override


class PostgresDatabase(FactBase[dict[str, object]]):
    """
    Returns, from the local PostgreSQL server, the role's stored password verifier (or None if
    the role is missing), whether the database exists with its collation and ctype, and
    ``max_connections``, in one command.

    + user: the database role
    + dbname: the database

    .. code:: python

        host.get_fact(PostgresDatabase, user="synapse", dbname="synapse")
    """

    @staticmethod
    def default() -> dict[str, object]:
        return {}

    @override
    def command(self, user: str, dbname: str) -> StringCommand:
        def literal(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        queries = [
            "SELECT 'role', coalesce(rolpassword, '') FROM pg_authid"
            f" WHERE rolname = {literal(user)}",
            f"SELECT 'db', datcollate, datctype FROM pg_database WHERE datname = {literal(dbname)}",
            "SELECT 'max', setting FROM pg_settings WHERE name = 'max_connections'",
        ]
        return StringCommand(
            # Before PostgreSQL is installed there is nothing to read; once it is, errors count.
            "if command -v psql >/dev/null; then runuser -u postgres -- psql -XAt -F '|'",
            *[part for q in queries for part in ("-c", QuoteString(q))],
            "|| exit 1; fi",
        )

    @override
    def process(self, output: list[str]) -> dict[str, object]:
        result: dict[str, object] = {}
        for line in output:
            kind, _, rest = line.partition("|")
            if kind == "role":
                result["role_verifier"] = rest
            elif kind == "db":
                result["collation"] = tuple(rest.split("|"))
            elif kind == "max":
                result["max_connections"] = int(rest)
        return result
