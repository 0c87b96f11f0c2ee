"""Database section (``matrix_synapse_database_*``): the PostgreSQL server, role and pool sizes.

The rules between its keys: every pool's maximum is at least the minimum; installing PostgreSQL
here needs a local host and a password for the role it creates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from deploys.core.settings.reader import HIGHEST_PORT, Reader

LOCAL_HOSTS: Final = ("127.0.0.1", "::1", "localhost")
MAX_POOL: Final = 100
MAX_SPARE_WORKERS: Final = 1000


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str | None = field(repr=False)
    install_postgresql: bool
    cp_min: int
    main_cp_max: int
    workers_cp_max: int
    spare_workers: int


def read(r: Reader) -> DatabaseSettings:
    db = DatabaseSettings(
        host=r.text("matrix_synapse_database_host"),
        port=r.integer("matrix_synapse_database_port", 1, HIGHEST_PORT),
        name=r.text("matrix_synapse_database_name"),
        user=r.text("matrix_synapse_database_user"),
        password=r.check(
            "matrix_synapse_database_password",
            lambda v: v is None or (isinstance(v, str) and v and "\n" not in v),
            "allowed: None or a single-line string",
        ),
        install_postgresql=r.boolean("matrix_synapse_database_install_postgresql"),
        cp_min=r.integer("matrix_synapse_database_cp_min", 1, MAX_POOL),
        main_cp_max=r.integer("matrix_synapse_database_main_cp_max", 1, MAX_POOL),
        workers_cp_max=r.integer("matrix_synapse_database_workers_cp_max", 1, MAX_POOL),
        spare_workers=r.integer("matrix_synapse_database_spare_workers", 0, MAX_SPARE_WORKERS),
    )
    _check(r, db)
    return db


def _check(r: Reader, db: DatabaseSettings) -> None:
    """The rules between database keys."""
    for key, value in (
        ("matrix_synapse_database_main_cp_max", db.main_cp_max),
        ("matrix_synapse_database_workers_cp_max", db.workers_cp_max),
    ):
        if value < db.cp_min:
            r.report(key, value, f"allowed: at least matrix_synapse_database_cp_min ({db.cp_min})")
    if db.install_postgresql and db.host not in LOCAL_HOSTS:
        r.report(
            "matrix_synapse_database_host",
            db.host,
            "matrix_synapse_database_install_postgresql installs PostgreSQL on this host; "
            "allowed: " + ", ".join(LOCAL_HOSTS[:-1]) + f" or {LOCAL_HOSTS[-1]}",
        )
    if db.install_postgresql and not db.password:
        r.report(
            "matrix_synapse_database_password",
            db.password,
            "matrix_synapse_database_install_postgresql creates the role with this password; "
            "allowed: a non-empty string",
        )
