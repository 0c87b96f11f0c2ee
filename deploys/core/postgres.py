"""PostgreSQL on the Synapse host: the SQL that creates the role and database, and how
``max_connections`` is sized. Pure.

The password never appears in a command line: the SQL travels on standard input, and whether the
role already has the planned password is decided here by checking PostgreSQL's stored SCRAM
verifier (RFC 5802/7677) against it.

``max_connections`` only changes with a PostgreSQL restart (every Synapse process loses its
connections), so it is sized generously and kept stable (``ConnectionRule``):

- **What a run needs.** Each process holds at most its pool (``..._main_cp_max``,
  ``..._workers_cp_max``) plus the one connection Synapse opens at start beside its pool
  (synapse/storage/databases: the schema check), and ``RESERVED`` slots stay free (superuser,
  psql, monitoring). During a run, every worker that can hold connections is either running now
  or planned: new workers start while the old ones still run, stale ones may still run while new
  ones start, and a restarted process's connections close before it starts again. So a run
  needs room for main plus the workers planned **or** running now, all at once (old + new).
- **Generous.** The value set is what that many workers plus ``..._spare_workers`` more need,
  rounded up to a multiple of ``STEP``: scaling within the spare never restarts PostgreSQL.
- **Stable.** The value is raised only when the run's workers would not fit, or while no Synapse
  process runs (a restart then disconnects no one, e.g. the first deploy), and never lowered
  (lowering would restart PostgreSQL for nothing).
- **Before any new process.** The database component runs before the Synapse configuration
  component starts any new worker, so the raise is in effect before the processes that need it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from deploys.core.plan import WorkerPlan
from deploys.core.settings import Settings
from deploys.host.units import MAIN_UNIT, worker_name

# Connections beyond the pools: superuser slots, psql and monitoring.
RESERVED: Final = 20
# max_connections is a multiple of this: coarse on purpose (room to grow, fewer restarts).
STEP: Final = 100
# Synapse needs C collation and ctype (docs/postgres.md).
DATABASE_OPTIONS: Final = "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
SPARE_KEY: Final = "matrix_synapse_database_spare_workers"


@dataclass(frozen=True)
class ConnectionSizing:
    """``max_connections`` for one run: the running server's value, the value after the run, and
    the workers (planned or running now) and connections the run needs."""

    current: int | None  # None: no PostgreSQL to ask yet (installed by this run)
    value: int
    workers: int
    needed: int
    spare_workers: int
    synapse_running: bool

    @property
    def restart(self) -> bool:
        """Whether PostgreSQL must restart (a new ``max_connections`` takes effect only then)."""
        return self.value != self.current

    def reason(self) -> str:
        """One line saying what changes and why, e.g. ``max_connections 200 -> 400: 150 workers
        need 380 connections; PostgreSQL restarts, every Synapse process reconnects``."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        current = "PostgreSQL's default" if self.current is None else self.current
        if self.current is not None and self.current < self.needed:
            why = f"{workers} need {self.needed} connections"
        else:
            why = f"room for {workers} and {self.spare_workers} spare ({SPARE_KEY})"
        if self.synapse_running:
            effect = "PostgreSQL restarts, every Synapse process reconnects"
        else:
            effect = "PostgreSQL restarts (no Synapse process runs)"
        return f"max_connections {current} -> {self.value}: {why}; {effect}"


@dataclass(frozen=True)
class ConnectionRule:
    """How ``max_connections`` is sized for a plan (the module docstring states the rule)."""

    main_cp_max: int
    workers_cp_max: int
    spare_workers: int
    planned_workers: frozenset[str]

    def needed(self, workers: int) -> int:
        """Connections main and ``workers`` workers may hold at once, plus ``RESERVED``."""
        pools = self.main_cp_max + workers * self.workers_cp_max
        return pools + (workers + 1) + RESERVED

    def generous(self, workers: int) -> int:
        """Room for ``workers`` and the spare ones, rounded up to a multiple of ``STEP``."""
        return -(-self.needed(workers + self.spare_workers) // STEP) * STEP

    def size(self, current: int | None, running_units: Collection[str]) -> ConnectionSizing:
        """The sizing for a run, given the server's ``max_connections`` (None: not installed
        yet) and the Synapse units running now."""
        running = {worker_name(u) for u in running_units} - {None}
        workers = len(self.planned_workers | running)
        needed = self.needed(workers)
        synapse_running = bool(running) or MAIN_UNIT in running_units
        if current is None or current < needed or not synapse_running:
            value = max(self.generous(workers), current or 0)  # never lower
        else:
            value = current
        return ConnectionSizing(
            current, value, workers, needed, self.spare_workers, synapse_running
        )


def connection_rule(settings: Settings, plan: WorkerPlan) -> ConnectionRule:
    db = settings.database
    return ConnectionRule(
        main_cp_max=db.main_cp_max,
        workers_cp_max=db.workers_cp_max,
        spare_workers=db.spare_workers,
        planned_workers=frozenset(w.name for w in plan.workers),
    )


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def setup_sql(settings: Settings) -> str:
    """Idempotent SQL (for ``psql -v ON_ERROR_STOP=1``) creating role and database
    (``max_connections_sql`` sets the connection limit)."""
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
            "",
        ]
    )


def max_connections_sql(value: int) -> str:
    """SQL setting ``max_connections`` (in effect after PostgreSQL's next restart)."""
    return f"ALTER SYSTEM SET max_connections = {int(value)};\n"


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


# --- A cluster's PostgreSQL on the main host ----------------------------------------------------

HBA_BEGIN: Final = "# BEGIN pyinfra-synapse: the cluster's machines (managed; first match wins)"
HBA_END: Final = "# END pyinfra-synapse"


@dataclass(frozen=True)
class HbaRule:
    """One ``host`` line of ``pg_hba.conf`` as ``pg_hba_file_rules`` shows it."""

    database: str
    user: str
    address: str
    netmask: str
    method: str = "scram-sha-256"

    def line(self) -> str:
        prefix = 32 if ":" not in self.address else 128
        return f"host {self.database} {self.user} {self.address}/{prefix} {self.method}"


@dataclass(frozen=True)
class ClusterAccess:
    """Where the main host's PostgreSQL listens and whom it lets in over the network."""

    listen_addresses: str
    rules: tuple[HbaRule, ...]


def cluster_network(settings: Settings, addresses: Collection[str]) -> ClusterAccess:
    """The main host's PostgreSQL for a cluster: it listens on loopback and the main host's
    private address (``addresses``' first), and accepts the role on the database from every
    machine's private address, with scram-sha-256 only (the rules come first in
    ``pg_hba.conf``)."""
    db = settings.database
    rules = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        netmask = str(ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}").netmask)
        rules.append(HbaRule(db.name, db.user, str(ip), netmask))
    main = next(iter(addresses))
    return ClusterAccess(f"localhost,{main}", tuple(rules))


def hba_block(network: ClusterAccess) -> str:
    """Our block of ``pg_hba.conf`` lines, between markers."""
    return "\n".join([HBA_BEGIN, *(r.line() for r in network.rules), HBA_END]) + "\n"


# Run by python3 on the host: put our block (stdin) first in the hba file (argv[1]), replacing
# the previous one, atomically with the file's mode and owner.
HBA_SCRIPT: Final = f"""
import os, sys, tempfile
path, block = sys.argv[1], sys.stdin.read()
lines = open(path).read().splitlines(keepends=True)
if {HBA_BEGIN!r} + "\\n" in lines and {HBA_END!r} + "\\n" in lines:
    del lines[lines.index({HBA_BEGIN!r} + "\\n") : lines.index({HBA_END!r} + "\\n") + 1]
st = os.stat(path)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
with os.fdopen(fd, "w") as out:
    out.write(block + "".join(lines))
os.chown(tmp, st.st_uid, st.st_gid)
os.chmod(tmp, st.st_mode & 0o7777)
os.rename(tmp, path)
"""
