"""PostgreSQL on the Synapse host: the SQL that creates the role and database, and the
``max_connections`` the plan needs. Pure.

The password never appears in a command line: the SQL travels on standard input, and whether the
role already has the planned password is decided here by checking PostgreSQL's stored SCRAM
verifier (RFC 5802/7677) against it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

from deploys.core.plan import WorkerPlan
from deploys.core.settings import Settings

# Connections beyond the pools: superuser slots, psql and monitoring.
CONNECTION_HEADROOM: Final = 20
# Synapse needs C collation and ctype (docs/postgres.md).
DATABASE_OPTIONS: Final = "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"


def max_connections(settings: Settings, plan: WorkerPlan) -> int:
    """Every process's pool plus headroom, and never below PostgreSQL's default of 100."""
    return max(100, plan.database_connections(settings) + len(plan.processes) + CONNECTION_HEADROOM)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def setup_sql(settings: Settings, plan: WorkerPlan) -> str:
    """Idempotent SQL (for ``psql -v ON_ERROR_STOP=1``) creating role and database."""
    db = settings.database
    role, name = quote_ident(db.user), quote_ident(db.name)
    password = quote_literal(db.password or "")
    return "\n".join(
        [
            "SET password_encryption = 'scram-sha-256';",
            f"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = {quote_literal(db.user)})\\gexec",
            f"ALTER ROLE {role} WITH LOGIN PASSWORD {password};",
            f"SELECT 'CREATE DATABASE {name} OWNER {role} "
            f"{DATABASE_OPTIONS.replace(chr(39), chr(39) * 2)}'"
            " WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = "
            f"{quote_literal(db.name)})\\gexec",
            f"ALTER SYSTEM SET max_connections = {max_connections(settings, plan)};",
            "",
        ]
    )


def scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` verifier is for ``password``."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        iterations_salt, keys = verifier[len("SCRAM-SHA-256$") :].split("$")
        iterations, salt = iterations_salt.split(":")
        stored_key, server_key = keys.split(":")
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    expected_stored = base64.b64encode(hashlib.sha256(client_key).digest()).decode()
    expected_server = base64.b64encode(
        hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    ).decode()
    return hmac.compare_digest(expected_stored, stored_key) and hmac.compare_digest(
        expected_server, server_key
    )
