"""Redis section (``matrix_synapse_redis_*``): the replication bus every process subscribes to."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from deploys.core.settings.reader import HIGHEST_PORT, Reader, is_abs_path

MAX_DBID: Final = 15  # Redis's default `databases 16`
PASSWORD_RE: Final = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


@dataclass(frozen=True)
class RedisSettings:
    host: str
    port: int
    path: str | None  # a unix socket instead of host and port
    dbid: int
    # Every process authenticates with it; with several machines Redis requires it (never printed).
    password: str | None = field(repr=False)


def read(r: Reader) -> RedisSettings:
    return RedisSettings(
        host=r.text("matrix_synapse_redis_host"),
        port=r.integer("matrix_synapse_redis_port", 1, HIGHEST_PORT),
        path=r.check(
            "matrix_synapse_redis_path",
            lambda v: v is None or is_abs_path(v),
            "allowed: None or an absolute unix socket path",
        ),
        dbid=r.integer("matrix_synapse_redis_dbid", 0, MAX_DBID),
        password=r.check(
            "matrix_synapse_redis_password",
            lambda v: v is None or (isinstance(v, str) and PASSWORD_RE.match(v) is not None),
            "allowed: None or 16 to 512 letters, digits and . _ ~ + / = - (what Redis's config "
            "file takes unquoted), e.g. from python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'",
        ),
    )
